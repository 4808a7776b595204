"""Runs on the lmforge instance: a SIGKILLed materialize never blocks the next one (its run is failed with
the reason and its `gpu` slot freed, at the next materialize and by the daemon's run monitoring); a
materialize waiting for a slot names the run holding it; `lmforge runs` lists runs with the failed stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipelines.cli import ensure_dagster_home, main
from pipelines.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

SPEC = """\
pipeline: kill_test
stages:
  docs: {{kind: load_documents, paths: [{docs}]}}
  tokenizer: {{kind: train_tokenizer, from: docs, vocab_size: 512}}
  tokens: {{kind: tokenize, from: docs, tokenizer: tokenizer, val_frac: 0.05}}
  base: {{kind: pretrain, data: tokens, tokenizer: tokenizer, model: {{d_model: 32, layers: 1, heads: 2, kv_heads: 1}},
         tokens: 20000, seq_len: 32, batch_size: 8, eval_every: 50, eval_tokens: 1024, ckpt_every: 20,
         threads: 1, sample_tokens: 4}}
  # long enough that it is always killed mid-training (checkpoints every 10 steps)
  big: {{kind: pretrain, data: tokens, tokenizer: tokenizer, model: {{d_model: 32, layers: 1, heads: 2, kv_heads: 1}},
        tokens: 50000000, seq_len: 32, batch_size: 8, eval_every: 1000, eval_tokens: 1024, ckpt_every: 10,
        threads: 1}}
"""

# A run on the same instance that holds the `gpu` slot until a flag file appears (bounded).
HOLDER = """
import sys, time
from pathlib import Path
import dagster as dg
from pipelines.runs import process_tags

flag = Path(sys.argv[1])

@dg.asset(pool="gpu")
def slot_holder():
    t0 = time.time()
    while not flag.exists() and time.time() - t0 < 600:
        time.sleep(0.2)

