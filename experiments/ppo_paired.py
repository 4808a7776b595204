"""Does PPO against the reward model raise held-out accuracy over the default pipeline's sft2? A paired
experiment over seeds.

``python -m experiments.ppo_paired OUT SFT_DIR RM_DIR PROMPTS_DIR EVAL_TASKS_DIR [--steps N]
[--prompts-per-step N] [--lr X] [--kl-coef X] [--rewards NAME ...] [--rm-weight X] [--rm-clip X]
[--reward-whiten] [--value-warmup-steps N] [--kl-target X] [--kl-horizon N] [--lam X] [--epochs N]
[--minibatch-size N] [--vf-coef X] [--samples-per-prompt N] [--seeds N]
[--first-seed N] [--n-eval N] [--samples N] [--sampling-seeds N] [--tag NAME]``: the same stored checkpoint (e.g. the default
pipeline's ``sft2``) is the start and the frozen KL reference of every run, and RM_DIR's reward model (e.g. the
default ``rm``; ``none`` for the rule rewards alone) scores the rollouts. Each seed runs the ``ppo`` stage's code
(``ops.rl.ppo.train_ppo``) with the default ``rl2`` settings unless
overridden, on PROMPTS_DIR's training problems, and is scored on the first
``n_eval`` held-out problems of EVAL_TASKS_DIR (a task set the prompts exclude): greedy accuracy and sampled
accuracy (T=1, ``samples`` per problem, R1's pass@1; with ``sampling_seeds`` N > 1 also ``sampled_avg``, averaged
over sampling seeds 1..N on both sides, since one draw of the start regresses toward its mean under any update),
scored by the rules, never by the reward model.
Reported: the start's scores, per-seed scores, the reward model's score and the rollouts' rule accuracy in the
first and last quarter of training (reward hacking shows as the first rising while the second falls), and the
paired gains (after - start) with their standard error over seeds (``significant``: mean > 2 SE with at least 3
seeds), plus the item-level paired difference. Results go to ``OUT/<tag>.json`` after every seed;
``experiments.dpo_paired.merge(..., keys=KEYS)`` joins seeds run as separate processes.
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


def run(
    out_dir: Path | str,
    sft_dir: Path | str,
    rm_dir: Path | str,
    prompts_dir: Path | str,
    eval_tasks_dir: Path | str,
    steps: int = 10,
    prompts_per_step: int = 64,
    samples_per_prompt: int = 1,
    lr: float = 1e-5,
    kl_coef: float = 0.1,
    rewards: tuple = ("accuracy",),
    rm_weight: float = 1.0,
    rm_clip: float | None = None,
    reward_whiten: bool = False,
    value_warmup_steps: int = 0,
    kl_target: float | None = None,
    kl_horizon: int = 10000,
    lam: float = 0.95,
    epochs: int = 2,
    minibatch_size: int = 32,
    vf_coef: float = 0.1,
    seeds: int = 3,
    first_seed: int = 0,
    n_eval: int = 300,
    samples: int = 8,
    tag: str = "ppo_paired",
    sampling_seeds: int = 1,
) -> dict:
    import copy

    import torch

    from experiments.dpo_paired import heldout, start_scores
    from experiments.grpo_paired import score_keys
    from ops.eval.metrics import item_level_gains, paired_gains
    from ops.posttrain.common import load_policy
    from ops.posttrain.rm import load_reward_model
    from ops.rewards import parse_specs
    from ops.rl.ppo import PPOParams, train_ppo
    from ops.rl.summary import quarter_means, training_steps
    from ops.tasks import read_tasks

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start_model, tok = load_policy(sft_dir)
    # RM_DIR "none": the rule rewards alone (the control that shows what the reward model adds)
    rm = None if str(rm_dir) == "none" else load_reward_model(rm_dir)
    prompts = read_tasks(Path(prompts_dir) / "train.parquet")
    ev = read_tasks(Path(eval_tasks_dir) / "eval.parquet")[:n_eval]
    overlap = {t.question for t in prompts} & {t.question for t in ev}
    if overlap:
        raise ValueError(f"{len(overlap)} held-out problems are among the training prompts")
    specs = parse_specs(list(rewards)) if rewards else []

    def score(m) -> dict:
        return heldout(m, tok, ev, samples, sampling_seeds)

    # the start's scores are a pure function of the checkpoint, the problems and the sampling seeds: screens run
    # as separate processes into one OUT share them
    start = start_scores(out, sft_dir, eval_tasks_dir, ev, start_model, tok, samples, sampling_seeds)
    config = {
        "steps": steps,
        "prompts_per_step": prompts_per_step,
        "samples_per_prompt": samples_per_prompt,
        "lr": lr,
        "kl_coef": kl_coef,
        "rewards": list(rewards),
        "rm_weight": rm_weight,
        "rm_clip": rm_clip,
        "reward_whiten": reward_whiten,
        "value_warmup_steps": value_warmup_steps,
        "kl_target": kl_target,
        "kl_horizon": kl_horizon,
        "lam": lam,
        "epochs": epochs,
        "minibatch_size": minibatch_size,
        "vf_coef": vf_coef,
        "n_eval": len(ev),
        "samples": samples,
        "sampling_seeds": sampling_seeds,
    }
    res: dict = {
        "sft": str(sft_dir),
        "reward_model": str(rm_dir),
        "prompts": str(prompts_dir),
        "eval_tasks": str(eval_tasks_dir),
        "config": config,
        "threads": torch.get_num_threads(),
        "start": start,
        "runs": [],
    }
    for seed in range(first_seed, first_seed + seeds):
        pol = copy.deepcopy(start_model).train().requires_grad_(True)
        ref = copy.deepcopy(start_model)
        p = PPOParams(
            steps=steps,
            prompts_per_step=prompts_per_step,
            samples_per_prompt=samples_per_prompt,
            lr=lr,
            kl_coef=kl_coef,
            rm_weight=rm_weight,
            rm_clip=rm_clip,
            reward_whiten=reward_whiten,
            value_warmup_steps=value_warmup_steps,
            kl_target=kl_target,
            kl_horizon=kl_horizon,
            lam=lam,
            epochs=epochs,
            minibatch_size=minibatch_size,
            vf_coef=vf_coef,
            seed=seed,
            gen_batch_size=1024,
        )
        t0 = time.time()
        torch.manual_seed(seed)
        st, _ = train_ppo(pol, ref, tok, prompts, specs, p, reward_model=rm, log=lambda s: None)
        train_s = time.time() - t0
        h = training_steps(st.history)
        row = {
            "seed": seed,
            "after": score(pol.eval()),
            "train_s": round(train_s, 1),
            "wall_s": round(time.time() - t0, 1),
            "rm_score_quarters": list(quarter_means(h, "reward_model")) if rm is not None else None,
            "rule_accuracy_quarters": list(quarter_means(h, "rule_accuracy")),
            "kl_max": max(x["kl"] for x in h),
            "kl_coef_last": h[-1]["kl_coef"],
            "curve": [
                {
                    k: x.get(k)
                    for k in ("step", "reward_model", "rule_accuracy", "kl", "kl_coef", "value_loss")
                }
                for x in h
            ],
        }
        res["runs"].append(row)
        keys = score_keys(sampling_seeds)
        res.update(paired_gains(res["runs"], start, keys=keys))
        res.update(item_level_gains(res["runs"], start, keys=keys))
        (out / f"{tag}.json").write_text(json.dumps(res, indent=1))
        print(
            json.dumps(
                {k: v for k, v in row.items() if k not in ("after", "curve")}
                | {k: row["after"][k] for k in keys}
            ),
            flush=True,
        )
    return res


if __name__ == "__main__":
    import argparse
    import inspect

    from experiments.dpo_paired import _scalars

    # every option and its default come from run()'s signature, so the two cannot drift apart
    defaults = {k: v.default for k, v in inspect.signature(run).parameters.items()}
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for pos in ("out_dir", "sft_dir", "rm_dir", "prompts_dir", "eval_tasks_dir"):
        ap.add_argument(pos)
    for name, cast in (
        ("steps", int),
        ("prompts_per_step", int),
        ("samples_per_prompt", int),
        ("lr", float),
        ("kl_coef", float),
        ("rm_weight", float),
        ("rm_clip", float),
        ("value_warmup_steps", int),
        ("kl_target", float),
        ("kl_horizon", int),
        ("lam", float),
        ("epochs", int),
        ("minibatch_size", int),
        ("vf_coef", float),
        ("seeds", int),
        ("first_seed", int),
        ("n_eval", int),
        ("samples", int),
        ("tag", str),
        ("sampling_seeds", int),
    ):
        ap.add_argument("--" + name.replace("_", "-"), type=cast, default=defaults[name])
    ap.add_argument("--rewards", nargs="*", default=list(defaults["rewards"]))
    ap.add_argument("--reward-whiten", action="store_true")
    a = vars(ap.parse_args())
    a["rewards"] = tuple(a["rewards"])
    r = run(**a)
    print(json.dumps({k: _scalars(v) if k == "start" else v for k, v in r.items() if k != "runs"}, indent=1))
