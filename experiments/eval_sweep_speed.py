"""What decoding the evaluation's greedy runs together saves: CPU seconds of the greedy, budget and Wait runs of
each stored ``evaluate`` partition, decoded one run at a time against ``ops.eval.budget.generate_sweep``, and
whether both give the stored records.

``python -m experiments.eval_sweep_speed OUT_JSON HOME [--rounds 3] [--threads 1]``

HOME is a home with a materialized ``evaluate`` stage (the default demo's). For every partition the model, the
first ``max_items`` held-out tasks and the settings come from the partition's manifest. Each round decodes,
per model and in alternating order (separate, sweep; sweep, separate; ...), so a load change on a shared
machine falls on both:

* ``separate``: one ``generate_with_budget`` call per greedy run (greedy, each budget, each Wait count), as
  ``generate_records`` made them before the sweep;
* ``sweep``: one ``generate_sweep`` call over the same runs (shared prefill and decode steps until the runs'
  tokens differ).

CPU seconds come from ``time.process_time``. Every round checks that both variants give the same completions
and token counts, and that they equal the partition's stored ``records.parquet`` (greedy, budget and wait
rows), item by item. Reported: per-partition seconds, per-round ratio sweep / separate and its median, and the
number of differing records (expected 0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _partitions(home: Path) -> list[dict]:
    """Each stored evaluate partition: its model path, tasks path and config, from the manifest."""
    out = []
    for d in sorted((home / "artifacts" / "evaluate").iterdir()):
        m = d / "manifest.json"
        if not m.is_file():
            continue
        man = json.loads(m.read_text())
        (model,) = man["inputs"]["models"]
        (tasks,) = man["inputs"]["tasks"]
        out.append(
            {
                "dir": d,
                "stage": model["stage"],
                "model": home / "artifacts" / model["kind"] / model["version"],
                "tasks": home / "artifacts" / tasks["kind"] / tasks["version"],
                "tasks_stage": tasks["stage"],
                "config": man["config"],
            }
        )
    return out


def _prompts(tok, tasks_dir: Path, cfg: dict) -> list[list[int]]:
    import pyarrow.parquet as pq

    from ops.answers import render_prompt
    from ops.generate import chat_prompts
    from ops.tasks import read_task_set_format

    rows = pq.read_table(tasks_dir / "eval.parquet", columns=["question"]).to_pylist()[: cfg["max_items"]]
    fmt = read_task_set_format(tasks_dir).override(cfg["answer_format"], cfg["prompt_template"])
    assert fmt.answer_format == "think_answer", "the sweep decodes think_answer items"
    return chat_prompts(tok, [render_prompt(fmt.prompt_template, r["question"]) for r in rows])


def _settings(cfg: dict) -> list[tuple[str, int | None, int]]:
    return (
        [("greedy", None, 0)]
        + [("budget", b, 0) for b in cfg["budgets"]]
        + [("wait", None, w) for w in cfg["wait_extensions"]]
    )


def _stored(part_dir: Path) -> dict[tuple, tuple]:
    import pyarrow.parquet as pq

    t = pq.read_table(part_dir / "records.parquet").to_pylist()
    return {
        (r["mode"], r["budget"], r["wait_extensions"], r["item_id"]): (
            r["completion"],
            r["thinking_tokens"],
            r["answer_tokens"],
            r["waits_used"],
            r["forced_end"],
            r["finished"],
        )
        for r in t
        if r["mode"] in ("greedy", "budget", "wait")
    }


def _key(g) -> tuple:
    return (g.completion, g.thinking_tokens, g.answer_tokens, g.waits_used, g.forced_end, g.finished)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("home")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)

    import pyarrow.parquet as pq
    import torch

    from ops.eval.budget import generate_sweep, generate_with_budget
    from ops.model import load_model
    from ops.tokenizer import load_tokenizer

    torch.set_num_threads(a.threads)
    parts = _partitions(Path(a.home))
    loaded = []
    for p in parts:
        tok = load_tokenizer(p["model"])
        ids = pq.read_table(p["tasks"] / "eval.parquet", columns=["id"]).column("id").to_pylist()
        loaded.append(
            (p, load_model(p["model"]), tok, _prompts(tok, p["tasks"], p["config"]), ids, _stored(p["dir"]))
        )

    def run(variant: str, p, model, tok, prompts) -> tuple[float, list[list]]:
        cfg = p["config"]
        kw = dict(
            max_think_tokens=cfg["max_think_tokens"],
            max_answer_tokens=cfg["max_answer_tokens"],
            wait_text=cfg["wait_text"],
            batch_size=cfg["batch_size"],
        )
        settings = [(b, w) for _, b, w in _settings(cfg)]
        t0 = time.process_time()
        if variant == "sweep":
            gens = generate_sweep(model, tok, prompts, settings, **kw)
        else:
            gens = [
                generate_with_budget(model, tok, prompts, budget=b, wait_extensions=w, **kw)
                for b, w in settings
            ]
        return time.process_time() - t0, gens

    rounds = []
    for r in range(a.rounds):
        order = ["separate", "sweep"] if r % 2 == 0 else ["sweep", "separate"]
        rec: dict = {"round": r, "order": order, "partitions": {}}
        for p, model, tok, prompts, ids, stored in loaded:
            res = {v: run(v, p, model, tok, prompts) for v in order}
            differ_variants = sum(
                _key(x) != _key(y)
                for gs, gw in zip(res["separate"][1], res["sweep"][1])
                for x, y in zip(gs, gw, strict=True)
            )
            differ_stored = 0
            for (mode, b, w), gens in zip(_settings(p["config"]), res["sweep"][1]):
                for item_id, g in zip(ids, gens):
                    differ_stored += stored.get((mode, b, w, str(item_id))) != _key(g)
            rec["partitions"][p["stage"]] = {
                "separate_s": round(res["separate"][0], 3),
                "sweep_s": round(res["sweep"][0], 3),
                "records_differing_between_variants": differ_variants,
                "records_differing_from_stored": differ_stored,
            }
            print(f"round {r} {p['stage']}: {rec['partitions'][p['stage']]}", flush=True)
        sep = sum(x["separate_s"] for x in rec["partitions"].values())
        swp = sum(x["sweep_s"] for x in rec["partitions"].values())
        rec.update(separate_s=round(sep, 3), sweep_s=round(swp, 3), ratio=round(swp / sep, 4))
        rounds.append(rec)
        print(f"round {r}: separate {sep:.2f}s sweep {swp:.2f}s ratio {swp / sep:.3f}", flush=True)

    ratios = [x["ratio"] for x in rounds]
    result = {
        "home": a.home,
        "threads": a.threads,
        "rounds": rounds,
        "median_ratio": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "median_saved_s_per_demo": statistics.median(x["separate_s"] - x["sweep_s"] for x in rounds),
        "records_differing": sum(
            v["records_differing_between_variants"] + v["records_differing_from_stored"]
            for x in rounds
            for v in x["partitions"].values()
        ),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))
    return result


if __name__ == "__main__":
    main()
