"""The likelihood reward head's one fitted number: the Bradley-Terry scale."""

from __future__ import annotations

import math
import random

from ops.posttrain.rm import fit_bt_scale


def _bt_pairs(scale: float, n: int, seed: int = 0) -> list[float]:
    """Feature differences oriented winner-minus-loser, the winner drawn from P = sigma(scale * d)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        d = rng.gauss(0.0, 1.0)
        out.append(d if rng.random() < 1 / (1 + math.exp(-scale * d)) else -d)
    return out


def test_recovers_the_scale_that_generated_the_preferences():
    for true in (0.5, 3.0):
        est = fit_bt_scale(_bt_pairs(true, 6000))
        assert abs(est - true) < 0.15 * true, (true, est)


def test_stays_finite_on_separable_pairs_and_is_zero_without_signal():
    s = fit_bt_scale([0.1, 0.2, 0.3])
    assert math.isfinite(s) and s > 10
    assert fit_bt_scale([0.0] * 10) < 1e-6
    assert fit_bt_scale([-0.2, -0.1]) == 0.0  # the feature prefers the losers: no positive scale helps
    assert fit_bt_scale([]) == 1.0
