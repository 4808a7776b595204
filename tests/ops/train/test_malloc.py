"""The allocator set-up for torch's CPU work (``ops.train.malloc``): freed memory is reused instead of faulted
in again, training is bit for bit what it is without it, and it stays out of the way of an allocator the
process already chose. Each behaviour runs in a fresh process: the setting is process-wide and one-way."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ops.train.malloc import ENV, skip_reason

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.unit

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="the tuning acts on glibc only"
)


def _run(code: str, *, tuned: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in (ENV, "LD_PRELOAD")}
    env["PYTHONPATH"] = str(ROOT)
    env["OMP_NUM_THREADS"] = "1"
    if not tuned:
        env[ENV] = "0"
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# Blocks of growing size, each written and freed, as a KV cache that grows by a token allocates them.
GROWING_BLOCKS = """
    import ctypes, json, resource
    from ops.train.malloc import tune_malloc
    applied = tune_malloc()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for mib in range(2, 31):
        n = mib * 2**20
        p = libc.malloc(n)
        libc.memset(p, 1, n)
        libc.free(p)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"applied": applied, "faults": faults}))
"""


@glibc_only
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    default = _run(GROWING_BLOCKS, tuned=False)
    tuned = _run(GROWING_BLOCKS, tuned=True)
    assert default["applied"] is None and tuned["applied"].startswith("glibc malloc")
    # glibc's own thresholds map every larger block afresh: ~465 MiB of pages in all; tuned, the heap keeps
    # what was freed and only each block's new part (~30 MiB in all) is faulted in
    pages_total = sum(range(2, 31)) * 2**20 // 4096
    assert default["faults"] > pages_total // 2, default
    assert tuned["faults"] < default["faults"] // 4, (tuned, default)


TRAIN = """
    import hashlib, json
    from ops.train.malloc import tune_malloc
    applied = tune_malloc()
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(1)
    from ops.model import build_model
    from ops.train.core import TrainConfig, train
    arch = {"arch": "qwen2", "d_model": 64, "layers": 2, "heads": 2, "kv_heads": 1, "max_seq_len": 128}
    model = build_model(arch, 300, seed=0)

    def batch_fn(step, micro):
        g = torch.Generator().manual_seed(step)
        n = 40 + 8 * (step % 5)  # changing lengths, as SFT's length groups
        x = torch.randint(0, 300, (16, n + 1), generator=g)
        return {"input_ids": x[:, :-1], "labels": x[:, 1:]}

    def loss_fn(m, b):
        logits = m(input_ids=b["input_ids"]).logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), b["labels"].reshape(-1)), {}

    out = train(model, loss_fn, batch_fn, TrainConfig(steps=12, lr=1e-3, log_every=100), progress=False,
                log=lambda s: None)
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode()); h.update(v.numpy().tobytes())
    print(json.dumps({"applied": applied, "weights": h.hexdigest(), "losses": out.losses}))
"""


@glibc_only
def test_training_is_bit_for_bit_the_same_with_the_tuning():
    default = _run(TRAIN, tuned=False)
    tuned = _run(TRAIN, tuned=True)
    assert default["applied"] is None and tuned["applied"]
    assert tuned["losses"] == default["losses"]
    assert tuned["weights"] == default["weights"]


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({ENV: "0"}, f"{ENV}=0"),
        ({ENV: "off"}, f"{ENV}=off"),
        ({"MALLOC_TRIM_THRESHOLD_": "1000000"}, "MALLOC_TRIM_THRESHOLD_ is set"),
        ({"MALLOC_MMAP_THRESHOLD_": "1000000"}, "MALLOC_MMAP_THRESHOLD_ is set"),
        ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "jemalloc is preloaded"),
        ({"LD_PRELOAD": "libtcmalloc_minimal.so.4"}, "tcmalloc is preloaded"),
    ],
)
def test_an_allocator_the_process_already_chose_is_left_alone(env, reason, monkeypatch):
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.36"))
    assert skip_reason(env) == reason
    assert skip_reason({ENV: "1"}) is None and skip_reason({}) is None


def test_other_platforms_are_left_alone(monkeypatch):
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert skip_reason({}) == "not glibc"
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", ""))
    assert skip_reason({}) == "not glibc"


@glibc_only
def test_tuning_is_applied_once_per_process():
    out = _run(
        """
        import json
        from ops.train import malloc
        first = malloc.tune_malloc()
        print(json.dumps({"first": first, "again": malloc.tune_malloc()}))
        """,
        tuned=True,
    )
    assert out["first"] and out["again"] == out["first"]


@glibc_only
def test_a_gpu_pool_stage_sets_up_the_allocator_and_says_so():
    out = _run(
        """
        import json
        from types import SimpleNamespace
        from pipelines.factory import _pool_threads
        said = []
        storage = SimpleNamespace(supports_global_concurrency_limits=False)
        ctx = SimpleNamespace(instance=SimpleNamespace(event_log_storage=storage),
                              log=SimpleNamespace(info=said.append))
        with _pool_threads(SimpleNamespace(pool="data"), ctx):
            pass
        before = list(said)
        with _pool_threads(SimpleNamespace(pool="gpu"), ctx):
            pass
        from ops.train import malloc
        print(json.dumps({"before": before, "said": said, "applied": malloc._applied}))
        """,
        tuned=True,
    )
    assert out["before"] == []
    assert out["applied"] and out["said"][-1].endswith("; " + out["applied"]), out
