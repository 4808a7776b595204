"""Data stages on other executors: a real Ray head on this machine, and Slurm's sbatch script.

The Ray test starts ``ray start --head`` with 2 CPUs (ops/data/ray_head.py), runs extract -> filter ->
dedupe through it and compares every artifact byte for byte with the local executor's. The Slurm test runs
datatrove's real script generation and pickled-pipeline launch; ``sbatch``/``srun``/``scontrol`` are small
stand-ins on PATH that record the script and run its array tasks here, one after the other.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from assets.registry import load_kinds
from ops.data.schema import read_documents
from pipelines.execute import run_kind
from resources.site import local_docs_target, make_resource
from resources.store import ArtifactStore


@pytest.fixture(scope="module")
def warc_glob(tmp_path_factory) -> str:
    """About 30 crawled pages in several small WARC files (so extract gets more than one task)."""
    from ops.data.crawl import CrawlSettings, crawl

    root = tmp_path_factory.mktemp("exec_crawl")
    site = make_resource(root / "home")
    with site.serve() as base:
        s = CrawlSettings(max_pages=30, warc_file_max_bytes=20_000, **local_docs_target(base))
        crawl(s, root / "cw", root / "crawl", log=lambda m: None)
    files = sorted((root / "crawl" / "warc").glob("*.warc.gz"))
    assert len(files) >= 2
    return str(root / "crawl" / "warc" / "*.warc.gz")


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[dev]')")
    from ops.data.ray_head import local_ray_head

    log = tmp_path_factory.mktemp("ray_head") / "head.log"
    with local_ray_head(num_cpus=2, log=log) as address:
        yield address


def _chain(home: Path, warc_glob: str, executor: dict | None, log=lambda m: None) -> dict:
    ex = {"executor": executor} if executor else {}
    crawl, _ = run_kind("crawl", {"source": "warc", "warc": [warc_glob]}, home, stage="crawl", log=log)
    text, _ = run_kind(
        "extract", {"from": "crawl", "tasks": 2, "workers": 2, "timeout_s": 120, **ex}, home,
        inputs={"from_": [crawl]}, stage="text", log=log,
    )  # fmt: skip
    clean, _ = run_kind(
        "filter", {"from": "text", "tasks": 2, "workers": 2, **ex}, home,
        inputs={"from_": [text]}, stage="clean", log=log,
    )  # fmt: skip
    corpus, _ = run_kind(
        "dedupe", {"from": "clean", "num_buckets": 2, "hashes_per_bucket": 4, "workers": 2, **ex}, home,
        inputs={"from_": [clean]}, stage="corpus", log=log,
    )  # fmt: skip
    return {"text": text, "clean": clean, "corpus": corpus}


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_ray_executor_writes_the_local_executors_artifacts(tmp_path, warc_glob, ray_address):
    local = _chain(tmp_path / "local", warc_glob, None)
    ray = _chain(tmp_path / "ray", warc_glob, {"kind": "ray", "address": ray_address, "mem_per_cpu_gb": 0.5})
    for name in ("text", "clean", "corpus"):
        a, b = local[name], ray[name]
        assert a.version == b.version, name  # the executor is not part of the version
        assert (a.path / "documents.parquet").read_bytes() == (b.path / "documents.parquet").read_bytes(), (
            name
        )
        assert a.metrics == b.metrics, name
    assert read_documents(ray["corpus"].path).num_rows > 10
    assert local["text"].metrics["documents"] > local["clean"].metrics["documents_out"] > 0

    # the Ray run really used the cluster: datatrove's Ray executor leaves its per-rank logs
    work = ArtifactStore(tmp_path / "ray").work_dir("extract", ray["text"].version)
    logs = sorted((work / "extract_logs" / "logs").glob("task_*.log"))
    assert len(logs) == 2
    assert json.loads((work / "extract_logs" / "executor.json").read_text())["mem_per_cpu_gb"] == 0.5

    # a stored local artifact is a cache hit for the same stage pointed at Ray (and vice versa)
    again, res = run_kind(
        "dedupe",
        {"from": "clean", "num_buckets": 2, "hashes_per_bucket": 4, "workers": 2,
         "executor": {"kind": "ray", "address": ray_address}},
        tmp_path / "local", inputs={"from_": [local["clean"]]}, stage="corpus", log=lambda m: None,
    )  # fmt: skip
    assert res is None and again.version == local["corpus"].version


def _fail_on_rank_1(data, rank: int = 0, world_size: int = 1):
    """A pipeline step (datatrove accepts plain callables) that breaks one of two ranks."""
    if rank == 1:
        raise RuntimeError("rank 1 broke on purpose")
    return data or []


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_a_failed_ray_task_fails_the_run_with_its_log(tmp_path, ray_address):
    """datatrove's Ray executor only logs "Only 1/2 tasks completed"; the stage must fail instead."""
    from ops.data.pipeline import ExecutorError, ExecutorSettings, open_executor

    s = ExecutorSettings(
        kind="ray", address=ray_address, mem_per_cpu_gb=0.5, setting="stage 'x', field 'executor'"
    )
    with open_executor(s) as runner, pytest.raises(ExecutorError) as e:
        runner.run([_fail_on_rank_1], tmp_path / "logs", tasks=2, workers=2)
    msg = str(e.value)
    assert "1 of 2 datatrove task(s) did not complete on ray (ranks [1])" in msg
    assert "rank 1 broke on purpose" in msg


