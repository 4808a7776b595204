"""Does GRPO's held-out gain beat a random-reward and a format-only control? A paired experiment over seeds.

``python -m experiments.grpo_control OUT SFT_DIR TASKS_DIR --condition real|random|format [grpo_paired options]``
runs :mod:`experiments.grpo_paired` (GRPO from one stored SFT checkpoint over seeds, scored on held-out
problems) with one reward set: ``real`` = the default ``rl1`` rewards (accuracy + format + 0.1 language),
``random`` = Bernoulli(0.5) per sample, independent of the answer (the Spurious Rewards control), ``format`` =
the format reward alone. Every condition uses the same start, seeds (so the same prompts per step and the same
sampling seeds), steps and held-out problems; the results go to ``OUT/<condition>/grpo_paired.json``.
``python -m experiments.grpo_control OUT --combine`` pairs the conditions (``ops.eval.metrics.control_gap``):
each gain over the start, and treatment - control over seeds and over items, with ``exceeds`` = the real
reward's gain is above the control's beyond noise; written to ``OUT/grpo_control.json``.
Conditions run as separate processes so that they can share a loaded machine; a seed of a condition can run as
its own process (``--first-seed S --seeds 1`` into ``OUT/<part>``) and is merged by ``--combine``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONDITIONS = {
    "real": ("accuracy", "format", {"language": {"weight": 0.1}}),
    "random": ({"random": {"p": 0.5}},),
    "format": ("format",),
}


def _merged(out: Path, cond: str) -> dict | None:
    """``OUT/<cond>/grpo_paired.json`` with the seeds of any part run into ``OUT/<part>/<cond>/`` (a seed run as
    its own process with ``--first-seed``) added; every part must have measured the same start."""
    from ops.eval.metrics import item_level_gains, paired_gains

    files = sorted(
        p for p in [out / cond / "grpo_paired.json", *out.glob(f"*/{cond}/grpo_paired.json")] if p.exists()
    )
    if not files:
        return None
    res = json.loads(files[0].read_text())
    for f in files[1:]:
        part = json.loads(f.read_text())
        if part["start"] != res["start"] or part["config"] != res["config"]:
            raise SystemExit(f"{f} did not run the same start and settings as {files[0]}: cannot merge")
        res["runs"] += part["runs"]
    res["runs"] = sorted({r["seed"]: r for r in res["runs"]}.values(), key=lambda r: r["seed"])
    res.update(paired_gains(res["runs"], res["start"], _keys(res["start"])))
    res.update(item_level_gains(res["runs"], res["start"], _keys(res["start"])))
    return res


def _keys(start: dict) -> tuple[str, ...]:
    """The scores compared: those of :func:`experiments.grpo_paired.score_keys` for how the start was scored."""
    from experiments.grpo_paired import score_keys

    return score_keys(2 if "sampled_avg" in start else 1)


def combine(out_dir: Path | str) -> dict:
    from ops.eval.metrics import control_gap

    out = Path(out_dir)
    runs = {c: r for c in CONDITIONS if (r := _merged(out, c)) is not None}
    if "real" not in runs:
        raise SystemExit(f"{out}/real/grpo_paired.json is missing: run --condition real first")
    real = runs["real"]
    res: dict = {
        "config": {k: v for k, v in real["config"].items() if k != "rewards"},
        "rewards": {c: r["config"]["rewards"] for c, r in runs.items()},
        "start": {k: v for k, v in real["start"].items() if not isinstance(v, list)},
        "seeds": {c: [x["seed"] for x in r["runs"]] for c, r in runs.items()},
        "per_seed": {
            c: [
                {
                    "seed": x["seed"],
                    **{k: v for k, v in x["after"].items() if not isinstance(v, list)},
                    **{k: x[k] for k in ("reward_first_q", "reward_last_q", "kl_max", "wall_s")},
                }
                for x in r["runs"]
            ]
            for c, r in runs.items()
        },
        "gains": {
            c: {k: v for k, v in r.items() if k.startswith(("gain_", "items_"))} for c, r in runs.items()
        },
        "vs": {},
        # per-item scores (0/1 greedy, share of the k samples right) so the pairing can be recomputed
        "items": {
            "start": {k: real["start"][k] for k in ("greedy_items", "sampled_items")},
            **{
                c: [
                    {
                        "seed": x["seed"],
                        "greedy_items": x["after"]["greedy_items"],
                        "sampled_items": x["after"]["sampled_items"],
                    }
                    for x in r["runs"]
                ]
                for c, r in runs.items()
            },
        },
    }
    for c, r in runs.items():
        if c != "real":
            if r["start"].get("greedy_items") != real["start"].get("greedy_items"):
                raise SystemExit(
                    f"{c} and real did not start from the same scores: not the same SFT or problems"
                )
            res["vs"][c] = control_gap(real["runs"], r["runs"], real["start"], _keys(real["start"]))
    (out / "grpo_control.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    import argparse
    import inspect

    from experiments import grpo_paired

    if "--combine" in sys.argv:
        r = combine(sys.argv[1])
        print(
            json.dumps(
                {
                    c: {
                        k: {
                            "diff_items": (v["items"] or {}).get("diff"),
                            "low": (v["items"] or {}).get("low"),
                            "high": (v["items"] or {}).get("high"),
                            "exceeds": v["exceeds"],
                        }
                        for k, v in d.items()
                    }
                    for c, d in r["vs"].items()
                },
                indent=1,
            )
        )
        sys.exit(0)
    defaults = {k: v.default for k, v in inspect.signature(grpo_paired.run).parameters.items()}
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("sft_dir")
    ap.add_argument("tasks_dir")
    ap.add_argument("--condition", choices=sorted(CONDITIONS), required=True)
    for name, cast in (
        ("steps", int),
        ("seeds", int),
        ("first_seed", int),
        ("prompts_per_step", int),
        ("lr", float),
        ("beta", float),
        ("n_eval", int),
        ("samples", int),
        ("temperature", float),
        ("sampling_seeds", int),
    ):
        ap.add_argument("--" + name.replace("_", "-"), type=cast, default=defaults[name])
    ap.add_argument("--eval-tasks", dest="eval_tasks_dir", default=None)
    a = vars(ap.parse_args())
    cond = a.pop("condition")
    a["out_dir"] = str(Path(a["out_dir"]) / cond)
    grpo_paired.run(**a, rewards=CONDITIONS[cond])
