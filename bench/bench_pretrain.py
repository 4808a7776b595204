"""Benchmark: tokens/s of lmforge's pretraining core vs a bare PyTorch loop, same model and batches, same run.

Key design choice: both loops train identical copies of the same Qwen2 model on the same pre-built batches
with the same AdamW, clipping and loss (``ops.train.lm.lm_loss``), so the ratio measures only what the core
adds (LR schedule, guards, curve records, checkpoint bookkeeping). The two run step by step in lockstep: the
core's ``batch_fn`` hands it step s's batch right after the bare loop has taken its own step s on the same
batch, so each core step sits next to a bare step in time and a change of load on a shared machine hits both
sides of a pair. A core step is timed from the moment its batch is handed over to the moment the next batch
is asked for (or ``train`` returns), i.e. the whole update, the guard's read, the step record, logging and
checkpoint bookkeeping; a bare step from its forward to its ``zero_grad``. The headline ratio is the median
over all paired steps (after ``WARMUP`` each round) of bare time / core time; tokens/s are per median step.
With CUDA, ``bench/gpu_mfu.py`` also runs.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ARCH = {"arch": "qwen2", "d_model": 128, "layers": 2, "heads": 4, "kv_heads": 2}
VOCAB, BATCH, SEQ, STEPS, WARMUP, ROUNDS = 4096, 16, 128, 24, 4, 3


def _batches(n: int):
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=g) for _ in range(n)]


def _bare_stepper():
    """The bare loop's model and one step of it: forward, loss, backward, clip, AdamW step, zero_grad."""
    import torch

    from ops.model import build_model
    from ops.train.lm import lm_loss

    model = build_model(ARCH, VOCAB, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)

    def step(batch) -> None:
        loss, _ = lm_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def paired_round(data) -> tuple[list[float], list[float]]:
    """One lockstep run of both loops over ``data``: (core step seconds, bare step seconds), step by step."""
    from ops.model import build_model
    from ops.train.core import TrainConfig, train
    from ops.train.lm import lm_loss

    bare_step = _bare_stepper()
    core_s: list[float] = []
    bare_s: list[float] = []
    handed: list[float] = []  # when the core got its latest batch

    def batch_fn(step: int, micro: int):
        asked = time.perf_counter()
        if handed:
            core_s.append(asked - handed[-1])
        x = data[step]
        batch = {"input_ids": x[:, :-1], "labels": x[:, 1:]}
        t0 = time.perf_counter()
        bare_step(batch)
        bare_s.append(time.perf_counter() - t0)
        handed.append(time.perf_counter())
        return batch

    train(
        build_model(ARCH, VOCAB, seed=0),
        lm_loss,
        batch_fn,
        TrainConfig(steps=len(data), lr=1e-3, schedule="cosine", warmup_steps=2, log_every=10),
        progress=False,
        log=lambda s: None,
    )
    core_s.append(time.perf_counter() - handed[-1])
    return core_s, bare_s


def run(out_dir: Path | str) -> dict:
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = _batches(STEPS)
    load_start = list(os.getloadavg())
    core: list[float] = []
    bare: list[float] = []
    round_ratios = []
    for _ in range(ROUNDS):
        c, b = paired_round(data)
        core += c[WARMUP:]
        bare += b[WARMUP:]
        round_ratios.append(sum(b[WARMUP:]) / sum(c[WARMUP:]))
    tokens = BATCH * SEQ
    ratio = statistics.median(bs / cs for cs, bs in zip(core, bare, strict=True))
    res = {
        "model": ARCH,
        "vocab": VOCAB,
        "batch": BATCH,
        "seq_len": SEQ,
        "steps": STEPS,
        "rounds": ROUNDS,
        "paired_steps": len(core),
        "threads": torch.get_num_threads(),
        "core_tokens_per_s": tokens / statistics.median(core),
        "bare_tokens_per_s": tokens / statistics.median(bare),
        "core_step_ms_quartiles": [round(q * 1e3, 2) for q in statistics.quantiles(core, n=4)],
        "bare_step_ms_quartiles": [round(q * 1e3, 2) for q in statistics.quantiles(bare, n=4)],
        "round_ratios": round_ratios,
        "ratio": ratio,
        "target_ratio": 0.95,
        "load_avg_start": load_start,
        "load_avg_end": list(os.getloadavg()),
    }
    if torch.cuda.is_available():
        from bench.gpu_mfu import run as gpu_run

        res["gpu_mfu"] = gpu_run(out)
    (out / "bench_pretrain.json").write_text(json.dumps(res, indent=2))
    (out / "bench_pretrain.md").write_text(
        "# Pretraining core vs bare PyTorch loop (CPU)\n\n| loop | tokens/s (median of "
        f"{len(core)} paired steps) |\n|---|---|\n| lmforge core | {res['core_tokens_per_s']:,.0f} |\n"
        f"| bare loop | {res['bare_tokens_per_s']:,.0f} |\n\nratio {ratio:.3f} (median over paired steps of "
        f"bare/core step time; target >= 0.95); per round (summed times) "
        f"{', '.join(f'{r:.3f}' for r in round_ratios)}\n"
    )
    return res


if __name__ == "__main__":
    r = run(sys.argv[1] if len(sys.argv) > 1 else ROOT / "bench" / "results")
    print(json.dumps({k: r[k] for k in ("core_tokens_per_s", "bare_tokens_per_s", "ratio")}, indent=2))
