"""Runs on the lmforge Dagster instance: who executes them, dead runs and their pool slots, failures a
person can read, and the ``lmforge runs`` listing.

Key design choices:
* Every run records the process that executes it. ``lmforge materialize`` tags its runs with its pid, host
  and the process's start time (``lmforge/pid``, ``lmforge/host``, ``lmforge/pid_start``); runs launched
  from the UI are known by the pid in Dagster's own "Started process for run (pid: N)" event, runs of
  Dagster's CLI (``dagster asset materialize``) by its "Executing steps ... (pid: N)" event. The start
  time guards against a reused pid: a run is judged dead only when its process is provably gone, never
  when it cannot be judged (no pid recorded yet, another host, or on shared storage a UI run's host, which
  only the daemon's launcher that started it knows).
* A dead run is marked failed with the reason, and every pool slot it claimed or queued for is freed:
  Dagster frees slots only when the run's own process exits cleanly, so a SIGKILL or an out-of-memory
  kill would otherwise hold the single ``gpu`` slot forever. This happens at every ``lmforge materialize``
  (:func:`reap_dead_runs`), while a materialize waits for a slot (:class:`SlotWaitWatcher`), and in the
  daemon's run monitoring through :class:`LmforgeRunLauncher` (configured in ``dagster.yaml``).
* A failure is summarised from the run's events as stage, cause (the exception the stage raised, not
  Dagster's wrapper) and the code location that raised it; the full event log with every trace is
  written to ``$LMFORGE_HOME/logs/<run_id>.log``. When the instance itself cannot record the failure
  (a full disk), the stage's exception is still known in process (``pipelines.factory.STAGE_FAILURES``).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.launcher.default_run_launcher import DefaultRunLauncher
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter
from dagster._core.storage.runs import SqliteRunStorage

PID_TAG = "lmforge/pid"
HOST_TAG = "lmforge/host"
START_TAG = "lmforge/pid_start"
INVOCATION_TAG = "lmforge/invocation"
SPEC_TAG = "lmforge/spec"
STAGES_TAG = "lmforge/stages"
UNKNOWN_HOST = "an unrecorded host"
# Dagster's engine events that name the pid of the process executing a run (launcher's first)
_WORKER_EVENTS = (
    "Started process for run",
    "Executing steps in process",
    "Executing steps using multiprocess executor: parent process",
)

REPO_ROOT = Path(__file__).resolve().parent.parent
# statuses in which a run holds (or waits for) pool slots through a live process
_LIVE_STATUSES = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]


# ---------------------------------------------------------------------------------------- liveness
def process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None where /proc is absent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: fields after it follow the last ')'
    return stat.rsplit(")", 1)[1].split()[19]


def process_tags() -> dict[str, str]:
    """Run tags naming the current process as the run's executor."""
    pid = os.getpid()
    tags = {PID_TAG: str(pid), HOST_TAG: socket.gethostname()}
    start = process_start(pid)
    if start:
        tags[START_TAG] = start
    return tags


@dataclass(frozen=True)
class Worker:
    pid: int
    host: str | None
    start: str | None

    def describe(self) -> str:
        return f"pid {self.pid}" + (f" on {self.host}" if self.host else "")


def run_worker(instance: dg.DagsterInstance, run: Any, *, launched_here: bool = False) -> Worker | None:
    """The process executing ``run``: from lmforge's tags, else from Dagster's first engine event naming the
    run's process: "Started process for run" (a launcher's run worker) or "Executing steps" (a run that
    executes where it was started, e.g. ``dagster asset materialize``). These name no host: a pid is
    judged here only on SQLite storage, which one machine's processes share, or by the launcher that
    started the run (``launched_here``, launcher events only)."""
    tags = run.tags
    if PID_TAG in tags:
        return Worker(int(tags[PID_TAG]), tags.get(HOST_TAG), tags.get(START_TAG))
    for rec in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        ev = rec.dagster_event
        msg = (ev.message or "") if ev is not None else ""
        if not msg.startswith(_WORKER_EVENTS):
            continue
        pid = ev.event_specific_data.metadata.get("pid")
        if pid is not None:
            local = isinstance(instance.run_storage, SqliteRunStorage) or (
                launched_here and msg.startswith(_WORKER_EVENTS[0])
            )
            return Worker(int(pid.value), None if local else UNKNOWN_HOST, None)
    return None


