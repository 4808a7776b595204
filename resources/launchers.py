"""Compute launchers: run a training job out of process (torchrun), through Dagster Pipes when in Dagster.

Key design choice: a launcher only starts a command and streams what it says; the job's real outputs (model
directory, ``result.json``, ``error.json``) are files the job writes, so the stage reads the same result
whichever launcher ran it. ``make_launcher(context)`` returns a :class:`PipesLauncher` (a
``PipesSubprocessClient``: live logs and per-step metrics in the Dagster run, termination forwarded to the
child) when given a Dagster context, else a :class:`SubprocessLauncher` (plain ``subprocess``, output
streamed to the stage log). Only rank 0 of the job opens Pipes (two writers make Dagster fail the run).

Multi-node jobs use torchrun's c10d rendezvous: every node runs one agent (``torchrun_command`` with
``nnodes > 1``) and the agents meet at ``rdzv_endpoint``. :func:`run_local_nodes` starts all the agents of
such a job on this machine (each node's agent a separate process group, as separate machines would be),
which is how a multi-node job is run and tested on one host; on a cluster each node runs its own agent.
:func:`run_torchrun_job` is the whole out-of-process run of a training job: job file, agents, and one error
naming the rank (or the rendezvous) that failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_ENTRY = Path(__file__).resolve().parent / "train_entry.py"
JOB_LOCK = "job.lock"  # in a job's work directory: every live rank holds it shared
# Project modules this one runs in child processes instead of importing: the code version of a stage kind
# that reaches this module covers them too (resources/codehash.py).
CHILD_ENTRY_MODULES = ("resources.train_entry", "resources.lifeline")


def torchrun_command(
    script: Path,
    args: list[str],
    *,
    nproc_per_node: int = 1,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    rdzv_timeout: int | None = None,
    log_dir: Path | None = None,
) -> list[str]:
    """``python -m torch.distributed.run ...``: standalone on one node, c10d rendezvous across nodes.

    ``log_dir`` holds the agent's per-rank log folders (without it torchrun leaves a ``torchelastic_*`` folder
    in the system temp directory on every run).

    ``rdzv_timeout`` bounds how long an agent waits for the other nodes to join (torchrun's
    ``join_timeout``); no restarts, so one failed rank fails the job instead of re-forming the group."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc_per_node}"]
    if nnodes > 1:
        if not rdzv_endpoint:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port of the rendezvous on node 0)")
        cmd += [
            f"--nnodes={nnodes}",
            f"--node_rank={node_rank}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={rdzv_endpoint}",
            "--max_restarts=0",
        ]
        if rdzv_timeout:
            cmd.append(f"--rdzv_conf=join_timeout={int(rdzv_timeout)}")
    else:
        cmd += ["--standalone", "--nnodes=1"]
    if log_dir is not None:
        cmd.append(f"--log-dir={log_dir}")
    return cmd + [str(script), *args]


def child_env(extra: dict[str, str] | None = None, *, threads_per_rank: int | None = None) -> dict[str, str]:
    """Environment for a training child: offline hub, lmforge importable, bounded CPU threads per rank."""
    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    if threads_per_rank:
        env["OMP_NUM_THREADS"] = str(threads_per_rank)
    env.update(extra or {})
    return env


