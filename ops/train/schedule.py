"""Learning-rate schedules as pure functions of the step (so resume needs no scheduler object).

Key design choice: the learning rate is computed from ``(step, config)`` and written into the optimizer's
param groups before each update; the only scheduler state is the step counter stored in the checkpoint.
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "wsd", "constant", "linear")


def lr_at(
    step: int,
    *,
    lr: float,
    steps: int,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    min_lr_ratio: float = 0.1,
    decay_frac: float = 0.2,
) -> float:
    """Learning rate for update ``step`` (0-based) of ``steps``.

    * warmup: linear from ``lr/warmup_steps`` to ``lr`` over ``warmup_steps`` updates;
    * ``cosine``: cosine from ``lr`` to ``min_lr_ratio*lr`` at the last step;
    * ``wsd`` (warmup-stable-decay): flat at ``lr``, then linear to ``min_lr_ratio*lr`` over the last
      ``decay_frac`` of the steps;
    * ``linear``: linear to ``min_lr_ratio*lr``; ``constant``: flat after warmup.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    floor = lr * min_lr_ratio
    if schedule == "constant":
        return lr
    span = max(steps - warmup_steps - 1, 1)
    t = min(max(step - warmup_steps, 0) / span, 1.0)
    if schedule == "cosine":
        return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "linear":
        return lr + (floor - lr) * t
    decay_start = max(warmup_steps, steps - max(1, round(decay_frac * steps)))
    if step < decay_start:
        return lr
    u = (step - decay_start + 1) / max(steps - decay_start, 1)
    return lr + (floor - lr) * min(u, 1.0)