def worker_state(worker: Worker | None) -> tuple[bool | None, str]:
    """(alive, description): alive is None when it cannot be judged from this machine."""
    if worker is None:
        return None, "no process recorded yet"
    if worker.host == UNKNOWN_HOST:
        return None, f"pid {worker.pid} on a host that is not recorded (shared storage)"
    if worker.host and worker.host != socket.gethostname():
        return None, f"{worker.describe()} (another host)"
    try:
        os.kill(worker.pid, 0)
    except ProcessLookupError:
        return False, f"process {worker.describe()} no longer exists"
    except PermissionError:
        pass  # exists, owned by someone else
    if worker.start and process_start(worker.pid) not in (None, worker.start):
        return False, f"process {worker.describe()} no longer exists (the pid now belongs to another process)"
    return True, f"process {worker.describe()} is running"


def _free_slots(instance: dg.DagsterInstance, run_id: str) -> int:
    """Free every pool slot ``run_id`` holds or waits for; returns how many it held."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return 0
    keys = storage.get_concurrency_keys()
    held = 0
    for info in storage.get_concurrency_infos(list(keys)).values() if keys else []:
        held += sum(1 for s in info.claimed_slots if s.run_id == run_id)
    storage.free_concurrency_slots_for_run(run_id)
    return held


def fail_dead_run(instance: dg.DagsterInstance, run: Any, why: str) -> str:
    """Mark ``run`` failed with the reason and free its pool slots; returns the message recorded."""
    msg = (
        f"The process executing this run is gone ({why}): it was killed (SIGKILL, out of memory, machine "
        "lost) before it could record an outcome. lmforge marked the run failed and freed its pool slots."
    )
    instance.report_run_failed(run, msg)
    _free_slots(instance, run.run_id)
    return msg


def reap_dead_runs(instance: dg.DagsterInstance) -> list[tuple[str, str]]:
    """Mark every run whose process is gone as failed and free its slots; also free slots still held by
    runs that have already finished (e.g. marked failed in the UI). Returns (run_id, reason) pairs."""
    done: list[tuple[str, str]] = []
    for rec in instance.get_run_records(filters=RunsFilter(statuses=_LIVE_STATUSES)):
        run = rec.dagster_run
        alive, why = worker_state(run_worker(instance, run))
        if alive is False:
            fail_dead_run(instance, run, why)
            done.append((run.run_id, why))
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        for run_id in storage.get_concurrency_run_ids():
            run = instance.get_run_by_id(run_id)
            if run is None or run.is_finished:
                if _free_slots(instance, run_id):
                    status = run.status.value if run else "deleted"
                    done.append((run_id, f"run already {status}; its pool slots were still held"))
    return done


class LmforgeRunLauncher(DefaultRunLauncher):
    """Dagster's default launcher, plus a worker health check so that the daemon's run monitoring
    (``run_monitoring`` in dagster.yaml) fails runs whose process is gone: the default launcher cannot
    check its workers, so monitoring would leave such runs STARTED forever. ``free_slots_after_run_end_seconds``
    then frees the slots of the failed run."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        alive, why = worker_state(run_worker(self._instance, run, launched_here=True))
        if alive is False:
            return CheckRunHealthResult(WorkerStatus.FAILED, why)
        if alive:
            return CheckRunHealthResult(WorkerStatus.RUNNING, why)
        return CheckRunHealthResult(WorkerStatus.UNKNOWN, why)


