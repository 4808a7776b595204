"""``bench_head`` times the same losses with the head fused and with it switched off, each side on its own
path."""

from __future__ import annotations

from unittest import mock

import pytest

from bench import bench_head
from ops import fused_head

pytestmark = pytest.mark.unit


def test_only_the_fused_side_takes_the_fused_path(tmp_path):
    calls = {"n": 0}
    real = fused_head.head_logprobs

    def counted(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    with mock.patch.object(fused_head, "head_logprobs", side_effect=counted):
        res = bench_head.run(tmp_path, rounds=1, steps=1, prompts=2, sft_rows=2)
    # one warm-up and one timed call of each figure on the fused side; the plain side never calls it
    assert calls["n"] == 2 * 2
    for fig in ("grpo_update", "sft_step"):
        assert res[f"{fig}_plain_ms"] > 0 and res[f"{fig}_fused_ms"] > 0
        assert res[f"{fig}_speedup_fused_vs_plain"] == pytest.approx(
            res[f"{fig}_plain_ms"] / res[f"{fig}_fused_ms"], rel=0.05
        )
    assert res["grpo_rows"] > 0 and res["sft_batch"] == [2, 90]
