"""Compute launchers: run a training job out of process (torchrun), through Dagster Pipes when in Dagster.

Key design choice: a launcher only starts a command and streams what it says; the job's real outputs (model
directory, ``result.json``, ``error.json``) are files the job writes, so the stage reads the same result
whichever launcher ran it. ``make_launcher(context)`` returns a :class:`PipesLauncher` (a
``PipesSubprocessClient``: live logs and per-step metrics in the Dagster run, termination forwarded to the
child) when given a Dagster context, else a :class:`SubprocessLauncher` (plain ``subprocess``, output
streamed to the stage log). Only rank 0 of the job opens Pipes (two writers make Dagster fail the run).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_ENTRY = Path(__file__).resolve().parent / "train_entry.py"
# Project modules this one runs in child processes instead of importing: the code version of a stage kind
# that reaches this module covers them too (resources/codehash.py).
CHILD_ENTRY_MODULES = ("resources.train_entry",)


def torchrun_command(
    script: Path,
    args: list[str],
    *,
    nproc_per_node: int = 1,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
) -> list[str]:
    """``python -m torch.distributed.run ...``: standalone on one node, c10d rendezvous across nodes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc_per_node}"]
    if nnodes > 1:
        if not rdzv_endpoint:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port of the rendezvous on node 0)")
        cmd += [
            f"--nnodes={nnodes}",
            f"--node_rank={node_rank}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={rdzv_endpoint}",
        ]
    else:
        cmd += ["--standalone", "--nnodes=1"]
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


def make_launcher(
    context: Any = None, log: Callable[[str], None] | None = None
) -> SubprocessLauncher | PipesLauncher:
    """Pipes launcher inside Dagster (``context`` given), plain subprocess launcher otherwise."""
    if context is not None:
        return PipesLauncher(context)
    return SubprocessLauncher(log or print)
