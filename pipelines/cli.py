"""``lmforge``: the few things the Dagster UI does not do well in a terminal.

Key design choice: the CLI is thin. ``validate`` and ``plan`` only compile the spec; ``materialize`` runs
the spec's assets *through Dagster* on the same instance as ``make ui`` (``$LMFORGE_HOME/dagster``), so
every CLI run, its metadata and lineage show up in the UI; ``report`` prints the stored report artifact;
``sql`` queries the DuckDB catalog; ``runs`` lists recent runs with the failed stage and its message.
Run bookkeeping (dead runs, pool slots, failure summaries) lives in ``pipelines/runs.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path


def _home(args) -> Path:
    from resources.store import default_home

    return Path(args.home).expanduser().resolve() if getattr(args, "home", None) else default_home()


def ensure_dagster_home(home: Path) -> Path:
    """``$LMFORGE_HOME/dagster`` with lmforge's ``dagster.yaml`` for this environment (Postgres storage,
    pool and queue limits: :mod:`pipelines.instance`); returns it and sets ``DAGSTER_HOME``."""
    from .instance import write_instance_config

    dh = home / "dagster"
    write_instance_config(dh)
    os.environ["DAGSTER_HOME"] = str(dh)
    return dh


def cmd_validate(args) -> int:
    from .spec import SpecError, load_spec

    rc = 0
    for s in args.specs:
        try:
            spec = load_spec(s)
            print(f"ok  {spec.path}: pipeline '{spec.name}', {len(spec.stages)} stages")
        except SpecError as e:
            rc = 1
            for issue in e.issues:
                print(f"error  {issue}", file=sys.stderr)
    return rc


def cmd_plan(args) -> int:
    from resources.store import ArtifactStore

    from .spec import load_spec

    spec = load_spec(args.spec)
    store = ArtifactStore(_home(args))
    from .spec import plan

    rows = plan(spec, store)
    w = max(len(r["stage"] + (f"[{r['partition']}]" if r["partition"] else "")) for r in rows)
    for r in rows:
        name = r["stage"] + (f"[{r['partition']}]" if r["partition"] else "")
        print(f"{name:<{w}}  {r['kind']:<17} {r['version']}  {r['status']}")
    return 0


def open_instance(home: Path):
    """The Dagster instance under ``home``, its storages created under a lock: two runs creating sqlite
    storages at once leave a schema with two migration heads that no later run can open. A Postgres
    storage (``LMFORGE_POSTGRES_URL``) is checked first; the ``gpu`` pool gets its configured slots."""
    import dagster as dg

    from resources.store import file_lock

    from .instance import apply_pool_limits, check_postgres

    check_postgres()  # an unreachable database fails here, in bounded time, before anything is stored
    lock = home / "locks" / "dagster-instance.lock"
    with file_lock(lock, holder="lmforge materialize", what="the Dagster instance"):
        ensure_dagster_home(home)
        instance = dg.DagsterInstance.get()
        apply_pool_limits(instance)
        instance.get_runs(limit=1)
        instance.fetch_materializations(dg.AssetKey(["lmforge"]), limit=1)
        instance.all_instigator_state()
    return instance


def run_batches(spec, selected: list[str]) -> list[tuple[list[str], str | None]]:
    """Split a selection into Dagster runs: unpartitioned stages run together; each partition of a
    partitioned stage runs on its own (Dagster runs target one partition key)."""
    batches: list[tuple[list[str], str | None]] = []
    current: list[str] = []
    for s in selected:
        st = spec.stages[s]
        if st.partitions is None:
            # `selected` is topological, so stages after a partitioned one land in a later batch
            current.append(s)
            continue
        if current:
            batches.append((current, None))
            current = []
        for p in st.partitions:
            batches.append(([s], p))
    if current:
        batches.append((current, None))
    return batches


def materialize(spec_path: str | Path, stages: str | None, home: Path, *, quiet: bool = False) -> bool:
    """Materialize (a selection of) a spec through Dagster on the instance under ``home``.

    Runs whose process is gone are failed and their pool slots freed first; while a run waits for a pool
    slot the terminal says which run holds it; a failure ends with the stage, its cause and the code
    that raised it, the full trace going to ``$LMFORGE_HOME/logs/<run_id>.log``.
    """
    os.environ["LMFORGE_HOME"] = str(home)
    import dagster as dg

    from pipelines.factory import STAGE_FAILURES, build_spec_definitions
    from resources.lmforge import LmforgeResource
    from resources.store import ArtifactStore

    from . import runs
    from .spec import load_spec, select_stages

    try:
        instance = open_instance(home)
        for run_id, why in runs.reap_dead_runs(instance):
            print(f"run {run_id}: {why}; marked failed, its pool slots freed", file=sys.stderr, flush=True)
    except Exception as e:
        if runs.storage_hint(e, home, home / "dagster") is None:
            raise
        _report_instance_error(e, home, [])  # e.g. a full disk: sqlite says only "disk I/O error"
        return False
    spec = load_spec(spec_path)
    selected = select_stages(spec, stages)
    store = ArtifactStore(home)
    swept = store.sweep()  # temporary directories of writers that died (their version lock is free)
    if swept and not quiet:
        print(f"removed {swept} temporary director{'y' if swept == 1 else 'ies'} of dead runs", flush=True)
    defs = build_spec_definitions(spec)
    assets = list(defs.assets or [])
    ok = True
    t_all = time.time()
    for batch, partition in run_batches(spec, selected):
        keys = [dg.AssetKey([spec.name, s]) for s in batch]
        label = ", ".join(batch) + (f" [partition {partition}]" if partition else "")
        if not quiet:
            print(f"==> {spec.name}: {label}", flush=True)
        t0 = time.time()
        invocation = uuid.uuid4().hex
        tags = {"lmforge/cli": "materialize", runs.SPEC_TAG: str(spec.path), runs.INVOCATION_TAG: invocation,
                runs.STAGES_TAG: f"{spec.name}: {label}", **runs.process_tags()}
        STAGE_FAILURES.clear()
        watcher = runs.SlotWaitWatcher(invocation)
        watcher.start()
        try:
            res = dg.materialize(assets, selection=keys, instance=instance, partition_key=partition,
                                 resources={"lmforge": LmforgeResource(home=str(home))},
                                 run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
                                 raise_on_error=False, tags=tags)
        except Exception as e:  # the instance itself failed to record the run (e.g. a full disk)
            watcher.stop()
            _report_instance_error(e, home, STAGE_FAILURES)
            return False
        watcher.stop()
        if not res.success:
            ok = False
            if not quiet:
                print(f"FAILED in {time.time() - t_all:.1f}s; Dagster instance: {os.environ['DAGSTER_HOME']}",
                      flush=True)
            _report_failure(instance, res.run_id, home, STAGE_FAILURES)
            return False
        if not quiet:
            print(f"    done in {time.time() - t0:.1f}s (run {res.run_id})", flush=True)
    if not quiet:
        print(f"finished in {time.time() - t_all:.1f}s; Dagster instance: {os.environ['DAGSTER_HOME']}",
              flush=True)
    return ok


def _report_failure(instance, run_id: str, home: Path, in_process: list) -> None:
    """The last lines of a failed materialize: where the full log is, then each failed stage's cause."""
    from . import runs

    fails = runs.run_failures(instance, run_id)
    if not any(f.stage != "(run)" for f in fails) and in_process:
        fails = [runs.failure_from_exception(label, e) for label, e in in_process]
    log = runs.write_run_log(instance, run_id, home)
    where = f"{log} and " if log else ""
    print(f"full log with traces: {where}the Dagster UI (run {run_id})", file=sys.stderr)
    for f in fails:
        for line in f.lines():
            print(line, file=sys.stderr)
        hint = None if "No space left on device" in f.cause else runs.storage_hint(None, home)
        if hint:
            print(f"    {hint}", file=sys.stderr)
    sys.stderr.flush()


