"""DuckDB catalog over the artifact store: ``$LMFORGE_HOME/catalog.duckdb``.

Key design choice: the catalog is an *index*, never the system of record. Every row is derived from a
``manifest.json`` in the store, so :meth:`Catalog.rebuild` recreates it from scratch, and a lost or
locked catalog never loses data. Writes are short transactions retried on DuckDB's cross-process file
lock, because several Dagster step processes may register artifacts at once.

Tables:
* ``artifacts``: one row per stored artifact (kind, version, type, pipeline, stage, partition, path,
  data_version, created_at, wall_time_s, flops, tokens, metrics JSON, config JSON).
* ``lineage``: artifact version -> input artifact version, with the config field that referenced it.
* ``stage_runs``: which (pipeline, stage, partition) recorded which version when (a cache hit in another
  pipeline records a row too).
Views (over Parquet, nothing copied):
* ``a_<version>_<file>`` for every Parquet file of every artifact,
* ``<pipeline>__<stage>__<file>``: the latest version recorded for that stage,
* ``all_<file>``: every version of that file name unioned by name, with ``artifact_version`` first.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from .store import ArtifactStore, StoredArtifact

SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
  version VARCHAR PRIMARY KEY, kind VARCHAR, produces VARCHAR, pipeline VARCHAR, stage VARCHAR,
  partition VARCHAR, path VARCHAR, data_version VARCHAR, created_at VARCHAR, wall_time_s DOUBLE,
  flops DOUBLE, tokens BIGINT, metrics JSON, config JSON);
CREATE TABLE IF NOT EXISTS lineage (version VARCHAR, input_version VARCHAR, field VARCHAR, input_stage VARCHAR);
CREATE TABLE IF NOT EXISTS stage_runs (pipeline VARCHAR, stage VARCHAR, partition VARCHAR, version VARCHAR,
  recorded_at VARCHAR, cache_hit BOOLEAN);
"""


def _ident(s: str) -> str:
    return re.sub(r"[^0-9a-zA-Z_]", "_", s)


class Catalog:
    def __init__(self, home: Path | str):
        self.home = Path(home)
        self.path = self.home / "catalog.duckdb"

    def _connect(self, read_only: bool = False):
        import duckdb

        self.home.mkdir(parents=True, exist_ok=True)
        delay = 0.05
        for attempt in range(60):
            try:
                if read_only and self.path.exists():
                    return duckdb.connect(str(self.path), read_only=True)
                con = duckdb.connect(str(self.path))
                con.execute(SCHEMA)
                return con
            except duckdb.IOException as e:  # another process holds the file lock
                if "lock" not in str(e).lower() or attempt == 59:
                    raise
                time.sleep(delay)
                delay = min(delay * 1.5, 1.0)
        raise RuntimeError("unreachable")

    # ---------------------------------------------------------------------------------------------
    def register(
        self,
        art: StoredArtifact,
        *,
        pipeline: str | None = None,
        stage: str | None = None,
        partition: str | None = None,
        cache_hit: bool = False,
    ) -> None:
        m = art.manifest
        con = self._connect()
        try:
            con.execute("BEGIN")
            con.execute("DELETE FROM artifacts WHERE version = ?", [art.version])
            con.execute(
                "INSERT INTO artifacts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    art.version,
                    art.kind,
                    m.get("produces"),
                    m.get("pipeline"),
                    m.get("stage"),
                    m.get("partition"),
                    str(art.path),
                    m.get("data_version"),
                    m.get("created_at"),
                    m.get("wall_time_s"),
                    m.get("flops"),
                    m.get("tokens"),
                    json.dumps(m.get("metrics", {}), default=str),
                    json.dumps(m.get("config", {}), default=str),
                ],
            )
            con.execute("DELETE FROM lineage WHERE version = ?", [art.version])
            for fld, ins in (m.get("inputs") or {}).items():
                for i in ins:
                    con.execute(
                        "INSERT INTO lineage VALUES (?,?,?,?)",
                        [art.version, i["version"], fld, i.get("stage")],
                    )
            con.execute(
                "INSERT INTO stage_runs VALUES (?,?,?,?,?,?)",
                [
                    pipeline or m.get("pipeline"),
                    stage or m.get("stage"),
                    partition or m.get("partition"),
                    art.version,
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    cache_hit,
                ],
            )
            self._views_for(
                con,
                art,
                pipeline or m.get("pipeline"),
                stage or m.get("stage"),
                partition or m.get("partition"),
            )
            con.execute("COMMIT")
        finally:
            con.close()

    def _views_for(
        self, con, art: StoredArtifact, pipeline: str | None, stage: str | None, partition: str | None
    ) -> None:
        fnames = []
        for pq in sorted(art.path.rglob("*.parquet")):
            rel = pq.relative_to(art.path).with_suffix("").as_posix()
            fname = _ident(rel)
            fnames.append(fname)
            src = f"read_parquet('{pq.as_posix()}')"
            con.execute(f'CREATE OR REPLACE VIEW "a_{art.version}_{fname}" AS SELECT * FROM {src}')
            if pipeline and stage:
                suffix = f"__{_ident(partition)}" if partition else ""
                con.execute(
                    f'CREATE OR REPLACE VIEW "{_ident(pipeline)}__{_ident(stage)}{suffix}__{fname}" '
                    f"AS SELECT * FROM {src}"
                )
        if fnames:
            self._union_views(con, set(fnames))

    def _union_views(self, con, fnames: set[str]) -> None:
        """Recreate ``all_<file>`` for each file name in ``fnames`` (one scan of the stored artifacts)."""
        parts: dict[str, list[str]] = {f: [] for f in fnames}
        rows = con.execute("SELECT version, path FROM artifacts ORDER BY created_at").fetchall()
        for version, path in rows:
            for pq in sorted(Path(path).rglob("*.parquet")):
                f = _ident(pq.relative_to(path).with_suffix("").as_posix())
                if f in parts:
                    parts[f].append(
                        f"SELECT '{version}' AS artifact_version, * FROM read_parquet('{pq.as_posix()}')"
                    )
        for f, ps in parts.items():
            if ps:
                con.execute(f'CREATE OR REPLACE VIEW "all_{f}" AS ' + " UNION ALL BY NAME ".join(ps))

    def rebuild(self, store: ArtifactStore) -> int:
        """Drop and recreate everything from the manifests in the store. Returns the artifact count."""
        if self.path.exists():
            self.path.unlink()
        wal = self.path.with_suffix(".duckdb.wal")
        if wal.exists():
            wal.unlink()
        n = 0
        for art in store.all():
            self.register(art)
            n += 1
        return n

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        con = self._connect(read_only=True) if self.path.exists() else self._connect()
        try:
            cur = con.execute(sql)
            cols = [d[0] for d in cur.description] if cur.description else []
            return cols, cur.fetchall()
        finally:
            con.close()
