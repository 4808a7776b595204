"""The catalog tells the truth: `lmforge catalog rebuild` restores the views and stage history it had
(the latest recorded version per stage, not the last in sorted-version order), and a missing or
unreadable catalog is rebuilt before `lmforge sql` answers, never an empty answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tests.pipelines.toy_kinds  # noqa: F401
from pipelines.cli import main
from pipelines.spec import load_spec

pytestmark = pytest.mark.integration


def _write(path: Path, words: list[str]) -> Path:
    path.write_text(f"pipeline: toy_cat\nstages:\n  words: {{kind: toy_text, words: {json.dumps(words)}}}\n")
    return path


def _two_configs(tmp_path: Path) -> tuple[list[str], list[str]]:
    """(first, second): word lists whose versions sort second < first, so that registering in sorted
    version order would leave the per-stage view on the older one."""
    p = tmp_path / "probe.yaml"
    first = ["alpha", "beta"]
    v1 = load_spec(_write(p, first)).stages["words"].version
    for i in range(100):
        second = [f"gamma{i}"]
        if load_spec(_write(p, second)).stages["words"].version < v1:
            return first, second
    raise AssertionError("no second config with a smaller version")


def _sql(home: Path, q: str, capsys) -> tuple[list[dict], str]:
    capsys.readouterr()
    assert main(["--home", str(home), "sql", q, "--json"]) == 0
    c = capsys.readouterr()
    return json.loads(c.out), c.err


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("LMFORGE_HOME", str(h))
    monkeypatch.setenv("DAGSTER_HOME", str(h / "dagster"))
    return h


def test_rebuild_restores_latest_version_per_stage_and_history(tmp_path, home, capsys):
    first, second = _two_configs(tmp_path)
    spec = tmp_path / "toy_cat.yaml"
    view = "SELECT text FROM toy_cat__words__documents ORDER BY text"
    runs = "SELECT pipeline, stage, partition, version, cache_hit FROM stage_runs ORDER BY recorded_at, version"

    for words in (first, second):
        assert main(["--home", str(home), "materialize", str(_write(spec, words))]) == 0
    assert [r["text"] for r in _sql(home, view, capsys)[0]] == sorted(second)
    assert main(["--home", str(home), "catalog", "rebuild"]) == 0
    assert [r["text"] for r in _sql(home, view, capsys)[0]] == sorted(second), "rebuild chose the older version"

    # back to the first config: a cache hit, recorded as the stage's latest version
    assert main(["--home", str(home), "materialize", str(_write(spec, first))]) == 0
    assert [r["text"] for r in _sql(home, view, capsys)[0]] == sorted(first)
    before = _sql(home, runs, capsys)[0]
    assert [r["cache_hit"] for r in before] == [False, False, True]
    assert main(["--home", str(home), "catalog", "rebuild"]) == 0
    assert "and 3 recorded stage runs" in capsys.readouterr().out
    assert [r["text"] for r in _sql(home, view, capsys)[0]] == sorted(first)
    assert _sql(home, runs, capsys)[0] == before


def test_missing_or_unreadable_catalog_is_rebuilt_not_empty(tmp_path, home, capsys):
    spec = _write(tmp_path / "toy_cat.yaml", ["alpha", "beta"])
    assert main(["--home", str(home), "materialize", str(spec)]) == 0
    count = "SELECT count(*) AS n FROM artifacts"
    assert _sql(home, count, capsys)[0] == [{"n": 1}]

    cat = home / "catalog.duckdb"
    cat.unlink()
    rows, err = _sql(home, count, capsys)
    assert rows == [{"n": 1}] and "was missing; rebuilt it from 1 stored manifests" in err
    assert len(_sql(home, "SELECT * FROM toy_cat__words__documents", capsys)[0]) == 2

    cat.write_bytes(b"this is not a duckdb file" * 100)
    rows, err = _sql(home, count, capsys)
    assert rows == [{"n": 1}] and "was unreadable" in err and "rebuilt" in err
    kept = list(home.glob("catalog.duckdb.unreadable-*"))
    assert len(kept) == 1 and kept[0].read_bytes().startswith(b"this is not a duckdb file")