def _report_instance_error(exc: BaseException, home: Path, in_process: list) -> None:
    """Dagster could not record the run (its storage failed): name the stage and cause from what this
    process saw, and the storage problem (a full disk, named as such)."""
    import traceback

    from . import runs

    fails = [runs.failure_from_exception(label, e) for label, e in in_process]
    hint = runs.storage_hint(exc, home, home / "dagster")
    for _, e in in_process:
        hint = hint or runs.storage_hint(e)
    trace = "".join(traceback.format_exception(exc)) + "".join(f.trace for f in fails)
    log = home / "logs" / f"materialize-{time.strftime('%Y%m%dT%H%M%S')}.log"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(trace)
        print(f"full log with traces: {log}", file=sys.stderr)
    except OSError:
        print(trace, file=sys.stderr)  # nowhere to write it: the trace goes to the terminal
    first = (str(exc).strip().splitlines() or [""])[0]
    print(f"the Dagster instance failed: {type(exc).__name__}: {first[:300]}", file=sys.stderr)
    for f in fails:
        for line in f.lines():
            print(line, file=sys.stderr)
    if hint:
        print(hint, file=sys.stderr)
    sys.stderr.flush()


def cmd_materialize(args) -> int:
    home = _home(args)
    ok = materialize(args.spec, args.stages, home)
    if ok:
        from resources.store import ArtifactStore

        from .spec import load_spec

        spec = load_spec(args.spec)
        rep = [s for s in spec.stages.values() if s.kind.produces == "report"]
        for s in rep:
            art = ArtifactStore(home).get(s.kind.name, s.version)
            if art:
                print(f"report: {art.path / 'report.md'}")
    return 0 if ok else 1


