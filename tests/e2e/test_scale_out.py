"""lmforge on a production-shaped Dagster instance, every engine started here on 127.0.0.1 and torn down:

* a real PostgreSQL server (``initdb`` cluster in a temp dir) holds run, event-log and schedule storage
  (``LMFORGE_POSTGRES_URL``): a materialization is recorded there, its run history and lineage read back,
  and a second run is all cache hits, for a small data spec and for the default pipeline's smoke variant
  (every stage of ``make demo``'s tiny_r1, shrunk); an unreachable Postgres fails in bounded time naming
  the setting, storing nothing;
* the ``gpu`` pool with one slot (``LMFORGE_GPU_SLOTS``): two trainings requested at once never run at the
  same time and both finish; with two slots each training's torch threads are the cores divided by two.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .postgres import postgres_bin, postgres_server
from .servers import free_port

ROOT = Path(__file__).resolve().parents[2]
SPEC = "tests/e2e/specs/scale_out.yaml"
DATA = ["docs", "tokenizer", "tokens"]
pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def pg_url():
    if postgres_bin() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are absent: apt-get install postgresql (make test does)")
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="module")
def pg_home(tmp_path_factory, pg_url) -> Path:
    return tmp_path_factory.mktemp("pg_home")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LMFORGE_", "DAGSTER_"))}
    return {**env, "PYTHONPATH": str(ROOT), "LMFORGE_HOME": str(home), **extra}


def _cli(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def _finish(p: subprocess.Popen, timeout: float) -> tuple[int | None, str, str]:
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return None, out, err


def _instance(home: Path, url: str, monkeypatch):
    import dagster as dg

    from pipelines.instance import postgres_url

    monkeypatch.setenv("LMFORGE_POSTGRES_URL", url)
    postgres_url()  # names the psycopg2 driver, as lmforge does for the processes it starts
    return dg.DagsterInstance.from_config(str(home / "dagster"))


def _stage_records(instance, run_id: str) -> dict[str, dict]:
    """stage -> {start, end, metadata} of one run, from its event log."""
    import dagster as dg

    out: dict[str, dict] = {}
    for rec in instance.all_logs(run_id):
        ev = rec.dagster_event
        if ev is None or not ev.step_key:
            continue
        stage = ev.step_key.split("__", 1)[1]
        row = out.setdefault(stage, {})
        if ev.event_type == dg.DagsterEventType.STEP_START:
            row["start"] = rec.timestamp
        elif ev.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            row["end"] = rec.timestamp
            row["ok"] = ev.event_type == dg.DagsterEventType.STEP_SUCCESS
        elif ev.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            row["metadata"] = {k: v.value for k, v in ev.step_materialization_data.materialization.metadata.items()}
    return out


def test_postgres_instance_history_lineage_and_cache_hits(pg_home, pg_url, monkeypatch):
    import psycopg2
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    env = _env(pg_home, LMFORGE_POSTGRES_URL=pg_url)
    rc, out, err = _finish(_cli(env, "materialize", SPEC, "--stages", "+tokens"), 600)
    assert rc == 0, out + err

    # the instance config names the storage by the variable; no sqlite storage was created
    cfg = (pg_home / "dagster" / "dagster.yaml").read_text()
    assert "postgres_url:\n      env: LMFORGE_POSTGRES_URL" in cfg, cfg
    assert not list((pg_home / "dagster").rglob("*.db")), list((pg_home / "dagster").rglob("*.db"))

    instance = _instance(pg_home, pg_url, monkeypatch)
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    runs = instance.get_runs()
    assert [r.status.value for r in runs] == ["SUCCESS"]
    first = _stage_records(instance, runs[0].run_id)
    assert set(first) == set(DATA) and all(first[s]["ok"] for s in DATA)
    assert not any(first[s]["metadata"]["lmforge/cache_hit"] for s in DATA)

    # lineage, read back from Postgres: each stage's materialization records its inputs' data versions
    import dagster as dg

    def latest(stage: str):
        recs = instance.fetch_materializations(dg.AssetKey(["scale_out", stage]), limit=1).records
        return recs[0]

    tokens_tags = latest("tokens").event_log_entry.dagster_event.step_materialization_data.materialization.tags
    inputs = {k.split("/", 2)[2]: v for k, v in tokens_tags.items() if k.startswith("dagster/input_data_version/")}
    for up in ("docs", "tokenizer"):
        up_md = latest(up).asset_materialization
        assert inputs[f"scale_out/{up}"] == up_md.tags["dagster/data_version"], (inputs, up)

    # the rows are in the database itself
    with psycopg2.connect(pg_url) as con, con.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs")
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")
        assert cur.fetchone()[0] == len(DATA)

    # `lmforge runs` reads the same history
    rc, out, err = _finish(_cli(env, "runs", "--json"), 300)
    assert rc == 0, err
    assert [r["status"] for r in json.loads(out)] == ["SUCCESS"]

    # second run: every stage a cache hit, with the same data versions
    rc, out, err = _finish(_cli(env, "materialize", SPEC, "--stages", "+tokens"), 600)
    assert rc == 0, out + err
    runs = instance.get_runs()
    assert len(runs) == 2 and runs[0].status.value == "SUCCESS"
    second = _stage_records(instance, runs[0].run_id)
    assert set(second) == set(DATA)
    for s in DATA:
        assert second[s]["metadata"]["lmforge/cache_hit"] is True, s
        assert second[s]["metadata"]["lmforge/version"] == first[s]["metadata"]["lmforge/version"]


SMOKE = "tests/e2e/specs/tiny_r1_smoke.yaml"


def _smoke_db(pg_url: str) -> str:
    """A database of its own on the module's server, so this test's runs are the only ones it reads."""
    import psycopg2

    base, _ = pg_url.rsplit("/", 1)
    con = psycopg2.connect(base + "/postgres", connect_timeout=10)
    con.autocommit = True
    with con.cursor() as cur:
        cur.execute('DROP DATABASE IF EXISTS "smoke"')
        cur.execute('CREATE DATABASE "smoke"')
    con.close()
    return base + "/smoke"


def _materializations(instance, runs) -> dict[tuple[str, str | None], dict]:
    """(stage, partition) -> {metadata, tags} of every asset materialization of ``runs``."""
    import dagster as dg

    out = {}
    for r in runs:
        for rec in instance.all_logs(r.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            m = rec.dagster_event.step_materialization_data.materialization
            key = (m.asset_key.path[-1], m.partition)
            assert key not in out, key
            out[key] = {"metadata": {k: v.value for k, v in m.metadata.items()}, "tags": dict(m.tags or {})}
    return out


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_default_smoke_pipeline_under_postgres_then_all_cache_hits(pg_url, tmp_path, monkeypatch):
    """``make demo``'s pipeline in its smoke variant (every stage of tiny_r1, shrunk; the spec
    tests/e2e/test_pipeline.py runs on SQLite) on the Postgres instance: every stage and partition is
    computed, the history and lineage read back from Postgres, and a second materialization is all cache
    hits with the same versions, as on SQLite."""
    import psycopg2

    from pipelines.spec import load_spec

    spec = load_spec(ROOT / SMOKE)
    want = {(n, p) for n, st in spec.stages.items() for p in (st.partitions or [None])}
    url = _smoke_db(pg_url)
    home = tmp_path / "home"
    env = _env(home, LMFORGE_POSTGRES_URL=url)
    rc, out, err = _finish(_cli(env, "materialize", SMOKE), 3000)
    assert rc == 0, out[-3000:] + err[-3000:]
    assert not list((home / "dagster").rglob("*.db"))  # no sqlite storage beside Postgres

    instance = _instance(home, url, monkeypatch)
    first_runs = instance.get_runs()
    assert first_runs and all(r.status.value == "SUCCESS" for r in first_runs)
    first = _materializations(instance, first_runs)
    assert set(first) == want, set(first) ^ want
    assert not any(m["metadata"]["lmforge/cache_hit"] for m in first.values())

    # lineage read back from Postgres: each materialization records a data version for every stage it
    # reads, and it is the one that stage materialized (an unpartitioned stage reading a partitioned one,
    # report <- eval, records Dagster's combined version of all partitions instead)
    data_version = {k: m["tags"]["dagster/data_version"] for k, m in first.items()}
    for (stage, part), m in first.items():
        ups = {
            tag.split("/", 2)[2].split("/")[-1]: v
            for tag, v in m["tags"].items()
            if tag.startswith("dagster/input_data_version/")
        }
        assert set(ups) == {u for names in spec.stages[stage].refs.values() for u in names}, (stage, ups)
        for up, v in ups.items():
            if spec.stages[up].partitions is None:
                assert v == data_version[(up, None)], (stage, part, up)
            else:
                assert part is None and v and v not in data_version.values(), (stage, up)

    with psycopg2.connect(url) as con, con.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs")
        assert cur.fetchone()[0] == len(first_runs)
        cur.execute("SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'")
        assert cur.fetchone()[0] == len(want)

    rc, out, err = _finish(_cli(env, "materialize", SMOKE), 1200)
    assert rc == 0, out[-3000:] + err[-3000:]
    second_runs = [r for r in instance.get_runs() if r.run_id not in {f.run_id for f in first_runs}]
    assert len(second_runs) == len(first_runs) and all(r.status.value == "SUCCESS" for r in second_runs)
    second = _materializations(instance, second_runs)
    assert set(second) == want
    for k, m in second.items():
        assert m["metadata"]["lmforge/cache_hit"] is True, k
        assert m["metadata"]["lmforge/version"] == first[k]["metadata"]["lmforge/version"], k
        assert m["tags"]["dagster/data_version"] == first[k]["tags"]["dagster/data_version"], k

    # lmforge's catalog agrees: one computed run per stage version, the second materialization all hits
    q = f"SELECT cache_hit, count(*) AS n FROM stage_runs WHERE pipeline = '{spec.name}' GROUP BY 1 ORDER BY 1"
    rc, out, err = _finish(_cli(env, "sql", q, "--json"), 300)
    assert rc == 0, err
    counts = {r["cache_hit"]: r["n"] for r in json.loads(out[out.index("[") :])}
    assert counts == {False: len(want), True: len(want)}, counts


def test_unreachable_postgres_fails_fast_naming_the_setting(tmp_path):
    home = tmp_path / "home"
    url = f"postgresql://lmforge:s3cret@127.0.0.1:{free_port()}/dagster"  # nothing listens there
    t0 = time.time()
    rc, out, err = _finish(_cli(_env(home), "--postgres", url, "materialize", SPEC), 180)
    assert rc == 1, out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error  LMFORGE_POSTGRES_URL=") and "cannot connect to Postgres" in lines[0]
    assert "s3cret" not in err + out and "lmforge:***@127.0.0.1" in lines[0]
    assert time.time() - t0 < 170  # bounded: one connection attempt with a 10 s timeout
    # nothing stored: no artifact, no catalog, no instance storage
    stored = [p for p in home.rglob("*") if p.is_file()] if home.exists() else []
    assert stored == [], stored


def test_run_queue_and_pool_limits_reach_the_instance(tmp_path, monkeypatch):
    import dagster as dg

    from pipelines.instance import write_instance_config

    monkeypatch.setenv("LMFORGE_GPU_SLOTS", "3")
    monkeypatch.setenv("LMFORGE_MAX_CONCURRENT_RUNS", "5")
    dh = tmp_path / "dagster"
    text = write_instance_config(dh).read_text()
    assert text.count("concurrency:") == 1 and "run_launcher:" in text  # the repo's other settings kept
    instance = dg.DagsterInstance.from_config(str(dh))
    assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 5  # what the daemon reads
    assert instance.get_concurrency_config().pool_config.default_pool_limit == 3
    monkeypatch.setenv("LMFORGE_GPU_SLOTS", "0")
    from pipelines.instance import InstanceConfigError

    with pytest.raises(InstanceConfigError, match="LMFORGE_GPU_SLOTS='0'"):
        write_instance_config(dh)


# A run on the same instance that holds the `gpu` slot until a flag file appears (bounded), so that the
# two trainings below are both waiting for the slot when it is released: requested at once.
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import dagster as dg
    from pipelines.cli import open_instance
    from pipelines.runs import process_tags

    flag = Path(sys.argv[1])

    @dg.asset(pool="gpu")
    def slot_holder():
        t0 = time.time()
        while not flag.exists() and time.time() - t0 < 600:
            time.sleep(0.2)

    dg.materialize([slot_holder], instance=open_instance(Path(sys.argv[2])), tags=process_tags())
""")


