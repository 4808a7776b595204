"""Running datatrove pipelines from a stage: deterministic folders, offline environment, merged stats, and
the executor that runs the tasks (this process, a Ray cluster or Slurm).

Key design choices:

* Every datatrove run of a stage gets a fresh ``logging_dir`` under the stage's work directory (wiped
  first), so ``skip_completed`` never mixes ranks of an earlier failed attempt with this one, and per-step
  statistics (kept/dropped and the reason of each drop) are read back from ``stats.json``.
* ``local``: ``workers=1`` runs tasks in-process (safe inside Dagster and pytest); with more workers the
  pool uses ``fork`` (no ``__main__`` guard is needed, unlike datatrove's default ``forkserver``).
* ``ray`` and ``slurm`` run the very same pipeline objects with the same number of tasks: on Ray each rank
  runs datatrove's per-rank code on a pool of long-lived actors, one per worker, that serve every run of
  the stage (ops/data/ray_pool.py: a fresh process per task would pay the imports each time); on Slurm
  through datatrove's ``SlurmPipelineExecutor``. Each rank reads the same input shard and writes the same
  rank-numbered output file as it would locally, and the stages merge those files in a canonical order, so
  the artifact does not depend on the executor (which is why the executor is not part of a stage's
  version). Work folders must be on a filesystem the cluster's workers share.
* A run that leaves any rank incomplete raises: datatrove's Ray and Slurm executors only log it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The folder that holds the ``ops`` package: cluster workers need it on their path to unpickle lmforge's
# pipeline steps (a shared filesystem, or lmforge installed on every node).
SOURCE_ROOT = Path(__file__).resolve().parents[2]
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DATATROVE_COLORIZE_LOGS": "0",
    "DATATROVE_COLORIZE_LOG_FILES": "0",
}


def offline_env() -> None:
    """Make anything that still reaches for the Hub fail fast, and keep datatrove logs uncoloured."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


def fresh_dir(p: Path) -> Path:
    shutil.rmtree(p, ignore_errors=True)
    p.mkdir(parents=True)
    return p


def run_local(
    pipeline: list[Any], logging_dir: Path, tasks: int = 1, workers: int = 1, start_method: str = "fork"
) -> list[dict[str, Any]]:
    """Run ``pipeline`` with ``LocalPipelineExecutor`` and return its merged per-step stats."""
    offline_env()
    from datatrove.executor import LocalPipelineExecutor

    fresh_dir(logging_dir)
    ex = LocalPipelineExecutor(
        pipeline=pipeline,
        tasks=tasks,
        workers=min(workers, tasks),
        logging_dir=str(logging_dir),
        start_method=start_method,
    )
    # datatrove's extractor runs each document in a forked helper that it stops with SIGTERM. A helper that
    # inherited a host's SIGTERM handler (Dagster installs one that raises) prints a spurious traceback, so
    # children are forked with the default handler; the host's handler is restored afterwards.
    import signal
    import threading

    prev = None
    if threading.current_thread() is threading.main_thread():
        prev = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        ex.run()
    finally:
        if prev is not None:
            signal.signal(signal.SIGTERM, prev)
    return read_stats(logging_dir)


def read_stats(logging_dir: Path) -> list[dict[str, Any]]:
    """``stats.json``, or the per-rank ``stats/*.json`` merged when no executor wrote the total."""
    f = logging_dir / "stats.json"
    if f.exists():
        return json.loads(f.read_text())
    ranks = sorted((logging_dir / "stats").glob("*.json"))
    if not ranks:
        return []
    from datatrove.utils.stats import PipelineStats

    total = PipelineStats()
    for r in ranks:
        total += PipelineStats.from_json(json.loads(r.read_text()))
    return json.loads(total.to_json())


