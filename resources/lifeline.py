"""Tie a training child's life to the process that started it, so a killed run leaves no training behind.

Key design choice: Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``), asked for in the child and
kept across ``exec``: when the process that started it dies, SIGKILLed or crashed, the kernel sends the child
SIGTERM, and a torchrun agent stops its ranks on SIGTERM. Without it a SIGKILLed ``lmforge materialize`` left
its agent and ranks training on as orphans, beside the next run of the same version in the same directory.
Where the signal is not available nothing is set; the job lock (``resources/launchers.py``) still keeps a
new run from starting while survivors of an earlier one run.

    python -m resources.lifeline PID -- COMMAND [ARGS...]   # exec COMMAND, which gets SIGTERM when PID dies
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> bool:
    """Ask for ``sig`` when this process's parent dies; False where the platform cannot.

    ``parent`` is the pid that started this process: if it died before the request was made (this process
    was already re-parented), ``sig`` is sent at once."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)
    return True


def guarded(command: list[str], parent: int | None = None) -> list[str]:
    """``command`` run through this module: it gets SIGTERM when ``parent`` (default: this process) dies."""
    return [sys.executable, "-m", "resources.lifeline", str(parent or os.getpid()), "--", *command]


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m resources.lifeline PID -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    die_with_parent(int(argv[1]))
    os.execvp(argv[3], argv[3:])
    return 1  # not reached: exec replaces this process


if __name__ == "__main__":
    sys.exit(main(sys.argv))