def _pending_runs(instance) -> set[str]:
    info = instance.event_log_storage.get_concurrency_info("gpu")
    return {p.run_id for p in info.pending_steps if p.assigned_timestamp is None}


def _wait(cond, timeout: float, what: str, procs=()) -> None:
    t0 = time.time()
    while not cond():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"process exited ({p.returncode}) before {what}: {p.communicate()}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def _threads(cores_div: int) -> int:
    return max(1, len(os.sched_getaffinity(0)) // cores_div)


@pytest.mark.slow
def test_one_gpu_slot_never_runs_two_trainings_at_once(pg_home, pg_url, tmp_path, monkeypatch):
    env = _env(pg_home, LMFORGE_POSTGRES_URL=pg_url, LMFORGE_GPU_SLOTS="1")
    rc, out, err = _finish(_cli(env, "materialize", SPEC, "--stages", "+tokens"), 600)  # data (cache hits)
    assert rc == 0, out + err
    instance = _instance(pg_home, pg_url, monkeypatch)
    assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 1
    flag = tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(flag), str(pg_home)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    procs = []
    try:
        _wait(lambda: any(s.run_id for s in instance.event_log_storage.get_concurrency_info("gpu").claimed_slots),
              300, "the holder to take the gpu slot", [holder])
        before = {r.run_id for r in instance.get_runs()}
        procs = [_cli(env, "materialize", SPEC, "--stages", s) for s in ("base_a", "base_b")]
        new_runs = lambda: {r.run_id for r in instance.get_runs()} - before  # noqa: E731
        _wait(lambda: len(new_runs()) == 2 and _pending_runs(instance) >= new_runs(),
              300, "both trainings to wait for the gpu slot", procs)
    finally:
        flag.touch()
    assert _finish(holder, 120)[0] == 0
    results = [_finish(p, 600) for p in procs]
    for rc, out, err in results:
        assert rc == 0, out + err

    runs = [r for r in instance.get_runs() if r.run_id not in before and "lmforge/stages" in r.tags]
    spans = {}
    for r in runs:
        recs = _stage_records(instance, r.run_id)
        (stage, row), = recs.items()
        assert row["ok"] and row["metadata"]["lmforge/cache_hit"] is False
        assert row["metadata"]["lmforge/torch_threads"] == _threads(1)
        spans[stage] = (row["start"], row["end"])
    assert set(spans) == {"base_a", "base_b"}
    (s1, e1), (s2, e2) = sorted(spans.values())
    assert e1 <= s2, f"the trainings overlapped: {spans}"


@pytest.mark.slow
def test_two_gpu_slots_divide_torch_threads(pg_home, pg_url, monkeypatch):
    env = _env(pg_home, LMFORGE_POSTGRES_URL=pg_url, LMFORGE_GPU_SLOTS="2")
    rc, out, err = _finish(_cli(env, "materialize", SPEC, "--stages", "+tokens"), 600)
    assert rc == 0, out + err
    instance = _instance(pg_home, pg_url, monkeypatch)
    assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 2  # existing pool updated
    before = {r.run_id for r in instance.get_runs()}
    procs = [_cli(env, "materialize", SPEC, "--stages", s) for s in ("base_c", "base_d")]
    for rc, out, err in [_finish(p, 600) for p in procs]:
        assert rc == 0, out + err
    used = {}
    for r in instance.get_runs():
        if r.run_id in before:
            continue
        for stage, row in _stage_records(instance, r.run_id).items():
            used[stage] = row["metadata"]["lmforge/torch_threads"]
    assert used == {"base_c": _threads(2), "base_d": _threads(2)}