dg.materialize([slot_holder], instance=dg.DagsterInstance.get(), tags=process_tags())
"""


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "LMFORGE_HOME": str(home),
            "DAGSTER_HOME": str(home / "dagster")}


def _cli(home: Path, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "--home", str(home), *args],
        cwd=ROOT, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, **kw,
    )


def _finish(p: subprocess.Popen, timeout: float) -> tuple[int | None, str]:
    """Wait for ``p``; on timeout SIGKILL its group (a blocked materialize ignores SIGTERM)."""
    try:
        out, _ = p.communicate(timeout=timeout)
        return p.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        return None, out


def _wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    t0 = time.time()
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}:\n{proc.stdout.read()}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    from tests.ops.test_tokenizer import pydoc_paragraphs

    docs, seen = tmp_path / "docs.jsonl", set()
    with docs.open("w") as f:
        for k, t in pydoc_paragraphs():
            if t not in seen:
                seen.add(t)
                f.write(json.dumps({"id": k, "text": t}) + "\n")
    p = tmp_path / "kill_test.yaml"
    p.write_text(SPEC.format(docs=docs))
    return p


def test_sigkill_mid_training_never_blocks_the_next_materialize(tmp_path, spec_path, capsys, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("LMFORGE_HOME", str(home))
    # 1. everything up to `base` stored
    rc, out = _finish(_cli(home, "materialize", str(spec_path), "--stages", "+base"), 900)
    assert rc == 0, out

    # 2. a run that holds the gpu slot: the next materialize says it waits, naming that run
    flag = tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(flag)], cwd=ROOT, env=_env(home),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        import dagster as dg

        instance = dg.DagsterInstance.get()

        def holder_run():
            for r in instance.get_runs():
                if r.tags.get("lmforge/pid") == str(holder.pid):
                    return r
            return None

        def holds_slot():
            r = holder_run()
            return r is not None and r.run_id in instance.event_log_storage.get_concurrency_info("gpu").active_run_ids

        _wait_for(holds_slot, 300, "the holder run to claim the gpu slot", holder)
        waiting = _cli(home, "materialize", str(spec_path), "--stages", "+base")
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(waiting.stdout), daemon=True)
        reader.start()

        def said_waiting():
            return any("waiting for a slot of pool 'gpu'" in ln for ln in lines) or waiting.poll() is not None

        try:
            _wait_for(said_waiting, 300, "the waiting message")
        finally:
            flag.write_text("go")
        said = next((ln for ln in lines if "waiting for a slot" in ln), "")
        assert holder_run().run_id in said and "kill_test/base" in said, "".join(lines)
        try:
            assert waiting.wait(timeout=300) == 0, "".join(lines)
        finally:
            if waiting.poll() is None:
                os.killpg(waiting.pid, signal.SIGKILL)
        reader.join(timeout=30)
    finally:
        flag.write_text("go")
        _finish(holder, 60)

    # 3. SIGKILL a materialize in the middle of training `big`
    big = load_spec(spec_path).stages["big"].version
    ckpts = home / "work" / "pretrain" / big / "checkpoints"
    victim = _cli(home, "materialize", str(spec_path), "--stages", "big")
    try:
        _wait_for(lambda: ckpts.is_dir() and any(ckpts.glob("step-*")), 600, "a checkpoint of big", victim)
        os.kill(victim.pid, signal.SIGKILL)  # the process executing the run, as the OOM killer would
        victim.wait(timeout=60)
    finally:
        _finish(victim, 60)
    victim_run = next(r for r in instance.get_runs() if r.tags.get("lmforge/pid") == str(victim.pid))
    assert instance.get_run_by_id(victim_run.run_id).status == dg.DagsterRunStatus.STARTED  # as left by the kill

    # 4. the next materialize (cache hits, `base` in the gpu pool) completes without manual steps
    rc, out = _finish(_cli(home, "materialize", str(spec_path), "--stages", "+base"), 300)
    assert rc == 0, out
    assert f"run {victim_run.run_id}: process pid {victim.pid}" in out and "no longer exists" in out, out
    dead = instance.get_run_by_id(victim_run.run_id)
    assert dead.status == dg.DagsterRunStatus.FAILURE
    assert victim_run.run_id not in instance.event_log_storage.get_concurrency_info("gpu").active_run_ids
    (failure,) = instance.all_logs(victim_run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert "The process executing this run is gone" in failure.dagster_event.message

    # 5. `lmforge runs` shows it FAILED with the reason
    capsys.readouterr()
    assert main(["--home", str(home), "runs"]) == 0
    listing = capsys.readouterr().out
    row = listing.split(victim_run.run_id[:8], 1)[1]
    assert row.split()[0] == "FAILURE" and "kill_test: big" in row.splitlines()[0]
    assert "process executing this run is gone" in row.splitlines()[1]


# A run whose process exits hard while it holds the gpu slot (os._exit: no clean-up at all).
HARD_EXIT = """
import os
import dagster as dg
from pipelines.runs import process_tags

@dg.asset(pool="gpu")
def trainer():
    os._exit(9)

