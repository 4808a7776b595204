"""``bench_core``'s whole-pipeline figure: it materializes the pipeline into the bench's own home when the
user's home does not hold all of it, reuses either home when complete, never writes the user's home, and
leaves ``$LMFORGE_HOME`` as it found it for the benchmarks that run after it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import bench_core
from pipelines.cli import materialize

pytestmark = pytest.mark.integration

SPEC = """pipeline: bench_noop
stages:
  tasks: {kind: reasoning_tasks, train: 40, eval: 10}
  more: {kind: reasoning_tasks, train: 30, eval: 10, seed: 3}
"""


def test_pipeline_noop_materializes_into_its_own_home_then_reuses_it(tmp_path, monkeypatch):
    spec = tmp_path / "bench_noop.yaml"
    spec.write_text(SPEC)
    user = tmp_path / "user-home"
    monkeypatch.setenv("LMFORGE_HOME", str(user))
    monkeypatch.delenv("LMFORGE_BENCH_HOME", raising=False)

    first = bench_core.pipeline_noop(str(spec), user)
    assert first["bench_noop_stages"] == 2 and first["bench_noop_materialized_stages"] == 2
    assert isinstance(first["bench_noop_materialize_s"], float)
    assert isinstance(first["bench_noop_noop_rematerialize_s"], float), first
    assert str(tmp_path / "user-home-bench") in first["bench_noop_home"]
    assert not (user / "artifacts").exists()  # the user's home is only read
    assert os.environ["LMFORGE_HOME"] == str(user)

    again = bench_core.pipeline_noop(str(spec), user)
    assert "bench_noop_materialize_s" not in again and "complete" in again["bench_noop_home"]
    assert isinstance(again["bench_noop_noop_rematerialize_s"], float), again


def test_pipeline_noop_uses_a_complete_user_home(tmp_path, monkeypatch):
    spec = tmp_path / "bench_noop.yaml"
    spec.write_text(SPEC)
    user = tmp_path / "user-home"
    assert materialize(spec, None, user, quiet=True)
    monkeypatch.setenv("LMFORGE_HOME", "/elsewhere")
    monkeypatch.setenv("LMFORGE_BENCH_HOME", str(tmp_path / "bench-home"))

    res = bench_core.pipeline_noop(str(spec), user)
    assert res["bench_noop_home"].startswith(f"{user} ($LMFORGE_HOME")
    assert isinstance(res["bench_noop_noop_rematerialize_s"], float), res
    assert not (tmp_path / "bench-home").exists()
    assert os.environ["LMFORGE_HOME"] == "/elsewhere"


def test_bench_home_sits_beside_the_users_unless_named(tmp_path, monkeypatch):
    monkeypatch.delenv("LMFORGE_BENCH_HOME", raising=False)
    assert bench_core.bench_home(Path("/x/.lmforge")) == Path("/x/.lmforge-bench")
    monkeypatch.setenv("LMFORGE_BENCH_HOME", str(tmp_path / "b"))
    assert bench_core.bench_home(Path("/x/.lmforge")) == tmp_path / "b"
