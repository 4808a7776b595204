"""pass@k, maj@k, bits per byte and the interval/difference helpers against closed forms."""

from __future__ import annotations

import itertools
import math
from math import comb

import pytest

from ops.eval import metrics as M

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("n", "c", "k"),
    [(5, 2, 1), (5, 2, 2), (10, 3, 4), (8, 0, 3), (8, 8, 1), (6, 4, 3), (20, 1, 20), (4, 1, 4)],
)
def test_pass_at_k_matches_binomial_closed_form(n, c, k):
    expected = 1 - comb(n - c, k) / comb(n, k)
    assert M.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_hand_cases_and_subset_enumeration():
    assert M.pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert M.pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert M.pass_at_k(4, 0, 2) == 0.0
    assert M.pass_at_k(4, 3, 2) == 1.0  # n - c < k: every pair holds a correct sample
    # the estimator is the exact mean over all k-subsets of the n samples
    samples = [1, 0, 0, 1, 0, 0, 0]
    subsets = list(itertools.combinations(samples, 3))
    assert M.pass_at_k(7, 2, 3) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        M.pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        M.pass_at_k(3, 1, 4)


def test_maj_at_k_hand_cases():
    assert M.maj_at_k(["7", "7", "3"], "7") == 1.0
    assert M.maj_at_k(["3", "3", "7"], "7") == 0.0
    assert M.maj_at_k(["7", "3"], "7") == 0.5  # a tie scores its expected value under random tie-breaking
    assert M.maj_at_k(["7", "3", "5"], "5") == pytest.approx(1 / 3)
    assert M.maj_at_k([None, None, "7"], "7") == 1.0  # unparseable answers do not vote
    assert M.maj_at_k([None, None], "7") == 0.0
    assert M.maj_at_k(["3", "7", "7"], "7", k=1) == 0.0  # only the first k samples vote
    assert M.maj_at_k(["3", "7", "7"], "7", k=3) == 1.0
    # a custom equivalence (e.g. ops.tasks.is_correct) decides what matches gold
    assert M.maj_at_k(["14.0", "14.0", "3"], "14", correct=lambda a, g: float(a) == float(g)) == 1.0


def test_bits_per_byte_closed_form():
    assert M.bits_per_byte(math.log(2) * 100, 100) == pytest.approx(1.0)
    assert M.bits_per_byte(3.0, 4) == pytest.approx(3.0 / (4 * math.log(2)))
    with pytest.raises(ValueError):
        M.bits_per_byte(1.0, 0)


def test_wilson_interval_known_values():
    lo, hi = M.wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    lo, hi = M.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    p = M.proportion([1, 0, 1, 1])
    assert p["value"] == 0.75 and p["low"] < 0.75 < p["high"] and p["n"] == 4


def test_paired_difference_beyond_noise_only_when_interval_excludes_zero():
    a = [0] * 50 + [1] * 50
    same_rate_shuffled = [1] * 50 + [0] * 50  # same accuracy, every item flipped: no effect
    r = M.paired_difference(a, same_rate_shuffled)
    assert r["diff"] == 0 and not r["beyond_noise"]
    better = [0] * 20 + [1] * 80  # 30 items fixed, none broken
    r = M.paired_difference(a, better)
    assert r["diff"] == pytest.approx(0.3) and r["beyond_noise"] and r["low"] > 0
    small = [0] * 48 + [1] * 52  # +2 items out of 100: within noise
    assert not M.paired_difference(a, small)["beyond_noise"]
    with pytest.raises(ValueError):
        M.paired_difference([1, 0], [1])


def test_unpaired_difference_and_seed_spread():
    r = M.unpaired_difference([0.30, 0.35, 0.32], [0.60, 0.62, 0.65])
    assert r["beyond_noise"] and r["diff"] == pytest.approx(0.3, abs=1e-9)
    assert not M.unpaired_difference([0.31, 0.64, 0.45], [0.40, 0.50, 0.60])["beyond_noise"]
    s = M.seed_spread([0.31, 0.64, 0.45])
    assert s["sd"] == pytest.approx(0.16563, abs=1e-4) and s["min"] == 0.31 and s["n"] == 3


def test_bootstrap_ratio_interval_brackets_the_ratio():
    num, den = [1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0]
    lo, hi = M.bootstrap_ratio_interval(num, den, seed=1)
    assert lo <= sum(num) / sum(den) <= hi


def test_seed_and_item_level_gains_against_hand_computation():
    start = {"greedy": 0.5, "greedy_items": [0, 1, 0, 1]}
    runs = [
        {"after": {"greedy": 0.75, "greedy_items": [1, 1, 0, 1]}},
        {"after": {"greedy": 0.75, "greedy_items": [1, 1, 1, 0]}},
        {"after": {"greedy": 0.5, "greedy_items": [0, 1, 1, 0]}},
    ]
    seeds = M.paired_gains(runs, start, keys=("greedy",))["gain_greedy"]
    assert seeds["gains"] == [0.25, 0.25, 0.0]
    assert seeds["mean"] == pytest.approx(1 / 6)
    assert seeds["se"] == pytest.approx(math.sqrt(((1 / 12) ** 2 * 2 + (1 / 6) ** 2) / 2) / math.sqrt(3))
    assert seeds["significant"] is (seeds["mean"] > 2 * seeds["se"])
    # per item: seed-mean after (2/3, 1, 2/3, 1/3) minus start (0, 1, 0, 1) = (2/3, 0, 2/3, -2/3)
    items = M.item_level_gains(runs, start, keys=("greedy",))["items_greedy"]
    d = [2 / 3, 0.0, 2 / 3, -2 / 3]
    m = sum(d) / 4
    se = math.sqrt(sum((x - m) ** 2 for x in d) / 3 / 4)
    assert items["diff"] == pytest.approx(m) and items["se"] == pytest.approx(se) and items["n"] == 4
    assert items["beyond_noise"] is False  # 4 items cannot carry it
    # runs scored without per-item lists (older results) give no item-level entry instead of a wrong one
    assert M.item_level_gains([{"after": {"greedy": 0.7}}], start, keys=("greedy",)) == {}
