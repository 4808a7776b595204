"""experiments/s1_wait.py's merge of arms run as separate processes: the paired verify - plain comparison over
the same items, and a refusal to merge runs of different configurations."""

from __future__ import annotations

import json

import pytest

from experiments.s1_wait import combine
from ops.eval.metrics import paired_difference

pytestmark = pytest.mark.unit


def _run(path, arm, own, wait1, **config):
    body = {"start": "/m", "config": {"steps": 10, **config}, "elapsed_s": 5.0,
            "arms": {arm: {"per_item": {"own": own, "wait1": wait1}}}}
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
