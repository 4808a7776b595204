"""Does a DPO variant raise held-out accuracy over the default pipeline's sft2? A paired experiment over seeds.

``python -m experiments.dpo_paired OUT SFT_DIR PROMPTS_DIR EVAL_TASKS_DIR [--loss dpo|ipo|rpo] [--beta X]
[--alpha X] [--lr X] [--steps N] [--iterations N] [--samples N] [--prompts-per-iteration N] [--temperature X]
[--max-new-tokens N] [--max-pairs-per-prompt N] [--warmup-steps N] [--reference-update previous|initial]
[--seeds N] [--first-seed N] [--n-eval N] [--eval-samples N] [--sampling-seeds N] [--swap-control] [--pairs-from DIR ...]``: the
same stored checkpoint (e.g. the default pipeline's ``sft2``) is the start and the first reference of every
run. By default each seed runs on-policy iterative DPO (``ops.posttrain.onpolicy.train_iterative_dpo``, the
``dpo`` stage's code with ``iterations``): each iteration samples ``samples`` completions for
``prompts_per_iteration`` problems of PROMPTS_DIR's training split from the current policy, pairs correct
against incorrect ones and trains ``steps`` updates; ``--pairs-from`` instead trains once on the offline pairs of
those rollout artifacts (the default ``dpo`` stage's ``pairs: [rl1, rs]``). Scored on the first ``n_eval``
held-out problems of EVAL_TASKS_DIR (a task set the training prompts exclude): greedy accuracy and sampled
accuracy (T=1, ``eval_samples`` per problem, R1's pass@1), by the rules, and how far the policy moved: the
per-token KL to the start (k3, as GRPO reports it) on one T=1 completion per held-out problem.
``--swap-control`` is the random-preference control (as GRPO's random reward): each on-policy pair's chosen
and rejected sides are swapped with probability 1/2 (seeded), so training moves the policy by the same kind of
update with no preference signal in expectation.
The start's scores are a pure function of (start, problems, ``eval_samples``) and are kept in
``OUT/start_<key>.json``, so processes of one study score the start once.
Reported: the start's scores, per-seed scores and iteration statistics, and the paired gains (after - start)
with their standard error over seeds (``significant``: mean > 2 SE with at least 3 seeds), plus the item-level
paired difference. Results go to ``OUT/<tag>.json`` after every seed, so a run cut short keeps what it
measured; :func:`merge` joins seeds run as separate processes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


KEYS = ("greedy", "sampled")


def heldout(model, tok, tasks, eval_samples: int, sampling_seeds: int = 1) -> dict:
    """Greedy and sampled accuracy (the sampling seed fixed, so start and after see the same draw); with
    ``sampling_seeds`` > 1 also ``sampled_avg``: sampled accuracy averaged over the draws of seeds 1..N.

    Why the average: a tiny update re-draws many samples (one uniform per token picks the token, so a
    shifted probability changes every later token of that row), so ``after`` is partly a fresh draw while the
    start is one fixed draw; if that draw sits below the start's expectation, every run shows a gain that
    neither the seed SE nor the item interval sees. Averaging both sides over N draws shrinks that bias."""
    from experiments.grpo_paired import _with_sampled_avg
    from experiments.grpo_regime import heldout_scores

    scores = heldout_scores(model, tok, tasks, tasks, eval_samples, seed=1)
    return _with_sampled_avg(scores, model, tok, tasks, eval_samples, sampling_seeds)


def kl_to_start(policy, start, tok, tasks, seed: int = 2) -> float:
    """Mean per-token ``KL(policy || start)`` (k3 estimator, as GRPO's ``kl`` metric) over one T=1 completion
    of ``policy`` per problem: how far training moved the distribution sampled accuracy is judged on."""
    import torch

    from ops.generate import generate
    from ops.losses import kl_k3
    from ops.rl.common import completion_logprobs, completion_tensors

    samples = [
        s for s in generate(policy, tok, [t.question for t in tasks], max_new_tokens=64, seed=seed) if s.ids
    ]
    num = den = 0.0
    with torch.no_grad():
        for i in range(0, len(samples), 256):
            t = completion_tensors(samples[i : i + 256], tok.pad_token_id, "cpu")
            lp, ref_lp = completion_logprobs(policy, t), completion_logprobs(start, t)
            num += float((kl_k3(lp, ref_lp) * t["comp_mask"]).sum())
            den += float(t["comp_mask"].sum())
    return num / max(den, 1.0)


def swapped_pairs(rows: list[dict], max_per_prompt: int = 4, seed: int = 0) -> list:
    """``pairs_from_rollouts``'s pairs with chosen and rejected swapped in a seeded half (the control)."""
    import dataclasses
    import random

    from ops.posttrain.rm import pairs_from_rollouts

    rng = random.Random(f"swap-{seed}")
    return [
        dataclasses.replace(q, chosen=q.rejected, rejected=q.chosen) if rng.random() < 0.5 else q
        for q in pairs_from_rollouts(rows, max_per_prompt, seed)
    ]


def start_scores(
    out: Path, sft_dir, eval_tasks_dir, ev, model, tok, eval_samples: int, sampling_seeds: int
) -> dict:
    """The start's held-out scores, read from ``out`` when a process of this study already computed them."""
    import hashlib

    key = hashlib.sha256(
        json.dumps(
            [str(Path(sft_dir).resolve()), str(Path(eval_tasks_dir).resolve()), len(ev), eval_samples]
            + ([sampling_seeds] if sampling_seeds > 1 else [])
        ).encode()
    ).hexdigest()[:16]
    path = out / f"start_{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    start = heldout(model, tok, ev, eval_samples, sampling_seeds)
    tmp = path.with_suffix(f".{time.time_ns()}.tmp")
    tmp.write_text(json.dumps(start))
    tmp.replace(path)  # atomic: a concurrent process reads either nothing or the whole file
    return start


def run(
    out_dir: Path | str,
    sft_dir: Path | str,
    prompts_dir: Path | str,
    eval_tasks_dir: Path | str,
    loss: str = "rpo",
    beta: float = 0.1,
    alpha: float = 1.0,
    lr: float = 1e-5,
    steps: int = 30,
    batch_size: int = 16,
    iterations: int = 2,
    samples: int = 8,
    prompts_per_iteration: int = 128,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    max_pairs_per_prompt: int = 4,
    warmup_steps: int = 3,
    reference_update: str = "previous",
    seeds: int = 3,
    first_seed: int = 0,
    n_eval: int = 300,
    eval_samples: int = 4,
    sampling_seeds: int = 1,
    pairs_from: tuple = (),
    swap_control: bool = False,
    tag: str = "dpo_paired",
) -> dict:
    import copy
    from contextlib import nullcontext
    from unittest import mock

    import torch

    from experiments.grpo_paired import score_keys
    from ops.eval.metrics import item_level_gains, paired_gains
    from ops.posttrain import onpolicy
    from ops.posttrain.common import load_policy
    from ops.posttrain.dpo import DPOParams, train_dpo
    from ops.posttrain.onpolicy import OnPolicyParams, train_iterative_dpo
    from ops.posttrain.pairs import collect_pairs
    from ops.tasks import read_tasks

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start_model, tok = load_policy(sft_dir)
    prompts = read_tasks(Path(prompts_dir) / "train.parquet")
    ev = read_tasks(Path(eval_tasks_dir) / "eval.parquet")[:n_eval]
    overlap = {t.question for t in prompts} & {t.question for t in ev}
    if overlap:
        raise ValueError(f"{len(overlap)} held-out problems are among the training prompts")
    start = start_scores(out, sft_dir, eval_tasks_dir, ev, start_model, tok, eval_samples, sampling_seeds)
    keys = score_keys(sampling_seeds)
    o = OnPolicyParams(
        iterations=iterations,
        samples=samples,
        prompts_per_iteration=prompts_per_iteration,
        max_new_tokens=max_new_tokens,
        max_pairs_per_prompt=max_pairs_per_prompt,
        temperature=temperature,
        reference_update=reference_update,
    )
    res: dict = {
        "sft": str(sft_dir),
        "prompts": str(prompts_dir),
        "eval_tasks": str(eval_tasks_dir),
        "config": {
            "loss": loss,
            "beta": beta,
            "alpha": alpha,
            "lr": lr,
            "steps": steps,
            "batch_size": batch_size,
            "pairs": f"offline from {list(pairs_from)}" if pairs_from else "on-policy",
            "iterations": 1 if pairs_from else iterations,
            "samples": samples,
            "prompts_per_iteration": prompts_per_iteration,
            "temperature": temperature,
            "max_new_tokens": max_new_tokens,
            "max_pairs_per_prompt": max_pairs_per_prompt,
            "warmup_steps": warmup_steps,
            "reference_update": reference_update,
            "n_eval": len(ev),
            "eval_samples": eval_samples,
            **({"sampling_seeds": sampling_seeds} if sampling_seeds > 1 else {}),
            **({"swap_control": True} if swap_control else {}),
        },
        "threads": torch.get_num_threads(),
        "start": start,
        "runs": [],
    }
    # the control swaps sides inside the on-policy loop; the module is restored whatever happens
    patch = (
        mock.patch.object(onpolicy, "pairs_from_rollouts", swapped_pairs) if swap_control else nullcontext()
    )
    with patch:
        for seed in range(first_seed, first_seed + seeds):
            pol = copy.deepcopy(start_model).train().requires_grad_(True)
            ref = copy.deepcopy(start_model).eval()
            p = DPOParams(
                steps=steps,
                lr=lr,
                beta=beta,
                loss=loss,
                alpha=alpha,
                batch_size=batch_size,
                seed=seed,
                warmup_steps=warmup_steps,
            )
            t0 = time.time()
            torch.manual_seed(seed)
            if pairs_from:
                pairs = collect_pairs([], [Path(d) for d in pairs_from], max_pairs_per_prompt, seed)
                info = train_dpo(pol, ref, tok, pairs, p, work_dir=None, log=lambda s: None)
                its = [{"train_pairs": info["pairs"], "final_loss": info["losses"][-1]}]
            else:
                its = train_iterative_dpo(pol, ref, tok, prompts, p, o, work_dir=None, log=print)[
                    "iterations"
                ]
            wall = round(time.time() - t0, 1)
            pol.eval()
            row = {
                "seed": seed,
                "after": heldout(pol, tok, ev, eval_samples, sampling_seeds),
                "kl_to_start": kl_to_start(pol, start_model, tok, ev),
                "wall_s": wall,
            }
            row["iterations"] = its
            res["runs"].append(row)
            res.update(paired_gains(res["runs"], start, keys=keys))
            res.update(item_level_gains(res["runs"], start, keys=keys))
            (out / f"{tag}.json").write_text(json.dumps(res, indent=1))
            print(
                json.dumps(
                    {
                        "seed": seed,
                        **{k: row["after"][k] for k in keys},
                        "kl": row["kl_to_start"],
                        "wall_s": wall,
                    }
                ),
                flush=True,
            )
    return res


def merge(out_path: Path | str, parts: list[Path | str], keys: tuple = KEYS) -> dict:
    """One result from runs of the same configuration and start in separate processes (e.g. one seed each):
    the runs concatenated in seed order and the paired statistics (of the scores ``keys``) recomputed over all
    of them."""
    from ops.eval.metrics import item_level_gains, paired_gains

    docs = [json.loads(Path(p).read_text()) for p in parts]
    base = docs[0]
    for d in docs[1:]:
        if d["config"] != base["config"] or any(
            d["start"][f"{k}_items"] != base["start"][f"{k}_items"] for k in keys
        ):
            raise ValueError("the parts differ in configuration or start; they cannot be merged")
    res = {k: v for k, v in base.items() if not k.startswith(("gain_", "items_"))}
    res["runs"] = sorted((r for d in docs for r in d["runs"]), key=lambda r: r["seed"])
    res.update(paired_gains(res["runs"], res["start"], keys=keys))
    res.update(item_level_gains(res["runs"], res["start"], keys=keys))
    Path(out_path).write_text(json.dumps(res, indent=1))
    return res


def _scalars(d: dict) -> dict:
    return {k: v for k, v in d.items() if not isinstance(v, list)}


if __name__ == "__main__":
    import argparse
    import inspect

    # every option and its default come from run()'s signature, so the two cannot drift apart
    defaults = {k: v.default for k, v in inspect.signature(run).parameters.items()}
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for pos in ("out_dir", "sft_dir", "prompts_dir", "eval_tasks_dir"):
        ap.add_argument(pos)
    for name, cast in (
        ("loss", str),
        ("beta", float),
        ("alpha", float),
        ("lr", float),
        ("steps", int),
        ("batch_size", int),
        ("iterations", int),
        ("samples", int),
        ("prompts_per_iteration", int),
        ("temperature", float),
        ("max_new_tokens", int),
        ("max_pairs_per_prompt", int),
        ("warmup_steps", int),
        ("reference_update", str),
        ("seeds", int),
        ("first_seed", int),
        ("n_eval", int),
        ("eval_samples", int),
        ("sampling_seeds", int),
        ("tag", str),
    ):
        ap.add_argument("--" + name.replace("_", "-"), type=cast, default=defaults[name])
    ap.add_argument("--pairs-from", nargs="*", default=[])
    ap.add_argument("--swap-control", action="store_true")
    a = vars(ap.parse_args())
    a["pairs_from"] = tuple(a["pairs_from"])
    r = run(**a)
    print(json.dumps({k: _scalars(v) if k == "start" else v for k, v in r.items() if k != "runs"}, indent=1))