def cmd_report(args) -> int:
    from resources.store import ArtifactStore

    from .spec import load_spec

    spec = load_spec(args.spec)
    store = ArtifactStore(_home(args))
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
    from resources.catalog import Catalog

    cat = Catalog(_home(args))
    repaired = cat.ensure()
    if repaired:
        print(repaired, file=sys.stderr)
    cols, rows = cat.query(args.query)
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

    home = _home(args)
    history = stage_history(home / "dagster")
    n = Catalog(home).rebuild(ArtifactStore(home), history=history)
    src = f"and {len(history)} recorded stage runs of the Dagster instance" if history else "(no run history)"
    print(f"catalog rebuilt from {n} manifests {src}: {home / 'catalog.duckdb'}")
    return 0


def cmd_verify(args) -> int:
    """Hash every stored file against its manifest (all artifacts, or the versions a spec uses); a
    damaged artifact is moved aside (the next materialize recomputes it). Exit 1 if any was damaged."""
    from resources.store import ArtifactStore

    from .spec import load_spec

    store = ArtifactStore(_home(args))
    if args.spec:
        spec = load_spec(args.spec)
        targets = []
        for s in spec.stages.values():
            keyed = s.partition_versions.items() if s.partitions is not None else [(None, s.version)]
            targets += [(s.kind.name, v, s.name + (f"[{p}]" if p else "")) for p, v in keyed]
    else:
        targets = [(k, v, "") for k, v in store.versions()]
    counts = {"ok": 0, "legacy": 0, "damaged": 0, "failed": 0, "absent": 0}
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
            aside = store.quarantine(kind, version, "; ".join(problems))
            print(f"DAMAGED  {name}: {'; '.join(problems)}")
            print(f"         moved aside to {aside}; the next materialize recomputes it")
    print(", ".join(f"{n} {k}" for k, n in counts.items() if n or k == "ok"))
    return 1 if counts["damaged"] else 0