# ------------------------------------------------------------------------------- waiting for slots
class SlotWaitWatcher(threading.Thread):
    """While a materialize runs: say in the terminal when its run waits for a pool slot and which run
    holds it; a holder whose process is gone is failed and its slot freed on the spot."""

    def __init__(self, invocation: str, *, interval_s: float = 2.0, out=None):
        super().__init__(daemon=True, name="lmforge-slot-watcher")
        self.invocation = invocation
        self.interval_s = interval_s
        self.out = out or sys.stdout
        self._halt = threading.Event()
        self._said: set[str] = set()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def run(self) -> None:
        instance = dg.DagsterInstance.get()  # its own connections: this thread polls beside the run
        run_id = None
        while not self._halt.wait(self.interval_s):
            try:
                if run_id is None:
                    recs = instance.get_run_records(
                        filters=RunsFilter(tags={INVOCATION_TAG: self.invocation}), limit=1
                    )
                    if not recs:
                        continue
                    run_id = recs[0].dagster_run.run_id
                self._check(instance, run_id)
            except Exception as e:  # noqa: BLE001 - the watcher only informs; the run goes on
                self._say(f"    (could not read the pool state: {e})")

    def _check(self, instance: dg.DagsterInstance, run_id: str) -> None:
        storage = instance.event_log_storage
        keys = list(storage.get_concurrency_keys())
        for key, info in storage.get_concurrency_infos(keys).items() if keys else []:
            waiting = [p for p in info.pending_steps if p.run_id == run_id and p.assigned_timestamp is None]
            if not waiting:
                continue
            for slot in info.claimed_slots:
                if slot.run_id == run_id:
                    continue
                holder = instance.get_run_by_id(slot.run_id)
                if holder is None or holder.is_finished:
                    _free_slots(instance, slot.run_id)
                    self._say(f"    freed the '{key}' slot still held by finished run {slot.run_id}")
                    continue
                alive, why = worker_state(run_worker(instance, holder))
                if alive is False:
                    fail_dead_run(instance, holder, why)
                    self._say(f"    run {slot.run_id} held the '{key}' slot but {why}: marked it failed, "
                              "freed the slot")
                    continue
                self._say(
                    f"    waiting for a slot of pool '{key}' (limit {info.slot_count}) for "
                    f"{', '.join(_stage_of(p.step_key) for p in waiting)}: held by run {slot.run_id} "
                    f"({_stage_of(slot.step_key)}, {holder.status.value}, {why})"
                )

    def _say(self, msg: str) -> None:
        if msg not in self._said:
            self._said.add(msg)
            print(msg, file=self.out, flush=True)


def _stage_of(step_key: str) -> str:
    """``<pipeline>__<stage>`` (the op name of a stage asset) -> ``<pipeline>/<stage>``."""
    return step_key.replace("__", "/", 1)


# --------------------------------------------------------------------------------- failures, read
@dataclass
class StageFailure:
    stage: str  # <pipeline>/<stage>, as in the UI
    cause: str  # "<ExceptionClass>: <message>" of the exception the stage raised
    where: str | None  # "path/in/repo.py:LINE in function" of the innermost lmforge frame
    checks: list[str]  # failed blocking checks: "<name>: <description> <metadata>"
    trace: str  # the full trace

    def lines(self) -> list[str]:
        out = [f"FAILED stage {self.stage}: {self.cause}"]
        out += [f"    failed check {c}" for c in self.checks]
        if self.where:
            out.append(f"    raised at {self.where}")
        return out


def _root_error(err) -> Any:
    """The exception the stage raised, not Dagster's wrapper around it."""
    while err.cause is not None and err.cls_name and err.cls_name.startswith("Dagster"):
        err = err.cause
    return err


def _where(stack: list[str]) -> str | None:
    """The innermost frame in lmforge's own code (ops/, assets/, resources/, pipelines/)."""
    root = str(REPO_ROOT) + os.sep
    for frame in reversed(stack):
        line = frame.strip().splitlines()[0] if frame.strip() else ""
        if line.startswith('File "') and root in line:
            path, rest = line[len('File "'):].split('"', 1)
            lineno = rest.split("line", 1)[1].split(",")[0].strip() if "line" in rest else "?"
            func = rest.rsplit(" in ", 1)[1].strip() if " in " in rest else ""
            return f"{os.path.relpath(path, REPO_ROOT)}:{lineno}" + (f" in {func}" if func else "")
    return None


def _cause_text(err) -> str:
    msg = (err.message or "").strip()
    # SerializableErrorInfo messages already read "ValueError: ..."; keep the first line of long messages
    first = msg.splitlines()[0] if msg else err.cls_name or "error"
    more = len(msg.splitlines()) - 1
    return first + (f" (+{more} more lines in the log)" if more > 0 else "")


def _short(v: Any, n: int = 160) -> str:
    """A metadata value on one line: lists shown item by item, each cut to ``n`` characters."""
    items = v if isinstance(v, list) else [v]
    cut = [(t if len(t) <= n else t[:n] + "...") for t in (str(i).replace("\n", " ") for i in items[:3])]
    return "; ".join(cut) + (f" (+{len(items) - 3} more)" if len(items) > 3 else "")


