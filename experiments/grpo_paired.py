"""Does GRPO raise held-out accuracy on the default pipeline's own SFT checkpoint? A paired experiment over seeds.

``python -m experiments.grpo_paired OUT SFT_DIR TASKS_DIR [--steps N] [--seeds N] [--first-seed N] [--prompts-per-step N] [--lr X]
[--fresh N] [--updates-per-batch N] [--beta X] [--temperature T] [--eval-tasks DIR] [--n-eval N] [--clip-eps-high X]
[--dynamic-sampling] [--max-refill N] [--eval-at STEP,...] [--tag NAME]``: the same stored
SFT checkpoint (e.g. the default pipeline's ``cold_sft``) is the start and the KL reference of every run; each
seed runs the grpo stage's code (``ops.rl.grpo.train_grpo``) with the default ``rl1`` settings (rewards
accuracy + format + 0.1 language, group 8, beta 0.04) unless overridden (DAPO's levers: ``--clip-eps-high``, an upper
ratio clip above 0.2, acting from the second pass of ``--updates-per-batch``; ``--dynamic-sampling``, groups
without signal replaced by groups of further prompts in at most ``--max-refill`` extra rounds), and is scored on the tasks' held-out
split (``fresh`` > 0: RL on that many newly generated problems the SFT never saw, instead of the tasks' training
split; ``--eval-tasks``: score on that tasks artifact's held-out split instead, e.g. RL on the default's
``rl_prompts`` and score on its benchmark ``tasks``): greedy accuracy over ``n_eval`` problems and sampled accuracy (T=1, 8 samples each, R1's pass@1) over the same problems.
Reported: the start's scores, per-seed scores, training reward and KL, and the paired gains (after - start)
with their standard error over seeds; ``significant`` means mean gain > 2 SE with at least 3 seeds; and the
item-level paired difference (each item's score averaged over seeds minus the start's), whose interval says
whether the gain would hold on other problems of the same distribution. Results go
to ``OUT/grpo_paired.json`` (``OUT/grpo_paired_TAG.json`` with ``--tag``) after every seed, so a run cut short keeps what it measured.
``--eval-at 40`` also scores each run at step 40 (``at_40``: the same gains at that step); since the LR is
constant after warm-up and each step's prompts and sampling seed depend on the step alone, that is the 40-step
run's own end point. ``python -m experiments.grpo_paired --merge OUT PART...`` joins seeds run as separate
processes (``--first-seed S`` with another ``--tag``) into one result with the statistics recomputed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def run(
    out_dir: Path | str,
    sft_dir: Path | str,
    tasks_dir: Path | str,
    steps: int = 30,
    seeds: int = 3,
    prompts_per_step: int = 32,
    lr: float = 3e-5,
    group_size: int = 8,
    beta: float = 0.04,
    n_eval: int = 300,
    samples: int = 8,
    fresh: int = 0,
    updates_per_batch: int = 1,
    rewards: tuple = ("accuracy", "format", {"language": {"weight": 0.1}}),
    eval_tasks_dir: Path | str | None = None,
    first_seed: int = 0,
    temperature: float = 1.0,
    clip_eps_high: float | None = None,
    dynamic_sampling: bool = False,
    max_refill: int = 2,
    eval_at: str = "",
    tag: str = "",
    sampling_seeds: int = 1,
) -> dict:
    import copy

    import torch

    from experiments.grpo_regime import heldout_scores
    from ops.eval.metrics import item_level_gains, paired_gains
    from ops.posttrain.common import load_policy
    from ops.rewards import parse_specs
    from ops.rl.grpo import GRPOParams, train_grpo
    from ops.tasks import generate_tasks, read_tasks

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start_model, tok = load_policy(sft_dir)
    train = read_tasks(Path(tasks_dir) / "train.parquet")
    all_eval = read_tasks(Path(eval_tasks_dir or tasks_dir) / "eval.parquet")
    ev = all_eval[:n_eval]
    sft_seen = len(train)
    if fresh:
        # RL prompts the SFT stage never saw (as R1's RL prompts are not its cold-start data): new problems of
        # the same difficulties, excluding every training and held-out question of the tasks artifact
        train = generate_tasks(
            fresh,
            seed=7919,
            difficulties=sorted({t.difficulty for t in train}),
            id_prefix="rl",
            exclude={t.question for t in train} | {t.question for t in all_eval},
        )
    specs = parse_specs(list(rewards))
    at_steps = sorted({int(x) for x in str(eval_at).split(",") if x.strip()})
    if any(not 0 < k < steps for k in at_steps):
        raise ValueError(f"--eval-at: each step must lie strictly between 0 and --steps {steps}: {at_steps}")

    def score(m) -> dict:
        return _with_sampled_avg(
            heldout_scores(m, tok, ev, ev, samples, seed=1), m, tok, ev, samples, sampling_seeds
        )

    start = score(start_model)
    res: dict = {
        "sft": str(sft_dir),
        "tasks": str(tasks_dir),
        "eval_tasks": str(eval_tasks_dir or tasks_dir),
        "config": {
            "steps": steps,
            "prompts_per_step": prompts_per_step,
            "group_size": group_size,
            "lr": lr,
            "beta": beta,
            "updates_per_batch": updates_per_batch,
            "temperature": temperature,
            "clip_eps_high": clip_eps_high,
            "dynamic_sampling": dynamic_sampling,
            "max_refill": max_refill if dynamic_sampling else None,
            "eval_at": at_steps,
            "rewards": list(rewards),
            "n_eval": len(ev),
            "samples": samples,
            "sampling_seeds": sampling_seeds,
            "rl_prompts": f"{fresh} fresh problems"
            if fresh
            else f"the {sft_seen} training problems of the tasks",
        },
        "threads": torch.get_num_threads(),
        "start": start,
        "runs": [],
    }
    for seed in range(first_seed, first_seed + seeds):
        pol = copy.deepcopy(start_model).train().requires_grad_(True)
        at: dict = {}

        def eval_fn(model, done: int, at: dict = at) -> dict:
            # scoring samples from its own seeded generator and restores train mode: the run is unchanged
            if done in at_steps:
                at[str(done)] = score(model)
            return {}

        t0 = time.time()
        torch.manual_seed(seed)
        st = train_grpo(
            pol,
            start_model,
            tok,
            train,
            specs,
            GRPOParams(
                steps=steps,
                prompts_per_step=prompts_per_step,
                group_size=group_size,
                lr=lr,
                warmup_steps=5,
                beta=beta,
                seed=seed,
                gen_batch_size=1024,
                updates_per_batch=updates_per_batch,
                temperature=temperature,
                clip_eps_high=clip_eps_high,
                dynamic_sampling=dynamic_sampling,
                max_refill=max_refill,
            ),
            eval_fn=eval_fn if at_steps else None,
            eval_every=1 if at_steps else 0,
            log=lambda s: None,
            keep_rollouts=False,
        )
        h = [r for r in st.history if r["step"] > 0]
        q = max(len(h) // 4, 1)
        row = {
            "seed": seed,
            "after": score(pol.eval()),
            "wall_s": round(time.time() - t0, 1),
            # a control run (random or format-only rewards) has no accuracy component
            "train_acc_first_q": sum(x["reward_accuracy"] for x in h[:q]) / q
            if "reward_accuracy" in h[0]
            else None,
            "train_acc_last_q": sum(x["reward_accuracy"] for x in h[-q:]) / q
            if "reward_accuracy" in h[0]
            else None,
            "reward_first_q": sum(x["reward"] for x in h[:q]) / q,
            "reward_last_q": sum(x["reward"] for x in h[-q:]) / q,
            "kl_max": max(x.get("kl", 0.0) for x in h),
            # share of tokens whose ratio left [1 - 0.2, 1 + 0.2] (non-zero only from a second pass over a batch)
            "clip_frac_max": max(x.get("clip_frac", 0.0) for x in h),
            "live_groups_mean": sum(x["live_groups"] for x in h) / len(h),
            "sampled_groups_mean": sum(x.get("sampled_groups", prompts_per_step) for x in h) / len(h),
            "train_s": round(sum(x["step_s"] for x in h), 1),
            **({"at": at} if at else {}),
        }
        res["runs"].append(row)
        keys = score_keys(sampling_seeds)
        res.update(paired_gains(res["runs"], start, keys))
        res.update(item_level_gains(res["runs"], start, keys))
        res.update(gains_at(res))
        (out / (f"grpo_paired_{tag}.json" if tag else "grpo_paired.json")).write_text(
            json.dumps(res, indent=1)
        )
        print(
            json.dumps(
                {k: v for k, v in row.items() if k not in ("after", "at")}
                | {"after": _scalars(row["after"])}
                | {f"at_{k}": _scalars(v) for k, v in at.items()}
            ),
            flush=True,
        )
    return res


def score_keys(sampling_seeds: int) -> tuple[str, ...]:
    """The held-out scores a study compares: greedy and sampled, and ``sampled_avg`` over several draws."""
    return ("greedy", "sampled") + (("sampled_avg",) if sampling_seeds > 1 else ())


def _with_sampled_avg(scores: dict, model, tok, ev, samples: int, sampling_seeds: int) -> dict:
    """``sampled_avg``: sampled accuracy averaged over the draws of sampling seeds 1..N. One draw of the start
    is a single realisation; any update re-draws part of its samples, so a gain measured against one draw
    regresses toward the start's expectation (a null update shows it too). Averaging both sides removes that."""
    if sampling_seeds <= 1:
        return scores
    from experiments.grpo_regime import sampled_scores

    draws = [scores["sampled_items"]]
    for seed in range(2, sampling_seeds + 1):
        draws.append(sampled_scores(model, tok, ev, samples, seed)["per_item"])
    items = [sum(col) / len(col) for col in zip(*draws)]
    return scores | {"sampled_avg_items": items, "sampled_avg": sum(items) / len(items)}