class SubprocessLauncher:
    """Plain subprocess; stdout+stderr are streamed line by line to ``log``; non-zero exit raises."""

    name = "subprocess"

    def __init__(self, log: Callable[[str], None] = print):
        self.log = log

    def run(
        self,
        command: list[str],
        *,
        env: dict[str, str] | None = None,
        extras: dict[str, Any] | None = None,
        cwd: Path | None = None,
    ) -> int:
        full_env = {**os.environ, **(env or {})}
        tail: deque[str] = deque(maxlen=40)
        with subprocess.Popen(
            command,
            cwd=str(cwd or REPO_ROOT),
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as p:
            assert p.stdout is not None
            for line in p.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                if line.strip():
                    self.log(line)
            rc = p.wait()
        if rc != 0:
            raise RuntimeError(f"command exited with {rc}: {' '.join(command)}\n" + "\n".join(tail))
        return rc


class PipesLauncher:
    """``dagster.PipesSubprocessClient`` bound to the asset's context: the child's rank 0 logs and reports
    custom messages (curve records) into the run; terminating the run terminates the child."""

    name = "pipes"

    def __init__(self, context: Any):
        self.context = context
        self.messages: list[Any] = []

    def run(
        self,
        command: list[str],
        *,
        env: dict[str, str] | None = None,
        extras: dict[str, Any] | None = None,
        cwd: Path | None = None,
    ) -> int:
        import dagster as dg

        client = dg.PipesSubprocessClient(env=env, cwd=str(cwd or REPO_ROOT))
        invocation = client.run(command=command, context=self.context, extras=extras or {})
        try:
            self.messages = list(invocation.get_custom_messages())
        except Exception:  # noqa: BLE001 - messages are informational only
            self.messages = []
        return 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (for a loopback rendezvous)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def run_local_nodes(
    launcher: SubprocessLauncher | PipesLauncher,
    commands: list[list[str]],
    *,
    env: dict[str, str] | None = None,
    extras: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    stop_timeout: float = 30.0,
) -> int:
    """Run one torchrun agent per node on this machine: ``commands[0]`` (node 0) through ``launcher``, the
    others as background processes whose output goes to ``log`` prefixed with their node rank.

    Each background agent leads its own process group, so stopping it stops its workers too. If node 0's
    agent fails, or a background agent exits non-zero, the others are stopped (SIGTERM, then SIGKILL after
    ``stop_timeout`` seconds) and the first failure is raised; nothing outlives this call.
    """
    import signal
    import threading

    full_env = {**os.environ, **(env or {})}
    procs: list[subprocess.Popen] = []
    failures: list[str] = []
    readers: list[threading.Thread] = []

    def pump(node: int, p: subprocess.Popen) -> None:
        assert p.stdout is not None
        tail: deque[str] = deque(maxlen=40)
        for line in p.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if line.strip():
                log(f"[node {node}] {line}")
        rc = p.wait()
        if rc != 0:
            failures.append(f"node {node} agent exited with {rc}:\n" + "\n".join(tail))

    def stop_all() -> None:
        for p in procs:
            if p.poll() is None:
                with _suppress_lookup():
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + stop_timeout
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with _suppress_lookup():
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for t in readers:
            t.join(timeout=stop_timeout)

    try:
        for node, cmd in enumerate(commands[1:], start=1):
            p = subprocess.Popen(
                cmd,
                cwd=str(REPO_ROOT),
                env=full_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                start_new_session=True,
            )
            procs.append(p)
            t = threading.Thread(target=pump, args=(node, p), daemon=True)
            t.start()
            readers.append(t)
        launcher.run(commands[0], env=env, extras=extras)
        for p in procs:  # node 0 is done: the job is complete once every other agent reports success
            p.wait()
        for t in readers:
            t.join(timeout=stop_timeout)
        if failures:
            raise RuntimeError(failures[0])
    finally:
        stop_all()
    return 0


def _suppress_lookup() -> Any:
    import contextlib

    return contextlib.suppress(ProcessLookupError, PermissionError)


def make_launcher(
    context: Any = None, log: Callable[[str], None] | None = None
) -> SubprocessLauncher | PipesLauncher:
    """Pipes launcher inside Dagster (``context`` given), plain subprocess launcher otherwise."""
    if context is not None:
        return PipesLauncher(context)
    return SubprocessLauncher(log or print)


def rank_failure(work: Path) -> str | None:
    """Which rank of a failed torchrun job caused the failure, from the records its ranks left in ``work``.

    Blame goes first to a rank that started but never recorded an end (killed by a signal or the OS), then
    to a rank that raised an error of its own, last to ranks the agent terminated; the others are named as
    having stopped after it. None when no rank started (e.g. the rendezvous never completed).
    """
    import json

    states: dict[int, dict[str, Any]] = {}
    for f in work.glob("rank*.json"):
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        states[int(doc["rank"])] = doc
    if not states:
        return None
    errors: dict[int, dict[str, Any]] = {}
    for f in work.glob("error-rank*.json"):
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        errors[int(doc["rank"])] = doc
    vanished = sorted(r for r, d in states.items() if d.get("state") == "running")
    failed = sorted(r for r, d in states.items() if d.get("state") == "failed")
    if vanished:
        r = vanished[0]
        d = states[r]
        what = (
            f"rank {r} (pid {d['pid']} on {d['host']}) died without reporting an error: killed by a signal "
            "or by the OS (e.g. out of memory), or its node was lost"
        )
    elif failed:
        r = failed[0]
        e = errors.get(r, {})
        what = f"rank {r} failed: {e.get('type', 'error')}: {e.get('message', '(no message)')}"
    else:
        return None
    others = sorted(set(states) - {r})
    if others:
        what += "; " + ", ".join(f"rank {o} {states[o].get('state')}" for o in others)
    return what


def run_torchrun_job(
    job: dict[str, Any],
    work: Path,
    *,
    stage: str,
    launcher: SubprocessLauncher | PipesLauncher,
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: int = 0,
    local_nodes: bool = False,
    rdzv_endpoint: str | None = None,
    rdzv_timeout: int = 300,
    cuda: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run a training ``job`` (the JSON-able dict of ``ops.train.lm.run_pretraining``) under torchrun and
    return the ``result.json`` rank 0 wrote into ``work``.

    The job is written to ``work/job.json``; every rank of :data:`TRAIN_ENTRY` reads it. With ``local_nodes``
    every node's agent runs on this machine (:func:`run_local_nodes`); otherwise this machine runs node
    ``node_rank`` and the command for the other nodes is logged. On CPU the threads of this machine are
    shared out between its ranks. A failure is raised as one error naming ``stage``: the rank that caused it
    (:func:`rank_failure`; checkpoints in ``work`` are kept, so the next run resumes), or for a multi-node
    job whose ranks never started, the rendezvous that did not complete.
    """
    import json

    import torch

    from resources.lifeline import guarded
    from resources.store import file_lock

    # Ranks hold this lock (shared) while they live: ranks of an earlier run of this version that are still
    # stopping (their run was killed) finish before new ones start in the same directory.
    with file_lock(work / JOB_LOCK, holder=f"stage {stage!r}", log=log, what=f"training directory {work}"):
        pass
    job_file = work / "job.json"
    job_file.write_text(json.dumps(job, indent=1))
    here = nproc_per_node * (nnodes if local_nodes else 1)  # ranks on this machine
    threads = None if cuda else max(1, (torch.get_num_threads() or 1) // here)
    endpoint = rdzv_endpoint
    if nnodes > 1 and not endpoint:
        endpoint = f"127.0.0.1:{free_port()}"

    def command(node: int) -> list[str]:
        return torchrun_command(
            TRAIN_ENTRY,
            [str(job_file)],
            nproc_per_node=nproc_per_node,
            nnodes=nnodes,
            node_rank=node,
            rdzv_endpoint=endpoint,
            rdzv_timeout=rdzv_timeout,
            log_dir=work / "torchrun_logs",
        )

    env = child_env(threads_per_rank=threads)
    try:
        if nnodes > 1 and local_nodes:
            run_local_nodes(
                launcher,
                [guarded(command(k)) for k in range(nnodes)],
                env=env,
                extras={"job": str(job_file)},
                log=log,
            )
        else:
            if nnodes > 1:
                others = [k for k in range(nnodes) if k != node_rank]
                log(
                    f"multi-node: this machine runs node {node_rank}; start node(s) {others} with "
                    f"(same LMFORGE_HOME path on shared storage): {' '.join(command(others[0]))}"
                )
            launcher.run(guarded(command(node_rank)), env=env, extras={"job": str(job_file)})
    except Exception as e:
        blame = rank_failure(work)
        if blame:
            raise RuntimeError(
                f"stage {stage!r}: {blame}. Checkpoints in {work / 'checkpoints'} are kept: "
                "materializing the stage again resumes from the last one"
            ) from e
        if nnodes > 1:
            raise RuntimeError(
                f"stage {stage!r}, field 'rdzv_endpoint': the {nnodes}-node rendezvous at {endpoint} "
                f"did not complete within rdzv_timeout={rdzv_timeout}s (an agent did not join or the "
                "endpoint is unreachable); no rank started and nothing was stored"
            ) from e
        raise
    rf = work / "result.json"
    if not rf.is_file():
        raise RuntimeError(f"stage {stage!r}: torchrun finished but rank 0 wrote no {rf}")
    return json.loads(rf.read_text())
