"""``lmforge materialize``, ``runs`` and ``ui``: running a spec through Dagster on the lmforge instance.

Key design choice: ``materialize`` runs the spec's assets *through Dagster* on the same instance as
``make ui``, so every CLI run, its metadata and lineage show up in the UI. Runs whose process is gone are
failed (and their pool slots freed) before anything starts; a failure ends with the stage, its cause and the
code that raised it, the full trace going to ``$LMFORGE_HOME/logs/<run_id>.log``. Run bookkeeping lives in
``pipelines/runs.py``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

from .home import ensure_dagster_home, home_of, open_instance


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

    from .. import runs
    from ..spec import load_spec, select_stages

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
    from .. import runs

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

    from .. import runs

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
    home = home_of(args)
    ok = materialize(args.spec, args.stages, home)
    if ok:
        from resources.store import ArtifactStore

        from ..spec import load_spec

        spec = load_spec(args.spec)
        rep = [s for s in spec.stages.values() if s.kind.produces == "report"]
        for s in rep:
            art = ArtifactStore(home).get(s.kind.name, s.version)
            if art:
                print(f"report: {art.path / 'report.md'}")
    return 0 if ok else 1

def cmd_runs(args) -> int:
    """Recent runs on the instance, newest first; runs whose process is gone are failed first."""
    home = home_of(args)
    from .. import runs

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

def cmd_ui(args) -> int:
    """``dagster dev`` on 127.0.0.1 over the same instance the CLI writes to."""
    import subprocess

    from ..instance import check_postgres

    home = home_of(args)
    os.environ["LMFORGE_HOME"] = str(home)
    check_postgres()
    dh = ensure_dagster_home(home)
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "dagster", "dev", "-m", "pipelines.definitions", "-h", args.host,
           "-p", str(args.port)]
    print(f"Dagster UI: http://{args.host}:{args.port}  (DAGSTER_HOME={dh}, LMFORGE_HOME={home})", flush=True)
    return subprocess.call(cmd, cwd=root)
