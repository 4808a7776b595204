"""Summary figures of an RL run from its per-step history (GRPO and PPO): the first and last quarter of
training, the KL to the reference, and the held-out accuracy before and after.

Step 0 of a history is the evaluation before the first update; the training statistics cover steps >= 1.
"""

from __future__ import annotations

from typing import Any


def training_steps(history: list[dict]) -> list[dict]:
    """The history without the step-0 evaluation row."""
    return [r for r in history if r["step"] > 0]


def all_finite(rows: list[dict]) -> bool:
    """No float statistic of any row is NaN."""
    return all(all(v == v for v in r.values() if isinstance(v, float)) for r in rows)


def grpo_summary(history: list[dict], rollouts: int) -> dict[str, Any]:
    """Reward and reward accuracy in the first and last quarter, KL (max, last), time per step, the share of
    it spent generating, and each held-out figure at the start and the end."""
    h = training_steps(history)
    first, last = h[: max(len(h) // 4, 1)], h[-max(len(h) // 4, 1) :]

    def mean(rs: list[dict], k: str) -> float:
        return sum(r.get(k, 0.0) for r in rs) / len(rs)

    start = history[0] if history and history[0]["step"] == 0 else {}
    end = history[-1]
    metrics = {
        "reward_first_quarter": mean(first, "reward"),
        "reward_last_quarter": mean(last, "reward"),
        "accuracy_first_quarter": mean(first, "reward_accuracy"),
        "accuracy_last_quarter": mean(last, "reward_accuracy"),
        "kl_max": max(r.get("kl", 0.0) for r in h),
        "kl_last": h[-1].get("kl", 0.0),
        "step_s": mean(h, "step_s"),
        "gen_share": mean(h, "gen_s") / max(mean(h, "step_s"), 1e-9),
        "rollouts": rollouts,
    }
    for k in ("eval_accuracy", "eval_sampled_accuracy", "eval_parse_rate"):
        if k in start:
            metrics[f"{k}_start"], metrics[f"{k}_end"] = start[k], end.get(k)
    return metrics


def ppo_summary(history: list[dict]) -> dict[str, Any]:
    """Score in the first and last quarter, sequence KL (max, last) and held-out accuracy at the start and
    the end."""
    h = training_steps(history)
    q = max(len(h) // 4, 1)
    metrics = {
        "score_first_quarter": sum(r["score"] for r in h[:q]) / q,
        "score_last_quarter": sum(r["score"] for r in h[-q:]) / q,
        "kl_max": max(r["kl"] for r in h),
        "kl_last": h[-1]["kl"],
    }
    if history[0]["step"] == 0 and "eval_accuracy" in history[0]:
        metrics["eval_accuracy_start"], metrics["eval_accuracy_end"] = (
            history[0]["eval_accuracy"],
            h[-1].get("eval_accuracy"),
        )
    return metrics
