"""Benchmark: tokens/s of lmforge's pretraining core vs a bare PyTorch loop, same model and batches, same run.

Key design choice: both loops train identical copies of the same Qwen2 model on the same pre-built batches
with the same AdamW, clipping and loss (``ops.train.lm.lm_loss``), so the ratio measures only what the core
adds (LR schedule, guards, curve records, checkpoint bookkeeping). Rounds alternate core/bare to spread
machine noise evenly, and the best round of each is reported. With CUDA, ``bench/gpu_mfu.py`` also runs.
"""

from __future__ import annotations

import json
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


def bare_loop(data) -> float:
    import torch

    from ops.model import build_model
    from ops.train.lm import lm_loss

    model = build_model(ARCH, VOCAB, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    t0 = 0.0
    for i, x in enumerate(data):
        if i == WARMUP:
            t0 = time.perf_counter()
        loss, _ = lm_loss(model, {"input_ids": x[:, :-1], "labels": x[:, 1:]})
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (len(data) - WARMUP) * BATCH * SEQ / (time.perf_counter() - t0)


def core_loop(data) -> float:
    from ops.model import build_model
    from ops.train.core import TrainConfig, train
    from ops.train.lm import lm_loss

    model = build_model(ARCH, VOCAB, seed=0)
    marks: dict[str, float] = {}

    def batch_fn(step: int, micro: int):
        if step == WARMUP:
            marks["t0"] = time.perf_counter()
        x = data[step]
        return {"input_ids": x[:, :-1], "labels": x[:, 1:]}

    train(
        model,
        lm_loss,
        batch_fn,
        TrainConfig(steps=len(data), lr=1e-3, schedule="cosine", warmup_steps=2, log_every=10),
        progress=False,
        log=lambda s: None,
    )
    return (len(data) - WARMUP) * BATCH * SEQ / (time.perf_counter() - marks["t0"])


def run(out_dir: Path | str) -> dict:
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = _batches(STEPS)
    core, bare = [], []
    for _ in range(ROUNDS):
        core.append(core_loop(data))
        bare.append(bare_loop(data))
    res = {
        "model": ARCH,
        "vocab": VOCAB,
        "batch": BATCH,
        "seq_len": SEQ,
        "steps": STEPS,
        "rounds": ROUNDS,
        "threads": torch.get_num_threads(),
        "core_tokens_per_s": max(core),
        "bare_tokens_per_s": max(bare),
        "core_rounds": core,
        "bare_rounds": bare,
        "ratio": max(core) / max(bare),
        "target_ratio": 0.95,
    }
    if torch.cuda.is_available():
        from bench.gpu_mfu import run as gpu_run

        res["gpu_mfu"] = gpu_run(out)
    (out / "bench_pretrain.json").write_text(json.dumps(res, indent=2))
    (out / "bench_pretrain.md").write_text(
        "# Pretraining core vs bare PyTorch loop (CPU)\n\n| loop | tokens/s (best of "
        f"{ROUNDS}) |\n|---|---|\n| lmforge core | {max(core):,.0f} |\n| bare loop | {max(bare):,.0f} |\n\n"
        f"ratio {res['ratio']:.3f} (target >= 0.95)\n"
    )
    return res


if __name__ == "__main__":
    r = run(sys.argv[1] if len(sys.argv) > 1 else ROOT / "bench" / "results")
    print(json.dumps({k: r[k] for k in ("core_tokens_per_s", "bare_tokens_per_s", "ratio")}, indent=2))
