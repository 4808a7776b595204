"""``bench/gpu_mfu.py`` runs end to end in its CPU smoke mode (the tiny shape, no compile), so that it is ready
when a GPU machine is lent: both variants train on the same batches, and the files it writes hold what the
README quotes (tokens/s, MFU against the device's peak, the lmforge / minimal ratio)."""

from __future__ import annotations

import json
import math

import pytest

from bench import gpu_mfu

pytestmark = pytest.mark.unit


def test_smoke_mode_measures_both_variants_and_writes_the_ratio(tmp_path):
    res = gpu_mfu.run(tmp_path, smoke=True)
    assert res["device"] == "cpu" and res["shape"] == gpu_mfu.SMOKE
    assert set(res["variants"]) == {"minimal", "lmforge"}
    for v in res["variants"].values():
        assert math.isfinite(v["tokens_per_s"]) and v["tokens_per_s"] > 0
    assert res["ratio_lmforge_vs_minimal"] == pytest.approx(
        res["variants"]["lmforge"]["tokens_per_s"] / res["variants"]["minimal"]["tokens_per_s"]
    )
    stored = json.loads((tmp_path / "gpu_mfu.json").read_text())
    assert stored["ratio_lmforge_vs_minimal"] == res["ratio_lmforge_vs_minimal"]
    assert "lmforge / minimal:" in (tmp_path / "gpu_mfu.md").read_text()
