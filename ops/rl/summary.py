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


def quarter_means(h: list[dict], key: str) -> tuple[float, float]:
    """The mean of ``key`` over the first and over the last quarter of the trained steps ``h``."""
    q = max(len(h) // 4, 1)
    return sum(r[key] for r in h[:q]) / q, sum(r[key] for r in h[-q:]) / q


def ppo_summary(history: list[dict]) -> dict[str, Any]:
    """Score, reward-model score and rollout rule accuracy in the first and last quarter, sequence KL (max,
    last), the last KL coefficient, and held-out accuracy at the start and the end."""
    h = training_steps(history)
    metrics = {}
    for key, name in (("score", "score"), ("reward_model", "rm_score"), ("rule_accuracy", "rule_accuracy")):
        if key in h[0]:
            metrics[f"{name}_first_quarter"], metrics[f"{name}_last_quarter"] = quarter_means(h, key)
    metrics |= {"kl_max": max(r["kl"] for r in h), "kl_last": h[-1]["kl"]}
    if "kl_coef" in h[-1]:
        metrics["kl_coef_last"] = h[-1]["kl_coef"]
    if history[0]["step"] == 0 and "eval_accuracy" in history[0]:
        metrics["eval_accuracy_start"], metrics["eval_accuracy_end"] = (
            history[0]["eval_accuracy"],
            h[-1].get("eval_accuracy"),
        )
    return metrics


def reward_hacking(h: list[dict]) -> str | None:
    """Why the trained steps ``h`` look like the reward model being gamed, or None: its score rose from the
    first to the last quarter while the rollouts' rule accuracy fell by more than twice the binomial standard
    error of that difference (over the quarters' rollouts). None without a reward model."""
    if not h or "reward_model" not in h[0] or "rule_accuracy" not in h[0]:
        return None
    q = max(len(h) // 4, 1)
    rm0, rm1 = quarter_means(h, "reward_model")
    a0, a1 = quarter_means(h, "rule_accuracy")
    n0, n1 = (sum(r.get("rollouts", 1) for r in part) for part in (h[:q], h[-q:]))
    se = (a0 * (1 - a0) / n0 + a1 * (1 - a1) / n1) ** 0.5
    if rm1 > rm0 and a1 < a0 - 2 * se:
        return (
            f"reward-model score rose {rm0:.3f} -> {rm1:.3f} while rule accuracy fell {a0:.3f} -> {a1:.3f} "
            f"(more than 2 SE = {2 * se:.3f}; first vs last quarter)"
        )
    return None
