"""Tiny GRPO and PPO runs for the resume tests, usable in-process and as a child process that is killed.

A random tiny Qwen2 from ``tests.posttrain_helpers`` and a rule reward that varies within every group (the
share of digits in a completion), so every step has live groups, optimizer updates and a moving policy.

Child usage: ``python -m tests.ops.rl.resume_runs KIND MODEL_DIR WORK OUT HANG_AT THREADS``. With
``HANG_AT > 0`` the run writes ``WORK/reached`` after logging that step (before its checkpoint) and then
waits to be killed; otherwise it finishes and writes its results to ``OUT``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

REWARD = "test_digit_share"
TIMING = {"gen_s", "update_s", "step_s", "gen_tokens_per_s"}  # wall-clock fields of a history record


def register_reward() -> None:
    from ops.rewards import REWARDS, register_reward

    if REWARD in REWARDS:
        return

    @register_reward(REWARD, "v1", "share of digit characters in the completion (a test reward)")
    def _digits(batch):
        return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in batch.completions]


def grpo_params(**over: Any):
    from ops.rl.grpo import GRPOParams

    kw = dict(
        steps=6,
        prompts_per_step=4,
        group_size=4,
        max_new_tokens=12,
        lr=1e-3,
        warmup_steps=1,
        beta=0.04,
        updates_per_batch=2,
        minibatch_size=8,
        seed=5,
        ckpt_every=2,
    )
    return GRPOParams(**{**kw, **over})


def ppo_params(**over: Any):
    from ops.rl.ppo import PPOParams

    kw = dict(
        steps=6,
        prompts_per_step=8,
        max_new_tokens=12,
        lr=1e-3,
        warmup_steps=1,
        epochs=2,
        minibatch_size=4,
        seed=7,
        ckpt_every=2,
    )
    return PPOParams(**{**kw, **over})


def _eval_fn(model: Any, step: int) -> dict[str, float]:
    """A deterministic evaluation: the step-0 record must come back from the checkpoint, not be recomputed."""
    return {"eval_param_sum": float(sum(p.detach().double().sum() for p in model.parameters()))}


def run(kind: str, model_dir: Path, work: Path | None, log=lambda s: None, **over: Any):
    """One run; returns ``(weights, value_head_weights_or_None, history, rollouts)``."""
    import torch

    from ops.posttrain.common import load_policy
    from ops.rewards import parse_specs
    from tests.posttrain_helpers import task_splits

    register_reward()
    torch.manual_seed(0)
    policy, tok = load_policy(model_dir)
    ref, _ = load_policy(model_dir)
    train, _ = task_splits()
    specs = parse_specs([REWARD])
    if kind == "grpo":
        from ops.rl.grpo import train_grpo

        st = train_grpo(
            policy, ref, tok, train[:64], specs, grpo_params(**over), eval_fn=_eval_fn, log=log, work_dir=work
        )
        vh = None
    else:
        from ops.rl.ppo import train_ppo

        st, vh = train_ppo(
            policy, ref, tok, train[:64], specs, ppo_params(**over), eval_fn=_eval_fn, log=log, work_dir=work
        )
    weights = {k: v.detach().clone() for k, v in policy.state_dict().items()}
    vhw = {k: v.detach().clone() for k, v in vh.state_dict().items()} if vh is not None else None
    return weights, vhw, st.history, st.rollouts


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in history]


def main(argv: list[str]) -> None:
    import torch

    from ops.train.checkpoint import save_tensors

    kind, model_dir, work, out, hang_at, threads = argv
    torch.set_num_threads(int(threads))
    hang, work_p = int(hang_at), Path(work)

    def log(line: str) -> None:
        if hang > 0 and line.startswith(f"step={hang} "):
            (work_p / "reached").write_text(line)
            time.sleep(600)  # killed here, after step `hang` and before its checkpoint

    weights, vhw, history, rollouts = run(kind, Path(model_dir), work_p, log=log)
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    save_tensors(weights, out_p / "model.safetensors")
    (out_p / "runs.json").write_text(json.dumps({"history": history, "rollouts": rollouts}))


if __name__ == "__main__":
    main(sys.argv[1:])
