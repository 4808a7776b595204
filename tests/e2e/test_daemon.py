"""The Dagster daemon for real: ``dagster-daemon run`` over a workspace whose spec has a ``watch:`` sensor,
a cron schedule and ``eager`` stages, on a Postgres instance started here (127.0.0.1, torn down after).

Dropping a file into the watched folder makes the daemon launch a run that materializes the watched stage
(a new version: the file is one of its inputs), then the automation sensor launches its eager descendant.
A stage whose blocking check fails (an empty input file), launched by its watch sensor and every minute by
its cron schedule, holds its eager descendant back through later automation ticks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .postgres import postgres_bin, postgres_server

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC = """\
pipeline: daemon_test
stages:
  docs:   {{kind: load_documents, paths: ["{inbox}/*.jsonl"]}}
  upper:  {{kind: toy_upper, from: docs}}
  gate:   {{kind: load_documents, paths: ["{gate_inbox}/*.jsonl"]}}
  gated:  {{kind: toy_upper, from: gate}}
automation:
  docs:   {{watch: {{path: "{inbox}", pattern: "*.jsonl"}}}}
  upper:  {{eager: true}}
  gate:   {{watch: {{path: "{gate_inbox}", pattern: "*.jsonl"}}, cron: "* * * * *"}}
  gated:  {{eager: true}}
"""

DEFS = """\
from pathlib import Path

import tests.pipelines.toy_kinds  # noqa: F401  (toy_upper)
from pipelines.definitions import build_definitions

