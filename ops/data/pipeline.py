"""Running datatrove pipelines from a stage: deterministic folders, offline environment, merged stats.

Key design choice: every datatrove run of a stage gets a fresh ``logging_dir`` under the stage's work
directory (wiped first), so ``skip_completed`` never mixes ranks of an earlier failed attempt with this one,
and per-step statistics (kept/dropped and the reason of each drop) are read back from ``stats.json``.
``workers=1`` runs tasks in-process (safe inside Dagster and pytest); with more workers the pool uses
``fork`` (no ``__main__`` guard is needed, unlike datatrove's default ``forkserver``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def offline_env() -> None:
    """Make anything that still reaches for the Hub fail fast, and keep datatrove logs uncoloured."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("DATATROVE_COLORIZE_LOGS", "0")
    os.environ.setdefault("DATATROVE_COLORIZE_LOG_FILES", "0")


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
    f = logging_dir / "stats.json"
    return json.loads(f.read_text()) if f.exists() else []


def step_counts(stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per step: name, total, forwarded, dropped and every ``dropped_<reason>`` / other counter (totals)."""
    out = []
    for step in stats:
        counters = {}
        for k, v in (step.get("stats") or {}).items():
            counters[k] = v.get("total", 0) if isinstance(v, dict) else v
        out.append({"name": step.get("name", ""), **counters})
    return out