def step_counts(stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per step: name, total, forwarded, dropped and every ``dropped_<reason>`` / other counter (totals)."""
    out = []
    for step in stats:
        counters = {}
        for k, v in (step.get("stats") or {}).items():
            counters[k] = v.get("total", 0) if isinstance(v, dict) else v
        out.append({"name": step.get("name", ""), **counters})
    return out


@dataclass(frozen=True)
class ExecutorSettings:
    """Where a stage's datatrove tasks run. ``kind``: ``local`` (this machine), ``ray`` (a running Ray
    cluster at ``address``, ``host:port`` of its GCS) or ``slurm`` (sbatch array jobs on ``partition``).
    ``setting`` is how errors name it (the stage field holding it)."""

    kind: str = "local"
    address: str = ""
    connect_timeout_s: float = 10.0
    cpus_per_task: int = 1
    mem_per_cpu_gb: float = 2.0
    partition: str = ""
    time: str = ""
    qos: str = ""
    job_name: str = "lmforge"
    env_command: str = ""
    sbatch_args: dict[str, str] = field(default_factory=dict)
    poll_s: float = 10.0
    setting: str = "executor"


class ExecutorError(RuntimeError):
    """A run that could not start or did not complete on its executor; the message names the setting."""


def _ray_address(s: ExecutorSettings) -> tuple[str, int]:
    host, sep, port = s.address.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ExecutorError(f"{s.setting}.address: {s.address!r} is not host:port (the Ray head's GCS port)")
    return host, int(port)


def check_ray_address(s: ExecutorSettings) -> None:
    """Fail within ``connect_timeout_s`` when nothing listens at the Ray address (``ray.init`` itself keeps
    retrying for minutes before it gives up)."""
    host, port = _ray_address(s)
    try:
        with socket.create_connection((host, port), timeout=s.connect_timeout_s):
            pass
    except OSError as e:
        raise ExecutorError(
            f"{s.setting}.address: no Ray cluster answers at {s.address} "
            f"({type(e).__name__}: {e}; waited at most {s.connect_timeout_s:g}s). "
            f"Start one with `ray start --head --port {port}` or fix the address."
        ) from None


class Runner:
    """Runs datatrove pipelines on one executor; open it with :func:`open_executor`."""

    def __init__(self, settings: ExecutorSettings, warm: tuple[str, ...] = ()):
        self.settings = settings
        self.warm = warm
        self._pool: Any = None
        self.failures: dict[int, str] = {}

    def pool(self) -> Any:
        """The Ray actor pool of this connection (created on first use)."""
        if self._pool is None:
            from .ray_pool import RayRankPool

            s = self.settings
            self._pool = RayRankPool(s.cpus_per_task, s.mem_per_cpu_gb, s.setting, self.warm)
        return self._pool

    def run(
        self, pipeline: list[Any], logging_dir: Path, tasks: int = 1, workers: int = 1
    ) -> list[dict[str, Any]]:
        """Run ``pipeline`` as ``tasks`` ranks (at most ``workers`` at once); return the merged step stats."""
        s = self.settings
        if s.kind == "local":
            return run_local(pipeline, logging_dir, tasks=tasks, workers=workers)
        offline_env()
        fresh_dir(logging_dir)
        if s.kind == "ray":
            ex = self._ray(pipeline, logging_dir, tasks, workers)
        elif s.kind == "slurm":
            ex = self._slurm(pipeline, logging_dir, tasks, workers)
        else:
            raise ExecutorError(f"{s.setting}.kind: unknown executor {s.kind!r} (local, ray or slurm)")
        missing = ex.get_incomplete_ranks(range(tasks))
        if missing:
            why = "".join(f"; rank {r}: {self.failures[r]}" for r in missing[:3] if r in self.failures)
            raise ExecutorError(
                f"{s.setting}: {len(missing)} of {tasks} datatrove task(s) did not complete on {s.kind} "
                f"(ranks {missing[:10]}){why}; their logs are in {logging_dir / 'logs'}"
                f"{_log_tail(logging_dir)}"
            )
        return read_stats(logging_dir)

    def _ray(self, pipeline: list[Any], logging_dir: Path, tasks: int, workers: int) -> Any:
        """Run the ranks on the connection's actor pool (ops/data/ray_pool.py) with datatrove's per-rank
        code; the per-rank stats are merged by :func:`read_stats`."""
        from datatrove.executor import RayPipelineExecutor

        s = self.settings
        ex = RayPipelineExecutor(
            pipeline=pipeline,
            tasks=tasks,
            workers=max(1, min(workers, tasks)),
            logging_dir=str(logging_dir),
            cpus_per_task=s.cpus_per_task,
            mem_per_cpu_gb=s.mem_per_cpu_gb,
        )
        ex.save_executor_as_json()
        self.failures = self.pool().run(ex, ex.get_incomplete_ranks(range(tasks)), ex.workers)
        return ex

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _slurm(self, pipeline: list[Any], logging_dir: Path, tasks: int, workers: int) -> Any:
        """Submit the sbatch array with datatrove's script, then wait until every rank has completed or the
        job has left the queue."""
        from datatrove.executor import SlurmPipelineExecutor

        s = self.settings
        env = [f"source {Path(sys.prefix) / 'bin' / 'activate'}"] if not s.env_command else [s.env_command]
        env += [f"export {k}={v}" for k, v in OFFLINE_ENV.items()]
        env.append(f'export PYTHONPATH="{SOURCE_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"')
        ex = SlurmPipelineExecutor(
            pipeline=pipeline,
            tasks=tasks,
            workers=max(1, min(workers, tasks)),
            time=s.time,
            partition=s.partition,
            cpus_per_task=s.cpus_per_task,
            mem_per_cpu_gb=s.mem_per_cpu_gb,
            job_name=f"{s.job_name}-{logging_dir.name}",
            qos=s.qos,
            env_command="; ".join(env),
            # Slurm wants a whole number with a unit; datatrove would write e.g. "0.5G"
            sbatch_args={"mem-per-cpu": f"{round(s.mem_per_cpu_gb * 1024)}M", **s.sbatch_args},
            logging_dir=str(logging_dir),
        )
        import subprocess

        try:
            ex.run()
        except FileNotFoundError as e:
            raise ExecutorError(f"{s.setting}.kind: slurm needs `sbatch` on PATH ({e})") from None
        except subprocess.CalledProcessError as e:
            raise ExecutorError(
                f"{s.setting}: sbatch refused the job ({e}); script: {_script(logging_dir)}"
            ) from e
        job = str(ex.job_id)
        while ex.get_incomplete_ranks(range(tasks)):
            if not _slurm_job_queued(job):
                time.sleep(min(s.poll_s, 2.0))  # completion markers can trail the job's exit
                break
            time.sleep(s.poll_s)
        return ex


def _script(logging_dir: Path) -> Path:
    return logging_dir / "launch_script.slurm"


def _slurm_job_queued(job: str) -> bool:
    """Whether Slurm still lists the job (pending or running); no ``squeue`` means it cannot be watched."""
    import subprocess

    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%i"], capture_output=True, text=True, timeout=60
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def _log_tail(logging_dir: Path, chars: int = 1500) -> str:
    logs = sorted((logging_dir / "logs").glob("task_*.log"))
    for f in logs:
        text = f.read_text(errors="replace")
        if "Traceback" in text or "ERROR" in text:
            return f"\n--- {f.name} (tail) ---\n{text[-chars:]}"
    return ""


@contextmanager
def open_executor(
    settings: ExecutorSettings | None, workers: int = 0, warm: tuple[str, ...] = ()
) -> Iterator[Runner]:
    """A :class:`Runner` for ``settings`` (local when ``None``). For Ray this connects this process to the
    cluster (after a bounded reachability check) and starts ``workers`` actors right away, each importing
    ``warm`` (the libraries the stage's steps load lazily); at the end it ends them and disconnects.
    Workers get lmforge's source folder on their ``PYTHONPATH`` and the offline environment."""
    s = settings or ExecutorSettings()
    if s.kind != "ray":
        yield Runner(s)
        return
    check_ray_address(s)
    import ray

    if ray.is_initialized():
        ray.shutdown()
    env = dict(OFFLINE_ENV)
    env["PYTHONPATH"] = f"{SOURCE_ROOT}:${{PYTHONPATH}}"
    try:
        ray.init(
            address=s.address,
            runtime_env={"env_vars": env},
            logging_level="WARNING",
            log_to_driver=False,
            configure_logging=False,
        )
    except Exception as e:  # noqa: BLE001 - any failure to join is reported with the setting named
        raise ExecutorError(f"{s.setting}.address: could not join the Ray cluster at {s.address}: {e}") from e
    runner = Runner(s, warm)
    try:
        if workers > 0:
            runner.pool().start(workers)
        yield runner
    finally:
        runner.close()
        ray.shutdown()
