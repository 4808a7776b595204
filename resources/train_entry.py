"""torchrun entry point: every rank runs ``ops.train.lm.run_pretraining`` on the same job file.

Usage (built by the ``pretrain`` stage through ``resources/launchers.py``)::

    python -m torch.distributed.run --standalone --nproc_per_node=2 resources/train_entry.py job.json

Key design choice: only rank 0 opens Dagster Pipes (when the launcher set it up) and sends logs and curve
records; other ranks print nothing but errors. Whatever rank fails writes ``error-rank<k>.json`` into the
job's work directory before re-raising, so the stage can raise one clear error (e.g. the step of a NaN)
whichever launcher ran the job. Each rank also leaves ``rank<k>.json`` (its pid and host, then its final
state: ``running``, ``done`` or ``failed``; a SIGTERM from the agent is recorded as ``terminated``), so a
rank that vanished without a word (SIGKILL, the OOM killer, a lost node) is told apart from the ranks that
stopped because of it. A rank holds the job lock (``job.lock``, shared) while it lives, so a new run of the
job waits for it, and asks for SIGTERM when its agent dies (``resources/lifeline.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import traceback
from pathlib import Path


class Terminated(BaseException):
    """The torchrun agent sent SIGTERM (it stops every rank once one of them has failed)."""


def _state(work: Path, rank: int, state: str) -> None:
    doc = {"rank": rank, "pid": os.getpid(), "host": socket.gethostname(), "state": state}
    tmp = work / f".rank{rank}.json.tmp"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, work / f"rank{rank}.json")


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated("terminated by the torchrun agent (SIGTERM)")


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[1]).read_text())
    work = Path(job["work_dir"])
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    signal.signal(signal.SIGTERM, _on_sigterm)
    from resources.launchers import JOB_LOCK
    from resources.lifeline import die_with_parent

    die_with_parent(os.getppid())
    lock = os.open(work / JOB_LOCK, os.O_RDWR | os.O_CREAT, 0o644)  # open until this process ends
    fcntl.flock(lock, fcntl.LOCK_SH)
    _state(work, rank, "running")

    from ops.train.malloc import tune_malloc

    tune_malloc()
    import torch
    import torch.distributed as dist

    backend = job.get("backend") or (
        "nccl" if torch.cuda.is_available() and job.get("device") != "cpu" else "gloo"
    )
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1:
        dist.init_process_group(backend)

    pipes_cm: contextlib.AbstractContextManager = contextlib.nullcontext()
    if rank == 0 and os.environ.get("DAGSTER_PIPES_CONTEXT"):
        from dagster_pipes import open_dagster_pipes

        pipes_cm = open_dagster_pipes()
    try:
        with pipes_cm as pipes:
            if pipes is not None:
                log = pipes.log.info

                def on_log(rec: dict) -> None:
                    pipes.report_custom_message(rec)
            else:

                def log(msg: str) -> None:
                    if rank == 0:
                        print(msg, flush=True)

                on_log = None
            from ops.train.lm import run_pretraining

            run_pretraining(job, log=log, on_log=on_log, progress=rank == 0 and pipes is None)
        _state(work, rank, "done")
    except BaseException as e:
        _state(work, rank, "terminated" if isinstance(e, Terminated) else "failed")
        (work / f"error-rank{rank}.json").write_text(
            json.dumps(
                {
                    "rank": rank,
                    "type": type(e).__name__,
                    "message": str(e),
                    "traceback": traceback.format_exc(),
                }
            )
        )
        raise
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
