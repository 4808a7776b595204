"""Shared fixtures. Every test gets its own LMFORGE_HOME under tmp_path; nothing touches ~/.lmforge."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# No hub downloads, ever: fail in milliseconds instead of retrying for 20 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads sleep rather than spin between parallel regions: with another torch process on the machine
# (a busy CI host, a test's own ranks or workers) spinning threads took each cold_sft step 6x as long (ledger)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture
def lmforge_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "lmforge_home"
    home.mkdir()
    monkeypatch.setenv("LMFORGE_HOME", str(home))
    return home


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
