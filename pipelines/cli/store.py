"""``lmforge report``, ``sql``, ``catalog`` and ``verify``: reading what is stored, and checking it.

Key design choice: these commands start no run: they read the artifact store and the DuckDB catalog
(``catalog rebuild`` also reads the stage history the Dagster instance recorded). ``verify`` takes each
version's lock before hashing its files, so it never judges an artifact that a run is writing, and a
damaged one is moved aside (the next materialize recomputes it), never deleted, and leaves the catalog.
"""

from __future__ import annotations

import json
import sys

from .home import home_of


def cmd_report(args) -> int:
    from resources.store import ArtifactStore

    from ..spec import load_spec

    spec = load_spec(args.spec)
    store = ArtifactStore(home_of(args))
    reports = [s for s in spec.stages.values() if s.kind.produces == "report"]
    if not reports:
        print(f"{spec.path}: no stage of kind report", file=sys.stderr)
        return 2
    rc = 0
    for s in reports:
        art = store.get(s.kind.name, s.version)
        if art is None:
            print(f"report stage '{s.name}' (version {s.version}) is not materialized; run "
                  f"`lmforge materialize {args.spec}` first", file=sys.stderr)
            rc = 1
            continue
        if args.json:
            print((art.path / "report.json").read_text())
        else:
            print((art.path / "report.md").read_text())
    return rc


def cmd_sql(args) -> int:
    import duckdb

    from resources.catalog import Catalog

    cat = Catalog(home_of(args))
    repaired = cat.ensure()
    if repaired:
        print(repaired, file=sys.stderr)
    try:
        cols, rows = cat.query(args.query)
    except duckdb.Error as e:  # the query's own mistake (a typo, a view of an artifact no longer stored)
        print(f"error  {cat.path}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([dict(zip(cols, r)) for r in rows], default=str, indent=1))
        return 0
    widths = [max([len(str(c))] + [len(str(r[i])[:60]) for r in rows]) for i, c in enumerate(cols)]
    print("  ".join(str(c).ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(str(v)[:60].ljust(w) for v, w in zip(r, widths)))
    return 0


def cmd_catalog(args) -> int:
    from resources.catalog import Catalog, stage_history
    from resources.store import ArtifactStore

    home = home_of(args)
    history = stage_history(home / "dagster")
    n = Catalog(home).rebuild(ArtifactStore(home), history=history)
    src = f"and {len(history)} recorded stage runs of the Dagster instance" if history else "(no run history)"
    print(f"catalog rebuilt from {n} manifests {src}: {home / 'catalog.duckdb'}")
    return 0


def cmd_verify(args) -> int:
    """Hash every stored file against its manifest (all artifacts, or the versions a spec uses); a
    damaged artifact is moved aside (the next materialize recomputes it). Exit 1 if any was damaged."""
    from resources.catalog import Catalog
    from resources.store import ArtifactStore

    from ..spec import load_spec

    store = ArtifactStore(home_of(args))
    if args.spec:
        spec = load_spec(args.spec)
        targets = []
        for s in spec.stages.values():
            keyed = s.partition_versions.items() if s.partitions is not None else [(None, s.version)]
            targets += [(s.kind.name, v, s.name + (f"[{p}]" if p else "")) for p, v in keyed]
    else:
        targets = [(k, v, "") for k, v in store.versions()]
    counts = {"ok": 0, "legacy": 0, "damaged": 0, "failed": 0, "absent": 0}
    aside: set[str] = set()
    for kind, version, label in targets:
        name = f"{label + '  ' if label else ''}{kind}/{version}"
        with store.lock(kind, version, holder="lmforge verify", log=print):
            state = store.state(kind, version)
            if state.status == "absent":
                counts["absent"] += 1
                print(f"absent   {name}: not stored")
                continue
            if state.status == "failed":
                counts["failed"] += 1
                print(f"failed   {name}: {state.message} (kept for inspection at {state.path}; not a result)")
                continue
            if state.legacy:
                counts["legacy"] += 1
                print(f"legacy   {name}: stored without a file list; checked by manifest presence only")
                continue
            problems = [state.message] if state.status == "damaged" else store.verify(kind, version)
            if not problems:
                counts["ok"] += 1
                art = store.unchecked(kind, version)
                print(f"ok       {name} ({len(art.manifest['files']) if art else 0} files, SHA-256 match)")
                continue
            counts["damaged"] += 1
            moved = store.quarantine(kind, version, "; ".join(problems))
            aside.add(version)
            print(f"DAMAGED  {name}: {'; '.join(problems)}")
            print(f"         moved aside to {moved}; the next materialize recomputes it")
    print(", ".join(f"{n} {k}" for k, n in counts.items() if n or k == "ok"))
    if aside:
        n = Catalog(store.home).forget(aside, store)
        if n:
            print(f"the catalog no longer lists the {n} artifacts moved aside")
    return 1 if counts["damaged"] else 0