def cmd_runs(args) -> int:
    """Recent runs on the instance, newest first; runs whose process is gone are failed first."""
    home = _home(args)
    from . import runs

    instance = open_instance(home)
    for run_id, why in runs.reap_dead_runs(instance):
        print(f"run {run_id}: {why}; marked failed, its pool slots freed", file=sys.stderr)
    rows = runs.recent_runs(instance, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print(f"no runs on the instance {home / 'dagster'}")
        return 0
    for r in rows:
        print(f"{r['run_id'][:8]}  {r['status']:<8} {r['started']}  {r['what']}")
        if r["failed_stage"] == "(run)":
            print(f"          {r['message']}")
        elif r["failed_stage"]:
            print(f"          failed stage {r['failed_stage']}: {r['message']}")
    print(f"(full run ids with --json; a failed run's full log: {home / 'logs'}/<run_id>.log)")
    return 0


def cmd_kinds(args) -> int:
    """Print every stage kind with its fields (the spec language's reference, generated from the code)."""
    import typing

    from pydantic import BaseModel

    from assets.registry import load_kinds, ref_fields

    kinds = load_kinds()
    for name in sorted(kinds):
        if args.kind and name not in args.kind:
            continue
        k = kinds[name]
        refs = ref_fields(k.config)
        print(f"{name}  -> {k.produces}{'  [pool: ' + k.pool + ']' if k.pool else ''}\n    {k.description}")
        for fname, f in k.config.model_fields.items():
            key = f.alias or fname
            if fname in refs:
                typ = f"ref({'|'.join(refs[fname][0])}{', many' if refs[fname][1] else ''})"
            else:
                typ = getattr(f.annotation, "__name__", str(f.annotation)).replace("typing.", "")
                # a nested settings block (e.g. distill's prune): show its keys, not the class path
                sub = [a for a in typing.get_args(f.annotation) or (f.annotation,) if isinstance(a, type)]
                sub = [a for a in sub if issubclass(a, BaseModel)]
                if sub:
                    typ = "{" + ", ".join(sub[0].model_fields) + "}"
            default = "required" if f.is_required() else f"default {f.get_default(call_default_factory=True)!r}"
            print(f"    {key:<22} {typ:<28} {default}: {f.description or ''}")
        for c in k.checks:
            print(f"    check {c.name}{' (blocking)' if c.blocking else ''}: {c.description}")
        print()
    return 0


def cmd_code(args) -> int:
    """Print each kind's code version; with kind names, also the modules (or definitions) it covers."""
    from assets.registry import load_kinds

    kinds = load_kinds()
    unknown = [k for k in args.kind if k not in kinds]
    if unknown:
        print(f"error  unknown stage kind(s): {', '.join(unknown)} (see lmforge kinds)", file=sys.stderr)
        return 1
    for name in args.kind or sorted(kinds):
        code = kinds[name].code()
        print(f"{name:<18} code {code.version}  ({len(code.modules)} modules)")
        if not args.kind:
            continue
        for m in code.modules:
            what = "whole module" if m.symbols is None else "only: " + ", ".join(m.symbols)
            print(f"    {m.hash}  {m.path:<30} {what}")
        print()
    return 0


def cmd_ui(args) -> int:
    """``dagster dev`` on 127.0.0.1 over the same instance the CLI writes to."""
    import subprocess

    from .instance import check_postgres

    home = _home(args)
    os.environ["LMFORGE_HOME"] = str(home)
    check_postgres()
    dh = ensure_dagster_home(home)
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "dagster", "dev", "-m", "pipelines.definitions", "-h", args.host,
           "-p", str(args.port)]
    print(f"Dagster UI: http://{args.host}:{args.port}  (DAGSTER_HOME={dh}, LMFORGE_HOME={home})", flush=True)
    return subprocess.call(cmd, cwd=root)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    p = argparse.ArgumentParser(prog="lmforge", description=__doc__.split("\n")[0])
    p.add_argument("--home", help="LMFORGE_HOME (default: $LMFORGE_HOME or ~/.lmforge)")
    p.add_argument("--postgres", metavar="URL", help="Dagster run, event-log and schedule storage in Postgres "
                   "(sets LMFORGE_POSTGRES_URL; default: SQLite under $LMFORGE_HOME/dagster)")
    p.add_argument("--gpu-slots", type=int, metavar="N", help="slots of the gpu pool: training stages that "
                   "may run at once (sets LMFORGE_GPU_SLOTS; default 1)")
    p.add_argument("--max-concurrent-runs", type=int, metavar="N", help="runs the daemon's queue starts at "
                   "once (sets LMFORGE_MAX_CONCURRENT_RUNS; default 2)")
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check specs; exit 0 or print every error")
    v.add_argument("specs", nargs="+")
    v.set_defaults(fn=cmd_validate)
    pl = sub.add_parser("plan", help="one line per stage: name, kind, version, stored or to compute")
    pl.add_argument("spec")
    pl.set_defaults(fn=cmd_plan)
    m = sub.add_parser("materialize", help="materialize a spec (or --stages a,b+) through Dagster")
    m.add_argument("spec")
    m.add_argument("--stages", help="comma list; 'x+' adds descendants, '+x' adds ancestors")
    m.set_defaults(fn=cmd_materialize)
    r = sub.add_parser("report", help="print the stored report card of a spec")
    r.add_argument("spec")
    r.add_argument("--json", action="store_true")
    r.set_defaults(fn=cmd_report)
    q = sub.add_parser("sql", help="query the DuckDB catalog")
    q.add_argument("query")
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_sql)
    c = sub.add_parser("catalog", help="rebuild the DuckDB catalog from the stored manifests")
    c.add_argument("action", choices=["rebuild"])
    c.set_defaults(fn=cmd_catalog)
    ve = sub.add_parser("verify", help="check stored artifacts' file hashes (all, or a spec's); "
                        "damaged ones are moved aside and recomputed by the next materialize")
    ve.add_argument("spec", nargs="?")
    ve.set_defaults(fn=cmd_verify)
    rn = sub.add_parser("runs", help="recent runs: id, status, start time, the failed stage and its message")
    rn.add_argument("--limit", type=int, default=20)
    rn.add_argument("--json", action="store_true")
    rn.set_defaults(fn=cmd_runs)
    k = sub.add_parser("kinds", help="list stage kinds and their fields")
    k.add_argument("kind", nargs="*")
    k.set_defaults(fn=cmd_kinds)
    cv = sub.add_parser("code", help="the code each kind's version covers: modules and their hashes")
    cv.add_argument("kind", nargs="*")
    cv.set_defaults(fn=cmd_code)
    u = sub.add_parser("ui", help="start the Dagster UI (dagster dev) on the lmforge instance")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=3000)
    u.set_defaults(fn=cmd_ui)
    args = p.parse_args(argv)
    from .instance import GPU_SLOTS_ENV, MAX_RUNS_ENV, POSTGRES_ENV, InstanceConfigError
    from .spec import SpecError

    if args.home:  # every command, validate and plan included, reads and writes this home (e.g. hash caches)
        os.environ["LMFORGE_HOME"] = str(_home(args))
    for value, env in ((args.postgres, POSTGRES_ENV), (args.gpu_slots, GPU_SLOTS_ENV),
                       (args.max_concurrent_runs, MAX_RUNS_ENV)):
        if value is not None:
            os.environ[env] = str(value)
    try:
        return int(args.fn(args) or 0)
    except SpecError as e:
        for issue in e.issues:
            print(f"error  {issue}", file=sys.stderr)
        return 1
    except InstanceConfigError as e:
        print(f"error  {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
