"""The benchmark's paired statistics for RL from one checkpoint: over seeds and over items."""

from __future__ import annotations

import math

import pytest

from bench.grpo_regime import item_level_gains, paired_gains

pytestmark = pytest.mark.unit


def test_seed_and_item_level_gains_against_hand_computation():
    start = {"greedy": 0.5, "greedy_items": [0, 1, 0, 1]}
    runs = [
        {"after": {"greedy": 0.75, "greedy_items": [1, 1, 0, 1]}},
        {"after": {"greedy": 0.75, "greedy_items": [1, 1, 1, 0]}},
        {"after": {"greedy": 0.5, "greedy_items": [0, 1, 1, 0]}},
    ]
    seeds = paired_gains(runs, start, keys=("greedy",))["gain_greedy"]
    assert seeds["gains"] == [0.25, 0.25, 0.0]
    assert seeds["mean"] == pytest.approx(1 / 6)
    assert seeds["se"] == pytest.approx(math.sqrt(((1 / 12) ** 2 * 2 + (1 / 6) ** 2) / 2) / math.sqrt(3))
    assert seeds["significant"] is (seeds["mean"] > 2 * seeds["se"])
    # per item: seed-mean after (2/3, 1, 2/3, 1/3) minus start (0, 1, 0, 1) = (2/3, 0, 2/3, -2/3)
    items = item_level_gains(runs, start, keys=("greedy",))["items_greedy"]
    d = [2 / 3, 0.0, 2 / 3, -2 / 3]
    m = sum(d) / 4
    se = math.sqrt(sum((x - m) ** 2 for x in d) / 3 / 4)
    assert items["diff"] == pytest.approx(m) and items["se"] == pytest.approx(se) and items["n"] == 4
    assert items["beyond_noise"] is False  # 4 items cannot carry it
    # runs scored without per-item lists (older results) give no item-level entry instead of a wrong one
    assert item_level_gains([{"after": {"greedy": 0.7}}], start, keys=("greedy",)) == {}
