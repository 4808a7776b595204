"""Benchmarks: each module exposes ``run(out_dir) -> dict`` of figures measured against a peer in the same run."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_alternating(sides: dict[str, Callable[[], object]], rounds: int, reps: int) -> dict[str, float]:
    """Each side's best mean seconds per call over ``rounds`` rounds of ``reps`` calls, after one warm-up call
    each; the sides take turns within every round, so a change in the machine's speed hits all of them."""
    for fn in sides.values():
        fn()
    best = {name: float("inf") for name in sides}
    for _ in range(rounds):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / reps)
    return best