def run_failures(instance: dg.DagsterInstance, run_id: str) -> list[StageFailure]:
    """Every failed stage of a run, from its STEP_FAILURE and failed check events."""
    checks: dict[str, list[str]] = {}
    for rec in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        ev = rec.dagster_event.event_specific_data
        if ev.passed:
            continue
        md = {k: v.value for k, v in (ev.metadata or {}).items()}
        # check events written by earlier lmforge releases hold the description in their metadata
        desc = ev.description or md.pop("description", "")
        extra = "; ".join(f"{k}: {_short(v)}" for k, v in md.items())
        checks.setdefault("/".join(ev.asset_key.path), []).append(
            f"'{ev.check_name}': {desc}" + (f" ({extra})" if extra else "")
        )
    out = []
    for rec in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        ev = rec.dagster_event
        err = ev.event_specific_data.error
        stage = _stage_of(ev.step_key or "?")
        root = _root_error(err) if err else None
        cause = _cause_text(root) if root else (ev.message or "failed")
        if root is not None and root.cls_name == "DagsterAssetCheckFailedError":
            cause = "a blocking check failed (the stages that depend on it were not run)"
            root = None  # raised by Dagster after the stage returned: no stage code to point at
        out.append(
            StageFailure(
                stage=stage,
                cause=cause,
                where=_where(root.stack) if root else None,
                checks=checks.get(stage, []),
                trace=err.to_string() if err else "",
            )
        )
    if not out:
        for rec in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE):
            msg = rec.dagster_event.message or "run failed"
            out.append(StageFailure("(run)", msg.strip().splitlines()[0], None, [], msg))
    return out


def failure_from_exception(stage: str, exc: BaseException) -> StageFailure:
    """A :class:`StageFailure` for an exception known in process (the instance could not record it)."""
    import traceback

    from dagster._utils.error import serializable_error_info_from_exc_info

    err = serializable_error_info_from_exc_info((type(exc), exc, exc.__traceback__))
    return StageFailure(stage, _cause_text(err), _where(err.stack), [], "".join(traceback.format_exception(exc)))


def storage_hint(exc: BaseException | None, *paths: Path) -> str | None:
    """Name a full disk behind a storage error (sqlite says only "disk I/O error")."""
    chain, e = [], exc
    while e is not None and len(chain) < 20:
        chain.append(e)
        e = e.__cause__ or e.__context__
    enospc = next((e for e in chain if isinstance(e, OSError) and e.errno == errno.ENOSPC), None)
    full = []
    for p in paths:
        try:
            usage = shutil.disk_usage(p if p.exists() else p.parent)
        except OSError:
            continue
        if usage.free < 1 << 20:
            full.append(f"{p} has {usage.free} bytes free")
    if enospc is None and not full:
        return None
    where = [str(enospc.filename)] if enospc is not None and enospc.filename else []
    return "No space left on device" + (": " + "; ".join(where + full) if where or full else "")


def write_run_log(instance: dg.DagsterInstance, run_id: str, home: Path) -> Path | None:
    """Every event of the run with full traces, as text: ``$LMFORGE_HOME/logs/<run_id>.log``."""
    path = home / "logs" / f"{run_id}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for rec in instance.all_logs(run_id):
                ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(rec.timestamp))
                ev = rec.dagster_event
                step = f" {ev.step_key}" if ev is not None and ev.step_key else ""
                kind = ev.event_type_value if ev is not None else "LOG"
                f.write(f"{ts} {kind}{step}: {rec.user_message or (ev.message if ev else '')}\n")
                err = getattr(getattr(ev, "event_specific_data", None), "error", None) if ev else None
                if err is not None:
                    f.write(err.to_string() + "\n")
    except OSError:
        return None
    return path


# ------------------------------------------------------------------------------------ lmforge runs
def recent_runs(instance: dg.DagsterInstance, limit: int = 20) -> list[dict[str, Any]]:
    """The latest runs, newest first: id, status, start time, what ran, and the failed stage's message."""
    rows = []
    for rec in instance.get_run_records(limit=limit):
        run = rec.dagster_run
        start = rec.start_time or rec.create_timestamp.timestamp()
        row = {
            "run_id": run.run_id,
            "status": run.status.value,
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start)),
            "spec": run.tags.get(SPEC_TAG, ""),
            "what": run.tags.get(STAGES_TAG)
            or ", ".join("/".join(k.path) for k in sorted(run.asset_selection or [], key=str))
            or run.job_name,
            "failed_stage": None,
            "message": None,
        }
        if run.status == DagsterRunStatus.FAILURE:
            fails = run_failures(instance, run.run_id)
            if fails:
                row["failed_stage"] = fails[0].stage
                row["message"] = fails[0].cause + (f" [{fails[0].checks[0]}]" if fails[0].checks else "")
        rows.append(row)
    return rows