dg.materialize([trainer], instance=dg.DagsterInstance.get(), tags=process_tags())
"""


def test_run_monitoring_fails_a_dead_run_and_frees_its_slot(tmp_path, monkeypatch):
    """The daemon's monitoring (what `lmforge ui` runs) applies with lmforge's dagster.yaml."""
    import logging
    from types import SimpleNamespace

    import dagster as dg
    from dagster._daemon.monitoring.concurrency import execute_concurrency_slots_iteration
    from dagster._daemon.monitoring.run_monitoring import monitor_started_run

    from pipelines.runs import LmforgeRunLauncher

    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(ensure_dagster_home(home)))
    p = subprocess.run([sys.executable, "-c", HARD_EXIT], cwd=ROOT, env=_env(home), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 9, p.stdout + p.stderr
    instance = dg.DagsterInstance.get()
    assert isinstance(instance.run_launcher, LmforgeRunLauncher) and instance.run_monitoring_enabled
    (rec,) = instance.get_run_records()
    assert rec.dagster_run.status == dg.DagsterRunStatus.STARTED
    assert instance.event_log_storage.get_concurrency_info("gpu").active_run_ids == {rec.dagster_run.run_id}

    log = logging.getLogger("test-monitoring")
    monitor_started_run(instance, None, rec, log)
    run = instance.get_run_by_id(rec.dagster_run.run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE
    (failure,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert f"pid {rec.dagster_run.tags['lmforge/pid']}" in failure.dagster_event.message
    assert "no longer exists" in failure.dagster_event.message

    wait = instance.run_monitoring_settings["free_slots_after_run_end_seconds"]
    ctx = SimpleNamespace(instance=instance)
    t0 = time.time()
    while instance.event_log_storage.get_concurrency_info("gpu").active_run_ids:
        assert time.time() - t0 < wait + 120, "the monitoring daemon never freed the slot"
        list(execute_concurrency_slots_iteration(ctx, log))
        time.sleep(1)


def test_dagster_started_run_is_judged_by_its_worker_pid(tmp_path, monkeypatch):
    """Runs launched from the UI carry no lmforge tags: their worker is Dagster's "Started process" pid."""
    import dagster as dg
    from dagster._core.events import EngineEventData

    from pipelines.runs import run_worker, worker_state

    monkeypatch.setenv("DAGSTER_HOME", str(ensure_dagster_home(tmp_path / "home")))
    instance = dg.DagsterInstance.get()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid, alive in ((os.getpid(), True), (dead.pid, False)):
        run = instance.create_run_for_job(dg.GraphDefinition("g").to_job(), run_id=None)
        instance.report_engine_event(f"Started process for run (pid: {pid}).", run,
                                     EngineEventData.in_process(pid))
        w = run_worker(instance, run)
        assert w.pid == pid and worker_state(w)[0] is alive


def test_shared_storage_never_fails_a_run_whose_worker_host_is_not_recorded(tmp_path, monkeypatch):
    """On Postgres the daemon's runs execute on the server: a `lmforge materialize` on another machine cannot
    see their worker pid, so it must leave them (and their pool slots) alone; the daemon's launcher, which
    started them, still judges them."""
    import dagster as dg
    from dagster._core.events import EngineEventData

    from pipelines.instance import postgres_url
    from pipelines.runs import LmforgeRunLauncher, reap_dead_runs
    from tests.e2e.postgres import postgres_bin, postgres_server

    if postgres_bin() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are absent: apt-get install postgresql (make test does)")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with postgres_server() as url:
        monkeypatch.setenv("LMFORGE_POSTGRES_URL", url)
        postgres_url()
        instance = dg.DagsterInstance.from_config(str(ensure_dagster_home(tmp_path / "home")))
        try:
            run = instance.create_run_for_job(dg.GraphDefinition("g").to_job(), status=dg.DagsterRunStatus.STARTED)
            instance.report_engine_event(f"Started process for run (pid: {dead.pid}).", run,
                                         EngineEventData.in_process(dead.pid))
            assert reap_dead_runs(instance) == []
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
            launcher = LmforgeRunLauncher()
            launcher.register_instance(instance)
            health = launcher.check_run_worker_health(run)
            assert health.status.name == "FAILED" and "no longer exists" in health.msg
        finally:
            instance.dispose()


def test_a_run_started_by_dagsters_own_cli_is_judged_by_its_executing_process(tmp_path, monkeypatch):
    """`dagster asset materialize` runs in its own process and tags nothing: its worker is the pid of the
    "Executing steps" event, so a kill leaves neither a STARTED run nor a held `gpu` slot behind."""
    import dagster as dg

    from pipelines.runs import reap_dead_runs

    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(ensure_dagster_home(home)))
    untagged = HARD_EXIT.replace(", tags=process_tags()", "")
    p = subprocess.run([sys.executable, "-c", untagged], cwd=ROOT, env=_env(home), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 9, p.stdout + p.stderr
    instance = dg.DagsterInstance.get()
    (rec,) = instance.get_run_records()
    assert rec.dagster_run.status == dg.DagsterRunStatus.STARTED and "lmforge/pid" not in rec.dagster_run.tags
    assert [run_id for run_id, _ in reap_dead_runs(instance)] == [rec.dagster_run.run_id]
    assert instance.get_run_by_id(rec.dagster_run.run_id).status == dg.DagsterRunStatus.FAILURE
    assert not instance.event_log_storage.get_concurrency_info("gpu").active_run_ids
