"""glibc's allocator set up for torch's CPU work: freed tensor memory is kept for the next tensor instead of
being returned to the kernel and faulted in again.

Key design choice: a training or sampling step allocates and frees tensors of changing sizes (a KV cache
that grows by a token, logits of a length group). glibc maps each block above its mmap threshold afresh
and trims the heap's free top above its trim threshold, so the next block of that size is zero-filled by
the kernel page by page. Its thresholds adapt only upward and only to sizes already freed, so growing sizes
keep paying. :func:`tune_malloc` fixes both: blocks up to glibc's largest mmap threshold (32 MiB) come from
the heap, and up to :data:`TRIM_THRESHOLD` of free heap top is kept. Only where memory lives changes, never
a value computed: training is bit for bit the same (tested). It is process-wide and idempotent; it does
nothing off glibc, when ``LMFORGE_MALLOC_TUNING=0``, or when the process already chose its allocator
(``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` set, or jemalloc / tcmalloc / mimalloc preloaded).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

ENV = "LMFORGE_MALLOC_TUNING"
# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's upper limit for this setting on 64-bit
TRIM_THRESHOLD = 512 * 2**20  # free heap top kept at most; beyond it the heap is trimmed as usual
_PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")

_applied: str | None = None


def skip_reason(env: dict[str, str] | None = None) -> str | None:
    """Why the allocator is left as it is in this process (``env`` defaults to ``os.environ``), or None."""
    env = os.environ if env is None else env
    if env.get(ENV, "").strip() in ("0", "false", "no", "off"):
        return f"{ENV}={env[ENV]}"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    chosen = [k for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_") if k in env]
    if chosen:
        return f"{chosen[0]} is set"
    pre = env.get("LD_PRELOAD", "")
    for name in _PRELOADED:
        if name in pre:
            return f"{name} is preloaded"
    return None


def tune_malloc() -> str | None:
    """Set glibc's mmap and trim thresholds for this process (once); returns what was set, or None with
    nothing changed (see :func:`skip_reason`)."""
    global _applied
    if _applied is not None:
        return _applied
    if skip_reason() is not None:
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    # mmap threshold first: setting either one turns glibc's adaptive thresholds off
    if not libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) or not libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD):
        return None
    _applied = f"glibc malloc: mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold {TRIM_THRESHOLD >> 20} MiB"
    return _applied