class _RecordPid:
    """A pipeline step that writes which process ran each rank to ``folder/<run>-<rank>``; with ``die_once``,
    rank 1 first kills its own process (as an out-of-memory kill would)."""

    def __init__(self, folder: Path, run: str, die_once: bool = False):
        self.folder, self.run, self.die_once = folder, run, die_once

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        flag = self.folder / "died"
        if self.die_once and rank == 1 and not flag.exists():
            flag.write_text(str(os.getpid()))
            os._exit(1)
        (self.folder / f"{self.run}-{rank}").write_text(str(os.getpid()))
        return data or []


def _pids(folder: Path, run: str) -> dict[int, int]:
    return {int(f.name.rsplit("-", 1)[1]): int(f.read_text()) for f in folder.glob(f"{run}-*")}


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_ray_ranks_share_long_lived_workers_across_runs(tmp_path, ray_address):
    """Ranks run on one actor per worker that serves every run of the connection (a fresh process per task
    would import datatrove and the steps' libraries again for each), and an actor that dies is replaced
    with its rank run again."""
    import ray

    from ops.data.pipeline import ExecutorSettings, open_executor

    pids = tmp_path / "pids"
    pids.mkdir()
    s = ExecutorSettings(kind="ray", address=ray_address, mem_per_cpu_gb=0.5)
    with open_executor(s, workers=2) as runner:
        runner.run([_RecordPid(pids, "a")], tmp_path / "logs_a", tasks=6, workers=2)
        runner.run([_RecordPid(pids, "b")], tmp_path / "logs_b", tasks=5, workers=2)
        a, b = _pids(pids, "a"), _pids(pids, "b")
        assert sorted(a) == list(range(6)) and sorted(b) == list(range(5))
        assert len(set(a.values())) <= 2 and set(b.values()) <= set(a.values()), (a, b)

        runner.run([_RecordPid(pids, "c", die_once=True)], tmp_path / "logs_c", tasks=3, workers=2)
        c, died = _pids(pids, "c"), int((pids / "died").read_text())
        assert sorted(c) == [0, 1, 2] and died in a.values() and c[1] != died, (a, c, died)
    assert not ray.is_initialized()  # the connection, and with it the actors, ended with the stage


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_ray_task_larger_than_any_node_fails_naming_the_setting_and_stores_nothing(
    tmp_path, warc_glob, ray_address
):
    """Three CPUs per task on a 2-CPU cluster can never be scheduled: one error, not an endless wait."""
    home = tmp_path / "home"
    crawl, _ = run_kind("crawl", {"source": "warc", "warc": [warc_glob]}, home, log=lambda m: None)
    cfg = {"from": "crawl", "executor": {"kind": "ray", "address": ray_address, "cpus_per_task": 3}}
    with pytest.raises(Exception) as e:
        run_kind("extract", cfg, home, inputs={"from_": [crawl]}, stage="text", log=lambda m: None)
    msg = str(e.value)
    assert "stage 'text', field 'executor'.cpus_per_task" in msg and "no node of the Ray cluster" in msg
    assert "largest: 2 CPU(s)" in msg
    assert [k for k, _ in ArtifactStore(home).versions()] == ["crawl"]


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_unreachable_ray_address_fails_naming_the_setting_and_stores_nothing(tmp_path, warc_glob):
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[dev]')")
    from ops.data.ray_head import free_port

    home = tmp_path / "home"
    crawl, _ = run_kind("crawl", {"source": "warc", "warc": [warc_glob]}, home, log=lambda m: None)
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    cfg = {"from": "crawl", "executor": {"kind": "ray", "address": address, "connect_timeout_s": 5}}
    with pytest.raises(Exception) as e:
        run_kind("extract", cfg, home, inputs={"from_": [crawl]}, stage="text", log=lambda m: None)
    msg = str(e.value)
    assert "stage 'text', field 'executor'.address" in msg and address in msg and "at most 5s" in msg
    assert [k for k, _ in ArtifactStore(home).versions()] == ["crawl"]
    assert not list((home / "artifacts").glob("extract/*")) and not list(
        (home / "artifacts").glob("extract/.*")
    )


