"""DuckDB catalog over the artifact store: ``$LMFORGE_HOME/catalog.duckdb``.

Key design choice: the catalog is an *index*, never the system of record. Every row is derived from a
``manifest.json`` in the store, so :meth:`Catalog.rebuild` recreates it from scratch (with the run history
of the Dagster instance, when there is one, so per-stage views point where they pointed), and a lost or
locked catalog never loses data. A missing or unreadable catalog is rebuilt before a query
(:meth:`Catalog.ensure`), never answered with 0 rows, and an artifact no longer stored (moved aside as
damaged) is removed from it (:meth:`Catalog.forget`), never answered with a missing file. Writes are short
transactions retried on DuckDB's cross-process file lock, because several Dagster step processes may
register artifacts at once; every write also holds ``catalog.lock``, so a rebuild (which deletes the file)
never runs beside a registration.

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

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .manifest import MANIFEST
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

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the catalog's write lock (``catalog.lock``, across processes): a rebuild deletes and recreates
        the file, so a registration beside it would land in the deleted file and be lost."""
        self.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.home / "catalog.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

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
        pipeline, stage, partition = pipeline or m.get("pipeline"), stage or m.get("stage"), partition or m.get("partition")
        with self._writing():
            self._register(art, pipeline, stage, partition, cache_hit)

    def _register(self, art: StoredArtifact, pipeline: str | None, stage: str | None, partition: str | None,
                  cache_hit: bool) -> None:
        con = self._connect()
        try:
            con.execute("BEGIN")
            self._insert_artifact(con, art)
            con.execute(
                "INSERT INTO stage_runs VALUES (?,?,?,?,?,?)",
                [pipeline, stage, partition, art.version, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 cache_hit],
            )
            self._views_for(con, art, pipeline, stage, partition)
            con.execute("COMMIT")
        finally:
            con.close()

    @staticmethod
    def _insert_artifact(con, art: StoredArtifact) -> None:
        m = art.manifest
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

    def _views_for(
        self,
        con,
        art: StoredArtifact,
        pipeline: str | None,
        stage: str | None,
        partition: str | None,
        union: bool = True,
    ) -> set[str]:
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
        if fnames and union:
            self._union_views(con, set(fnames))
        return set(fnames)

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

    def rebuild(self, store: ArtifactStore, history: list[dict[str, Any]] | None = None) -> int:
        """Drop and recreate everything from the manifests in the store. Returns the artifact count.

        ``stage_runs`` comes from ``history`` (rows of :func:`stage_history`, oldest first: what each
        pipeline stage recorded when, cache hits included) where given, completed by one row per artifact
        its history lacks (at the manifest's ``created_at``). Each per-stage view then points at the
        latest recorded version of its stage, as :meth:`register` left it.
        """
        with self._writing():
            for p in (self.path, self.path.with_suffix(".duckdb.wal")):
                if p.exists():
                    p.unlink()
            arts = sorted(store.all(), key=lambda a: (a.manifest.get("created_at") or "", a.version))
            by_version = {a.version: a for a in arts}
            rows = [r for r in history or [] if r["version"] in by_version]
            seen = {(r["pipeline"], r["stage"], r["partition"], r["version"]) for r in rows}
            for a in arts:
                m = a.manifest
                key = (m.get("pipeline"), m.get("stage"), m.get("partition"), a.version)
                if key not in seen:
                    rows.append(dict(zip(("pipeline", "stage", "partition", "version"), key),
                                     recorded_at=m.get("created_at") or "", cache_hit=False))
            # stable: rows recorded in the same second keep their history order
            rows.sort(key=lambda r: r["recorded_at"] or "")
            latest: dict[tuple, str] = {}
            for r in rows:
                if r["pipeline"] and r["stage"]:
                    latest[(r["pipeline"], r["stage"], r["partition"])] = r["version"]
            con = self._connect()
            try:
                con.execute("BEGIN")
                fnames: set[str] = set()
                for a in arts:
                    self._insert_artifact(con, a)
                    fnames |= self._views_for(con, a, None, None, None, union=False)
                for r in rows:
                    con.execute(
                        "INSERT INTO stage_runs VALUES (?,?,?,?,?,?)",
                        [r["pipeline"], r["stage"], r["partition"], r["version"], r["recorded_at"], r["cache_hit"]],
                    )
                for (pipeline, stage, partition), version in latest.items():
                    self._views_for(con, by_version[version], pipeline, stage, partition, union=False)
                if fnames:
                    self._union_views(con, fnames)
                con.execute("COMMIT")
            finally:
                con.close()
            return len(arts)

    def forget(self, versions: set[str], store: ArtifactStore) -> int:
        """Remove artifacts that are no longer stored (moved aside as damaged, or deleted): their rows and
        recorded runs, as :meth:`rebuild` would leave them, and every view that read their files. The union
        views are recreated from what remains, and a per-stage view that showed one of them then shows
        the latest recorded version of its stage that is still stored, if any. Returns how many it removed.
        """
        with self._writing():
            if not versions or not self.path.exists():
                return 0
            con = self._connect()
            try:
                con.execute("BEGIN")
                marks = ",".join("?" * len(versions))
                listed = f"SELECT version, path FROM artifacts WHERE version IN ({marks})"
                gone = dict(con.execute(listed, sorted(versions)).fetchall())
                if not gone:
                    con.execute("ROLLBACK")
                    return 0
                marks = ",".join("?" * len(gone))
                latest = (
                    "SELECT pipeline, stage, partition, version FROM (SELECT *, row_number() OVER (PARTITION BY "
                    "pipeline, stage, partition ORDER BY recorded_at DESC, rowid DESC) AS n FROM stage_runs) "
                    "WHERE n = 1 AND pipeline IS NOT NULL AND stage IS NOT NULL"
                )
                shown = [r[:3] for r in con.execute(latest).fetchall() if r[3] in gone]
                for table in ("artifacts", "lineage", "stage_runs"):
                    con.execute(f"DELETE FROM {table} WHERE version IN ({marks})", list(gone))
                unions = set()
                views = con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal").fetchall()
                for name, sql in views:
                    if any(f"{path}/" in sql for path in gone.values()):
                        con.execute(f'DROP VIEW "{name}"')
                        if name.startswith("all_"):
                            unions.add(name[len("all_"):])
                fallback = {r[:3]: r[3] for r in con.execute(latest).fetchall()}
                for key in shown:
                    v = fallback.get(key)
                    row = v and con.execute("SELECT kind FROM artifacts WHERE version = ?", [v]).fetchone()
                    art = store.get(row[0], v) if row else None
                    if art is not None:
                        self._views_for(con, art, *key, union=False)
                self._union_views(con, unions)
                con.execute("COMMIT")
            finally:
                con.close()
            return len(gone)

    def unlisted(self) -> set[str]:
        """Versions the catalog lists whose directory no longer holds a manifest (one ``stat`` each)."""
        con = self._connect(read_only=True)
        try:
            rows = con.execute("SELECT version, path FROM artifacts").fetchall()
        finally:
            con.close()
        return {v for v, path in rows if not (Path(path) / MANIFEST).is_file()}

    def check(self) -> str | None:
        """None if the catalog can be read; else why not ("missing", "unreadable: ...")."""
        import duckdb

        if not self.path.exists():
            return "missing"
        try:
            con = self._connect(read_only=True)
        except duckdb.Error as e:
            return f"unreadable: {str(e).splitlines()[0]}"
        try:
            con.execute("SELECT count(*) FROM artifacts").fetchall()
        except duckdb.Error as e:
            return f"unreadable: {str(e).splitlines()[0]}"
        finally:
            con.close()
        return None

    def ensure(self, store: ArtifactStore | None = None) -> str | None:
        """Rebuild a missing or unreadable catalog (an unreadable file is kept beside it for inspection),
        with the run history of the Dagster instance under ``$LMFORGE_HOME/dagster`` when there is one;
        :meth:`forget` the artifacts it lists that are no longer stored. Returns what was repaired, or None
        when the catalog was fine."""
        problem = self.check()
        if problem is None:
            stale = self.unlisted()
            if not stale:
                return None
            n = self.forget(stale, store or ArtifactStore(self.home))
            return f"the catalog {self.path} listed {n} artifacts no longer stored; removed them"
        note = f"the catalog {self.path} was {problem}"
        if self.path.exists():
            aside = self.path.with_name(f"{self.path.name}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}")
            self.path.rename(aside)
            note += f" (moved to {aside.name})"
        n = self.rebuild(store or ArtifactStore(self.home), history=stage_history(self.home / "dagster"))
        return note + f"; rebuilt it from {n} stored manifests"

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run ``sql``; call :meth:`ensure` first so that a lost catalog never answers with 0 rows."""
        con = self._connect(read_only=True) if self.path.exists() else self._connect()
        try:
            cur = con.execute(sql)
            cols = [d[0] for d in cur.description] if cur.description else []
            return cols, cur.fetchall()
        finally:
            con.close()


def stage_history(dagster_home: Path) -> list[dict[str, Any]] | None:
    """What each pipeline stage recorded when (cache hits included), oldest first, from the stage
    materializations in the Dagster instance at ``dagster_home``; None without an instance."""
    if not (dagster_home / "dagster.yaml").exists():
        return None
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(dagster_home))
    rows: list[tuple[int, dict[str, Any]]] = []
    for key in instance.get_asset_keys():
        if len(key.path) != 2:
            continue
        cursor = None
        while True:
            res = instance.fetch_materializations(key, limit=1000, cursor=cursor, ascending=True)
            for rec in res.records:
                md = rec.asset_materialization.metadata if rec.asset_materialization else {}
                version = md.get("lmforge/version")
                if version is None:
                    continue
                hit = md.get("lmforge/cache_hit")
                rows.append((rec.storage_id, {
                    "pipeline": key.path[0],
                    "stage": key.path[1],
                    "partition": rec.partition_key,
                    "version": version.value,
                    "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rec.timestamp)),
                    "cache_hit": bool(hit.value) if hit is not None else False,
                }))
            if not res.has_more:
                break
            cursor = res.cursor
    return [r for _, r in sorted(rows, key=lambda t: t[0])]
