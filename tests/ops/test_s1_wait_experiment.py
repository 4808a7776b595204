"""experiments/s1_wait.py's merge of arms run as separate processes: the paired verify - plain comparison over
the same items, and a refusal to merge runs of different configurations."""

from __future__ import annotations

import json

import pytest

from experiments.s1_wait import combine, compare
from ops.eval.metrics import paired_difference

pytestmark = pytest.mark.unit


def _run(path, arm, own, wait1, start="/m", **config):
    body = {"start": start, "config": {"steps": 10, **config}, "elapsed_s": 5.0,
            "arms": {arm: {"per_item": {"own": own, "wait1": wait1}, "wait_effect": []}}}
    path.write_text(json.dumps(body))
    return path


def test_combine_pairs_verify_against_plain_over_items(tmp_path):
    plain = {f"i{i}": float(i < 5) for i in range(30)}
    verify = {f"i{i}": float(i < 15) for i in range(30)}
    a = _run(tmp_path / "v.json", "verify", verify, verify, threads=2)
    b = _run(tmp_path / "p.json", "plain", plain, plain, threads=1)  # thread count: speed, not results
    res = combine([a, b], tmp_path / "out.json")
    keys = sorted(plain)
    want = paired_difference([plain[k] for k in keys], [verify[k] for k in keys])
    assert res["verify_minus_plain"]["own_stop"] == want and want["beyond_noise"]
    assert set(res["arms"]) == {"verify", "plain"} and res["arms"]["verify"]["threads"] == 2
    assert json.loads((tmp_path / "out.json").read_text()) == res


def test_combine_refuses_runs_of_different_configs(tmp_path):
    a = _run(tmp_path / "v.json", "verify", {}, {})
    b = _run(tmp_path / "p.json", "plain", {}, {}, lr=0.5)
    with pytest.raises(ValueError, match="runs differ in start or config"):
        combine([a, b], tmp_path / "out.json")


def test_compare_pairs_the_same_arm_of_two_runs_over_items(tmp_path):
    own_a = {f"i{i}": float(i < 10) for i in range(40)}
    own_b = {f"i{i}": float(i < 25) for i in range(40)}
    # the same start artifact read from two homes; the runs differ in how they trained, not in the held-out items
    a = _run(tmp_path / "a.json", "recheck", own_a, own_a, start="/h1/artifacts/sft/v1", steps=300)
    b = _run(tmp_path / "b.json", "recheck", own_b, own_a, start="/h2/artifacts/sft/v1", steps=600, mask_slips=True)
    res = compare(a, b, tmp_path / "cmp.json")
    keys = sorted(own_a)
    got = res["b_minus_a"]["recheck"]
    assert got["own_stop"] == paired_difference([own_a[k] for k in keys], [own_b[k] for k in keys])
    assert got["own_stop"]["diff"] == pytest.approx(0.375) and got["wait1"]["diff"] == 0.0
    assert json.loads((tmp_path / "cmp.json").read_text()) == res


def test_compare_refuses_another_start_or_other_items(tmp_path):
    a = _run(tmp_path / "a.json", "recheck", {"i0": 1.0}, {"i0": 1.0}, start="/h/artifacts/sft/v1")
    b = _run(tmp_path / "b.json", "recheck", {"i0": 1.0}, {"i0": 1.0}, start="/h/artifacts/sft/v2")
    with pytest.raises(ValueError, match="differ in start or held-out items"):
        compare(a, b)
    c = _run(tmp_path / "c.json", "recheck", {"i1": 1.0}, {"i1": 1.0}, start="/h/artifacts/sft/v1")
    with pytest.raises(ValueError, match="scored on other items"):
        compare(a, c)


def test_loss_masks_follow_the_arm_style():
    from experiments.s1_wait import ARMS, loss_masks

    review = "23+5=28. 28-7=21. Wait, 23 +5 *3 -7: 23+5=28. 28*3=84. 84-7=77."
    assert [review[a:b] for a, b in loss_masks(ARMS["review"][0], review)] == ["28-7=21", " Wait"]
    recheck = "17*3=41. Wait, 10*3=30, 7*3=21, 30+21=51, so 17*3=51."
    assert [recheck[a:b] for a, b in loss_masks(ARMS["recheck"][0], recheck)] == ["41"]


@pytest.mark.parametrize(
    "written, kind",
    [
        ("23+5=28. 28*3=84.", "stop"),
        ("23+5=28. 28-7=21.", "skip"),
        ("23+5=28. 28*4=112. 112-7=105.", "operand"),
        ("23+5=28. 28/3=9.", "operation"),
        ("23+5=28. 28*3=86. 86-7=79.", "arithmetic"),
        ("23+5=28. 26*3=78. 78-7=71.", "carry"),
        ("23+5=28. 28*3=84. 84-7=77. 77+1=78.", "extra"),
        ("23+5=28. 28*3=84. 84-7=77.", "answer"),
    ],
)
def test_first_error_classes(written, kind):
    from experiments.s1_first_errors import _EQ, first_error

    steps = lambda t: [(int(a), op, int(b), int(c)) for a, op, b, c in _EQ.findall(t)]  # noqa: E731
    assert first_error(steps("23+5=28. 28*3=84. 84-7=77."), steps(written)) == kind


@pytest.mark.parametrize(
    "own, wait, outcome",
    [
        ("23+5=28. 28*3=84. 84-7=77.", "23+5=28. 28*3=84. 84-7=77. Wait, 23 +5 *3 -7: 23+5=28. 28*3=84. 84-7=77.",
         "kept_right"),
        ("23+5=28. 28-7=21.", "23+5=28. 28-7=21. Wait, 23 +5 *3 -7: 23+5=28. 28*3=84. 84-7=77.</think>", "fixed"),
        ("23+5=28. 28*3=84. 84-7=77.", "... Wait, 23 +5 *3 -7: 23+5=29. 29*3=87. 87-7=80.", "broke:arithmetic"),
        ("23+5=28. 28-7=21.", "... Wait, 23 +5 -7: 23+5=28. 28-7=21.", "ops_misread"),
        ("23+5=28. 28-7=21.", "... Wait, 23 +5 *3 -7: 23+5=28. 28-7=21.", "kept_wrong"),
        ("23+5=28. 28*3=84. 84-7=77.", "23+5=28. 28*3=84. 84-7=77. Wait, so 77", "no_review"),
        ("23+5=28. 28*3=84. 84-7=77.", "... Wait, 23 +5 *3 -7: so 77.</think>", "confirmed_right"),
        ("23+5=28. 28-7=21.", "... Wait, 23 +5 *3 -7: so 21.</think>", "confirmed_wrong"),
        ("23+5=28. 28-7=21.", "... Wait, 23 +5 *3 -7: 28*3=84. 84-7=77.</think>", "fixed"),
        ("23+5=28. 28*3=84. 84-7=77.", "... Wait, 23 +5 *3 -7: 84-7=76.</think>", "broke:arithmetic"),
    ],
)
def test_review_outcome_reads_what_a_forced_wait_did(own, wait, outcome):
    from experiments.s1_first_errors import _steps, review_outcome

    assert review_outcome(_steps("23+5=28. 28*3=84. 84-7=77."), f"<think>{own}</think>", f"<think>{wait}") == outcome
