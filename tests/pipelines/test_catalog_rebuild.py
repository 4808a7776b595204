"""The catalog tells the truth: `lmforge catalog rebuild` restores the views and stage history it had
(the latest recorded version per stage, not the last in sorted-version order), a missing or
unreadable catalog is rebuilt before `lmforge sql` answers, never an empty answer, and an artifact moved
aside or removed leaves the catalog, never a view over missing files."""

from __future__ import annotations

import json
import shutil
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


def test_catalog_drops_what_verify_moved_aside_and_what_is_no_longer_stored(tmp_path, home, capsys):
    first, second = _two_configs(tmp_path)
    spec = tmp_path / "toy_cat.yaml"
    for words in (first, second):
        assert main(["--home", str(home), "materialize", str(_write(spec, words))]) == 0
    v2 = load_spec(spec).stages["words"].version
    listed = "SELECT version FROM artifacts ORDER BY version"
    (v1,) = {r["version"] for r in _sql(home, listed, capsys)[0]} - {v2}
    pq_file = home / "artifacts" / "toy_text" / v2 / "documents.parquet"
    pq_file.write_bytes(pq_file.read_bytes()[:100])

    capsys.readouterr()
    assert main(["--home", str(home), "verify"]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED  toy_text/{v2}" in out
    assert "the catalog no longer lists the 1 artifacts moved aside" in out
    rows, err = _sql(home, listed, capsys)
    assert rows == [{"version": v1}] and err == ""
    # the stage's view falls back to its latest version still stored, as a rebuild would
    view = "SELECT text FROM toy_cat__words__documents ORDER BY text"
    assert [r["text"] for r in _sql(home, view, capsys)[0]] == sorted(first)
    union = "SELECT DISTINCT artifact_version FROM all_documents"
    assert _sql(home, union, capsys)[0] == [{"artifact_version": v1}]
    runs = "SELECT version FROM stage_runs"
    assert _sql(home, runs, capsys)[0] == [{"version": v1}]
    assert not [r for r in _sql(home, "SELECT sql FROM duckdb_views()", capsys)[0] if v2 in r["sql"]]
    assert main(["--home", str(home), "catalog", "rebuild"]) == 0
    assert [r["text"] for r in _sql(home, view, capsys)[0]] == sorted(first)
    capsys.readouterr()
    assert main(["--home", str(home), "sql", f"SELECT * FROM a_{v2}_documents"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error  {home / 'catalog.duckdb'}: Catalog Error: Table with name a_{v2}_documents")

    # an artifact directory removed by hand: the next query drops it and its views, and says so
    shutil.rmtree(home / "artifacts" / "toy_text" / v1)
    rows, err = _sql(home, listed, capsys)
    assert rows == [] and "listed 1 artifacts no longer stored; removed them" in err
    views = _sql(home, "SELECT view_name FROM duckdb_views() WHERE NOT internal", capsys)[0]
    assert views == []


def test_a_rebuild_waits_for_a_writer_and_a_writer_for_a_rebuild(tmp_path, home, monkeypatch):
    """A rebuild deletes and recreates the catalog file: it must not run while another writer holds the
    file, or that writer's row lands in the deleted file."""
    import threading
    import time

    from resources.catalog import Catalog
    from resources.store import ArtifactStore

    assert main(["--home", str(home), "materialize", str(_write(tmp_path / "c.yaml", ["alpha"]))]) == 0
    store = ArtifactStore(home)
    (art,) = store.all()
    events: list[str] = []
    scan = store.all
    monkeypatch.setattr(store, "all", lambda: events.append("rebuild scans the store") or scan())

    def writer() -> None:
        with Catalog(home)._writing():
            events.append("writer in")
            time.sleep(0.5)
            events.append("writer out")

    t = threading.Thread(target=writer)
    t.start()
    while "writer in" not in events:
        time.sleep(0.01)
    Catalog(home).rebuild(store)
    t.join()
    assert events == ["writer in", "writer out", "rebuild scans the store"]

    # and a registration waits while a rebuild holds the lock
    events.clear()
    cat = Catalog(home)
    with cat._writing():
        r = threading.Thread(target=lambda: (cat.register(art), events.append("registered")))
        r.start()
        time.sleep(0.3)
        events.append("rebuild done")
    r.join()
    assert events == ["rebuild done", "registered"]