defs = build_definitions([Path({spec!r})])
"""


def _key(stage: str):
    import dagster as dg

    return dg.AssetKey(["daemon_test", stage])


def _wait(cond, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    t0 = time.time()
    while True:
        got = cond()
        if got:
            return got
        if proc.poll() is not None:
            raise AssertionError(f"dagster-daemon exited ({proc.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(1)


def _runs_of(instance, stage: str, finished: bool = True) -> list:
    out = []
    for r in instance.get_runs():
        if _key(stage) in (r.asset_selection or set()) and (r.is_finished or not finished):
            out.append(r)
    return out


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (the daemon's code servers run in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _stop(daemon: subprocess.Popen) -> None:
    """SIGTERM the daemon and everything it started, SIGKILL what is left after a bounded wait."""
    procs = [daemon.pid, *_descendants(daemon.pid)]
    for pid in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    try:
        daemon.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.time() + 15
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in procs[1:]):
        time.sleep(0.5)
    for pid in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        daemon.wait(timeout=10)


def _rows(artifact_dir: str) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(p).num_rows for p in Path(artifact_dir).glob("*.parquet"))


def _ticks(instance, name: str) -> list:
    for st in instance.all_instigator_state():
        if st.name == name:
            return list(instance.get_ticks(st.instigator_origin_id, st.selector_id))
    return []


def test_daemon_launches_watch_then_eager_and_blocking_check_holds_back(tmp_path, monkeypatch):
    if postgres_bin() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are absent: apt-get install postgresql (make test does)")
    import dagster as dg

    from pipelines.instance import postgres_url, write_instance_config
    from pipelines.runs import run_failures

    inbox, gate_inbox, home = tmp_path / "inbox", tmp_path / "gate_inbox", tmp_path / "home"
    for d in (inbox, gate_inbox, home):
        d.mkdir()
    (inbox / "a.jsonl").write_text(json.dumps({"text": "first document"}) + "\n")
    (gate_inbox / "empty.jsonl").write_text("")  # loads zero documents: the blocking check fails
    spec = tmp_path / "daemon_test.yaml"
    spec.write_text(SPEC.format(inbox=inbox, gate_inbox=gate_inbox))
    (tmp_path / "defs.py").write_text(DEFS.format(spec=str(spec)))
    (tmp_path / "workspace.yaml").write_text(
        f"load_from:\n  - python_file:\n      relative_path: {tmp_path / 'defs.py'}\n"
        f"      working_directory: {ROOT}\n      location_name: daemon_test\n"
    )

    with postgres_server() as url:
        monkeypatch.setenv("LMFORGE_POSTGRES_URL", url)
        monkeypatch.setenv("LMFORGE_HOME", str(home))
        # room in the run queue for the schedule's runs beside the watch and automation runs
        monkeypatch.setenv("LMFORGE_MAX_CONCURRENT_RUNS", "4")
        postgres_url()
        dh = home / "dagster"
        write_instance_config(dh)
        monkeypatch.setenv("DAGSTER_HOME", str(dh))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        instance = dg.DagsterInstance.from_config(str(dh))
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 4
        log = tmp_path / "daemon.log"
        with log.open("w") as lf:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "dagster._daemon", "run", "-w", str(tmp_path / "workspace.yaml")],
                cwd=ROOT, env=env, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            # the seed file: the watch sensor's first tick launches `docs`, then automation launches `upper`
            first = _wait(lambda: [r for r in _runs_of(instance, "upper")], 420,
                          "the first watch run and its eager descendant", daemon, log)
            assert first[0].status == dg.DagsterRunStatus.SUCCESS, first
            v1 = instance.get_latest_materialization_event(_key("docs")).asset_materialization
            known = {r.run_id for r in instance.get_runs()}

            # drop a file: a new run of `docs` (a new version, two documents), then `upper` again
            (inbox / "b.jsonl").write_text(json.dumps({"text": "second document"}) + "\n")
            new = _wait(lambda: [r for r in _runs_of(instance, "upper") if r.run_id not in known], 420,
                        "the dropped file's run and its eager descendant", daemon, log)
            assert new[0].status == dg.DagsterRunStatus.SUCCESS, new
            docs_runs = [r for r in _runs_of(instance, "docs") if r.run_id not in known]
            assert [r.status for r in docs_runs] == [dg.DagsterRunStatus.SUCCESS]
            assert docs_runs[0].tags.get("lmforge/trigger") == "new-files"  # launched by the watch sensor
            v2 = instance.get_latest_materialization_event(_key("docs")).asset_materialization
            assert v2.metadata["lmforge/version"].value != v1.metadata["lmforge/version"].value
            assert _rows(v2.metadata["lmforge/artifact"].value) == 2  # the dropped file's document is in
            up = instance.get_latest_materialization_event(_key("upper"))
            assert up.run_id == new[0].run_id
            assert _rows(up.asset_materialization.metadata["lmforge/artifact"].value) == 2
            docs_ev = instance.get_latest_materialization_event(_key("docs"))
            assert up.timestamp > docs_ev.timestamp  # the descendant ran after the new version

            # the cron schedule launched `gate` too; every `gate` run failed its blocking check
            def scheduled():  # a schedule's run targets its asset job (no asset selection on the run)
                return [r for r in instance.get_runs() if r.is_finished
                        and r.tags.get("dagster/schedule_name") == "daemon_test__gate__cron"]

            _wait(scheduled, 240, "a finished run of the cron schedule", daemon, log)
            gate = _runs_of(instance, "gate") + scheduled()
            assert all(r.status == dg.DagsterRunStatus.FAILURE for r in gate), gate
            for r in scheduled():
                assert [f.stage for f in run_failures(instance, r.run_id)] == ["daemon_test/gate"]
            for r in gate:
                evals = [e.dagster_event.event_specific_data for e in
                         instance.all_logs(r.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)]
                assert [(e.check_name, e.passed) for e in evals] == [("non_empty", False)], r.run_id
            # an automation tick after the latest failed `gate` run still launched nothing for `gated`
            gate_end = max(instance.get_run_record_by_id(r.run_id).end_time for r in gate)
            _wait(lambda: any(t.timestamp > gate_end for t in _ticks(instance, "daemon_test__automation")), 240,
                  "an automation tick after the failed gate run", daemon, log)
            assert _runs_of(instance, "gated", finished=False) == []
            assert instance.get_latest_materialization_event(_key("gated")) is None
        finally:
            _stop(daemon)
            instance.dispose()