def test_executor_settings_are_validated_per_kind():
    k = load_kinds()["filter"]
    bad = [
        ({"kind": "ray"}, "needs address"),
        ({"kind": "local", "address": "127.0.0.1:1"}, "only used with kind: ray"),
        ({"kind": "slurm", "partition": "cpu"}, "needs time"),
        ({"kind": "ray", "address": "h:1", "partition": "cpu"}, "only apply to kind: slurm"),
        ({"kind": "dask"}, "kind"),
    ]
    for ex, words in bad:
        with pytest.raises(ValueError, match=words):
            k.config.model_validate({"from": "x", "executor": ex})
    for name in ("extract", "filter", "dedupe"):
        cls = load_kinds()[name].config
        assert cls.model_fields["executor"].annotation is k.config.model_fields["executor"].annotation


FAKE_SBATCH = r"""#!/bin/bash
# Records the script and its arguments, then runs every array task of it here, one after the other.
set -e
script="${@: -1}"
n=$(ls "$FAKE_SLURM_DIR" | grep -c '^job-[0-9]*\.sh$' || true)
id=$((4200 + n))
cp "$script" "$FAKE_SLURM_DIR/job-$id.sh"
printf '%s\n' "${@:1:$#-1}" > "$FAKE_SLURM_DIR/job-$id.args"
last=$(sed -n 's/^#SBATCH --array=0-\([0-9]*\).*/\1/p' "$script")
for i in $(seq 0 "${last:-0}"); do
  SLURM_JOB_ID=$id SLURM_ARRAY_TASK_ID=$i SLURM_NODELIST=localhost RUN_OFFSET=0 \
    bash "$script" > "$FAKE_SLURM_DIR/job-$id-$i.out" 2>&1
done
echo "Submitted batch job $id"
"""
FAKE_SRUN = r"""#!/bin/bash
# srun's options are dropped; the command after them runs as the one task.
while [ $# -gt 0 ] && [[ "$1" == -* || "$1" =~ ^[0-9]+$ ]]; do shift; done
exec "$@"
"""
FAKE_SCONTROL = r"""#!/bin/bash
# `scontrol show hostnames LIST`: LIST is a single host here.
shift 2; echo "$@"
"""


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_slurm_executor_generates_sbatch_array_jobs_with_the_local_output(tmp_path, warc_glob, monkeypatch):
    bin_dir, jobs = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    jobs.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        f = bin_dir / name
        f.write_text(text)
        f.chmod(f.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(jobs))

    quiet = lambda m: None  # noqa: E731
    home = tmp_path / "home"
    crawl, _ = run_kind("crawl", {"source": "warc", "warc": [warc_glob]}, home, log=quiet)
    local, _ = run_kind(
        "extract",
        {"from": "crawl", "tasks": 2, "workers": 2, "timeout_s": 120},
        home,
        inputs={"from_": [crawl]},
        stage="text",
        log=quiet,
    )
    executor = {
        "kind": "slurm",
        "partition": "cpu",
        "time": "00:20:00",
        "cpus_per_task": 2,
        "mem_per_cpu_gb": 1,
        "qos": "low",
        "sbatch_args": {"account": "lm"},
        "poll_s": 1,
    }
    slurm, res = run_kind(
        "extract",
        {"from": "crawl", "tasks": 2, "workers": 2, "timeout_s": 120, "executor": executor},
        tmp_path / "home2",
        inputs={"from_": [crawl]},
        stage="text",
        log=quiet,
    )
    assert res is not None and slurm.version == local.version
    assert (slurm.path / "documents.parquet").read_bytes() == (local.path / "documents.parquet").read_bytes()

    scripts = sorted(jobs.glob("job-*.sh"))
    assert len(scripts) == 2  # the array job and datatrove's stats-merging job
    main = scripts[0].read_text()
    for directive in (
        "--partition=cpu",
        "--time=00:20:00",
        "--cpus-per-task=2",
        "--mem-per-cpu=1024M",
        "--qos=low",
        "--account=lm",
        "--array=0-1%2",
    ):
        assert f"#SBATCH {directive}" in main, directive
    assert re.search(r"srun .*launch_pickled_pipeline \S+/extract_logs/executor\.pik", main)
    assert "export HF_HUB_OFFLINE=1" in main and "PYTHONPATH=" in main
    assert "--export=ALL,RUN_OFFSET=0" in (jobs / "job-4200.args").read_text()
    merge = scripts[1].read_text()  # datatrove's stats merge, after the array job succeeded
    assert "#SBATCH --dependency=afterok:4200" in merge and "merge_stats " in merge


def test_slurm_without_sbatch_names_the_setting(tmp_path, monkeypatch):
    from ops.data.pipeline import ExecutorError, ExecutorSettings, open_executor

    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    s = ExecutorSettings(kind="slurm", partition="cpu", time="1:00", setting="stage 'text', field 'executor'")
    from datatrove.pipeline.readers import JsonlReader

    with (
        open_executor(s) as runner,
        pytest.raises(ExecutorError, match=r"field 'executor'.kind: slurm needs `sbatch`"),
    ):
        runner.run([JsonlReader(str(tmp_path))], tmp_path / "logs")
