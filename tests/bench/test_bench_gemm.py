"""``bench_gemm`` times the same decoder with PyTorch's linear layers and with ``ops.cpu_gemm``'s, and says
which backend ``auto`` picks on this CPU."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from bench import bench_gemm
from ops import cpu_gemm

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not cpu_gemm._onednn_available(), reason="this torch build has no oneDNN"),
]


def test_both_sides_measured_on_their_own_kernels(tmp_path):
    calls = {"onednn": 0}
    real = cpu_gemm._Linear.apply

    def counted(*a):
        calls["onednn"] += 1
        return real(*a)

    with mock.patch.object(cpu_gemm._Linear, "apply", side_effect=counted):
        res = bench_gemm.run(tmp_path, rounds=1, steps=1, batch=(2, 8))
    linears = 4 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the output head
    # warm-up + one round of each figure on the oneDNN side only; the MKL side never calls it
    assert calls["onednn"] == 2 * 2 * linears
    assert res["cpu_vendor"] == cpu_gemm.cpu_vendor() and res["cpu_gemm_auto"] in ("onednn", "mkl")
    for fig in ("train_step", "forward"):
        assert res[f"{fig}_mkl_ms"] > 0 and res[f"{fig}_onednn_ms"] > 0
        assert res[f"{fig}_speedup_onednn_vs_mkl"] == pytest.approx(
            res[f"{fig}_mkl_ms"] / res[f"{fig}_onednn_ms"], rel=0.05
        )
    assert torch.get_num_threads() == res["threads"]