def gains_at(res: dict) -> dict:
    """``{"at_K": paired gains over seeds and items at step K}`` for every step K that all runs scored."""
    from ops.eval.metrics import item_level_gains, paired_gains

    runs = res["runs"]
    steps = set.intersection(*(set(r.get("at", {})) for r in runs)) if runs else set()
    out = {}
    for k in sorted(steps, key=int):
        at_runs = [{"seed": r["seed"], "after": r["at"][k]} for r in runs]
        out[f"at_{k}"] = paired_gains(at_runs, res["start"]) | item_level_gains(at_runs, res["start"])
    return out


def merge(out_path: Path | str, parts: list[Path | str]) -> dict:
    """One result from seeds run as separate processes (same start and settings): the runs joined in seed
    order and every statistic recomputed, those at intermediate steps (``--eval-at``) included."""
    from experiments.dpo_paired import merge as merge_runs

    res = merge_runs(out_path, parts)
    res = {k: v for k, v in res.items() if not k.startswith("at_")} | gains_at(res)
    Path(out_path).write_text(json.dumps(res, indent=1))
    return res


def _scalars(d: dict) -> dict:
    return {k: v for k, v in d.items() if not isinstance(v, list)}


if __name__ == "__main__":
    import argparse
    import inspect

    if sys.argv[1:2] == ["--merge"]:
        if len(sys.argv) < 5:
            raise SystemExit("usage: python -m experiments.grpo_paired --merge OUT PART PART...")
        r = merge(sys.argv[2], sys.argv[3:])
        print(json.dumps({k: v for k, v in r.items() if k.startswith(("gain_", "items_", "at_"))}, indent=1))
        raise SystemExit(0)

    # every option and its default come from run()'s signature, so the two cannot drift apart
    defaults = {k: v.default for k, v in inspect.signature(run).parameters.items()}
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("sft_dir")
    ap.add_argument("tasks_dir")
    for name, cast in (
        ("steps", int),
        ("seeds", int),
        ("first_seed", int),
        ("prompts_per_step", int),
        ("lr", float),
        ("fresh", int),
        ("updates_per_batch", int),
        ("beta", float),
        ("n_eval", int),
        ("temperature", float),
        ("clip_eps_high", float),
        ("max_refill", int),
        ("eval_at", str),
        ("tag", str),
        ("sampling_seeds", int),
    ):
        ap.add_argument("--" + name.replace("_", "-"), type=cast, default=defaults[name])
    ap.add_argument("--dynamic-sampling", action="store_true")
    ap.add_argument("--eval-tasks", dest="eval_tasks_dir", default=None)
    r = run(**vars(ap.parse_args()))
    print(json.dumps({k: _scalars(v) if k == "start" else v for k, v in r.items() if k != "runs"}, indent=1))
