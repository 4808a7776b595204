"""MiniMax-01 hybrid (lightning linear attention, a softmax layer every k layers, MoE) against the dense Qwen2
default at equal stored parameters and equal training tokens: validation loss, training tokens/s, and the time
per generated token as the context grows (linear attention's point: a lightning layer's per-token cost and
state do not grow with the context; a softmax layer's KV cache does).

``python -m experiments.minimax_vs_qwen2 OUT TOKENS_DIR TOKENIZER_DIR [--tokens N] [--seeds 0 1]
[--contexts 128 512 2048 8192]`` takes a stored ``tokenize`` artifact and its ``train_tokenizer`` artifact
(directories, read only), pretrains both architectures through the ``pretrain`` stage kind in a scratch home
under OUT (seeds interleaved, one torch thread each), times cached greedy decoding of both at each context
length, and writes ``OUT/minimax_vs_qwen2.json`` (every measurement, commit, machine) and prints the markdown
table a ledger entry quotes.

Equal parameters: the Qwen2 shape is the default pipeline's base (d_model 128, 4 layers, 4 heads, 2 KV heads);
the MiniMax model has the same width, depth and heads, one softmax layer then three lightning layers, 4
experts with top-2 routing, and the expert width that brings its stored parameter count closest to Qwen2's
(counts from ``ops.planner.param_counts``, checked against the built models). Both train at seq_len 256 with a
lightning block of 64, so the training sequences cross block boundaries (the inter-block recurrence is used).

Decoding times (batch 1, the same forward calls as ``ops.generate.sample``: a prefill of the context, then one
token per forward with the model's cache) are medians over the decode steps of ``--rounds`` rounds, the two
architectures interleaved per round so machine load hits both alike. Each step's CPU time (one torch thread, so
the thread's CPU clock) is the figure to compare on a shared machine, where a step's wall time is mostly the
wait for a core; wall times are recorded too. The cache's bytes after the prefill are counted from its tensors.

Run again with the same arguments, the stage cache returns the trained models (their metrics read from the
stored manifests) and only the decoding is measured afresh.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BASE = {"d_model": 128, "layers": 4, "heads": 4, "kv_heads": 2}
MINIMAX = {"arch": "minimax", **BASE, "full_attention_every": 4, "experts": 4, "top_k": 2, "block_size": 64}


def _machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {load}, "
        f"Python {platform.python_version()}"
    )


def _commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = (
        " (with uncommitted changes)"
        if git("status", "--porcelain", "--", "ops", "assets", "experiments")
        else ""
    )
    return git("rev-parse", "--short", "HEAD") + dirty


def matched_archs(vocab: int, max_seq_len: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(qwen2, minimax)`` arch dicts with the MiniMax expert width that best matches Qwen2's stored parameters."""
    from ops.planner import param_counts

    qwen = {"arch": "qwen2", **BASE, "max_seq_len": max_seq_len}
    target = param_counts(qwen, vocab)["total"]
    best = min(
        range(16, 1025, 8),
        key=lambda ef: abs(param_counts({**MINIMAX, "expert_ffn": ef}, vocab)["total"] - target),
    )
    return qwen, {**MINIMAX, "expert_ffn": best, "max_seq_len": max_seq_len}


def cache_bytes(cache: Any) -> int:
    """Bytes held by a transformers cache: the softmax layers' keys and values and any linear-attention state."""
    import torch

    n = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                n += t.numel() * t.element_size()
    for t in getattr(cache, "linear_cache", []):
        if isinstance(t, torch.Tensor):
            n += t.numel() * t.element_size()
    return n


def decode_times(model: Any, context: list[int], new_tokens: int) -> dict[str, Any]:
    """Prefill ``context`` (batch 1) and decode ``new_tokens`` greedily with the cache: per-step seconds."""
    import torch

    from ops.generate import _cache, _cache_kwarg, decode_kwargs

    extra, ck = decode_kwargs(model), _cache_kwarg(model)
    ids = torch.tensor([context])
    mask = torch.ones_like(ids)
    pos = torch.arange(len(context))[None]
    with torch.inference_mode():
        t0, c0 = time.perf_counter(), time.thread_time()
        res = model(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1, **extra
        )
        prefill, prefill_cpu = time.perf_counter() - t0, time.thread_time() - c0
        past, logits = _cache(res), res.logits[:, -1]
        nbytes = cache_bytes(past)
        steps, cpu, last = [], [], len(context) - 1
        for _ in range(new_tokens):
            nxt = logits.argmax(-1)
            mask = torch.cat([mask, torch.ones((1, 1), dtype=mask.dtype)], 1)
            last += 1
            t0, c0 = time.perf_counter(), time.thread_time()
            res = model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=torch.tensor([[last]]),
                use_cache=True,
                **{ck: past},
                **extra,
            )
            past, logits = _cache(res), res.logits[:, -1]
            steps.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
    return {
        "prefill_s": prefill,
        "prefill_cpu_s": prefill_cpu,
        "step_s": steps,
        "step_cpu_s": cpu,
        "cache_bytes": nbytes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder for minimax_vs_qwen2.json and the scratch home")
    ap.add_argument("tokens_dir", type=Path, help="a stored tokenize artifact directory")
    ap.add_argument(
        "tokenizer_dir", type=Path, help="the train_tokenizer artifact directory it was made with"
    )
    ap.add_argument("--tokens", type=int, default=400_000, help="training tokens of each model")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--contexts", type=int, nargs="+", default=[128, 512, 2048, 8192])
    ap.add_argument("--new-tokens", type=int, default=32, help="decoded tokens timed per context")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()

    import torch

    from ops.model import load_model
    from ops.tokens import TokenStream
    from pipelines.execute import run_kind
    from resources.store import ArtifactStore

    torch.set_num_threads(1)
    src = {}
    for field, d in (("data", a.tokens_dir), ("tokenizer", a.tokenizer_dir)):
        art = ArtifactStore(d.resolve().parents[2]).get(d.parent.name, d.name)
        if art is None:
            raise SystemExit(f"{d} is not a stored artifact directory (<home>/artifacts/<kind>/<version>)")
        src[field] = [art]
    vocab = TokenStream(a.tokens_dir, "train").vocab_size
    max_ctx = max(a.contexts) + a.new_tokens + 1
    qwen, mm = matched_archs(vocab, max(max_ctx, a.seq_len))
    home = a.out / "home"
    train: dict[str, list[dict[str, Any]]] = {"qwen2": [], "minimax": []}
    arts: dict[str, Any] = {}
    for seed in a.seeds:
        for name, arch in (("qwen2", qwen), ("minimax", mm)):
            cfg = {
                "data": "tokens",
                "tokenizer": "tokenizer",
                "model": arch,
                "tokens": a.tokens,
                "seq_len": a.seq_len,
                "batch_size": a.batch_size,
                "lr": 2e-3,
                "warmup_steps": 30,
                "eval_every": 0,
                "eval_tokens": 8192,
                "ckpt_every": 0,
                "threads": 1,
                "seed": seed,
                "device": "cpu",
            }
            t0 = time.perf_counter()
            art, res = run_kind(
                "pretrain", cfg, home, inputs=src, stage=f"{name}_s{seed}", log=lambda s: None
            )
            if res is not None:
                m = res.metrics
                checks = {c.name: c.passed for c in res.checks}
                curve = res.metadata["curve"].records
            else:  # stored by an earlier run with the same arguments
                import pyarrow.parquet as pq

                m = art.manifest["metrics"]
                checks = {c["name"]: c["passed"] for c in art.manifest["checks"]}
                curve = pq.read_table(art.path / "curve.parquet").to_pylist()
            train[name].append(
                {
                    "seed": seed,
                    "artifact": str(art.path),
                    "params": m["params"],
                    "active_params": m["active_params"],
                    "tokens": m["tokens"],
                    "steps": m["steps"],
                    "val_loss": m["val_loss"],
                    "val_bpb": m["val_bpb"],
                    "first_train_loss": curve[0]["loss"],
                    "final_train_loss": m["final_train_loss"],
                    "tokens_per_s": m["tokens_per_s"],
                    "train_wall_s": m["train_wall_s"],
                    "stage_wall_s": round(time.perf_counter() - t0, 1),
                    "checks": checks,
                }
            )
            arts.setdefault(name, art)
            print(
                f"{name} seed {seed}: val {m['val_loss']:.4f}, {m['tokens_per_s']:.0f} tok/s, checks {checks}",
                file=sys.stderr,
            )

    val = TokenStream(a.tokens_dir, "val").tokens
    models = {name: load_model(art.path).eval() for name, art in arts.items()}
    decode: dict[str, dict[int, list[dict[str, Any]]]] = {n: {c: [] for c in a.contexts} for n in models}
    for r in range(a.rounds):
        for c in a.contexts:
            ctx = [int(val[i % len(val)]) for i in range(r * 97, r * 97 + c)]
            for name, model in models.items():
                decode[name][c].append(decode_times(model, ctx, a.new_tokens))
        print(f"decode round {r} done", file=sys.stderr)

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    summary: dict[str, Any] = {}
    for name in models:
        runs = train[name]
        summary[name] = {
            "params": runs[0]["params"],
            "active_params": runs[0]["active_params"],
            "val_loss": [x["val_loss"] for x in runs],
            "val_loss_mean": statistics.mean(x["val_loss"] for x in runs),
            "tokens_per_s": [x["tokens_per_s"] for x in runs],
            "cpu_ms_per_token": {
                c: 1e3 * med([s for d in decode[name][c] for s in d["step_cpu_s"]]) for c in a.contexts
            },
            "wall_ms_per_token": {
                c: 1e3 * med([s for d in decode[name][c] for s in d["step_s"]]) for c in a.contexts
            },
            "prefill_cpu_s": {c: med([d["prefill_cpu_s"] for d in decode[name][c]]) for c in a.contexts},
            "prefill_s": {c: med([d["prefill_s"] for d in decode[name][c]]) for c in a.contexts},
            "cache_bytes": {c: decode[name][c][0]["cache_bytes"] for c in a.contexts},
        }
    ctx_head = " | ".join(f"CPU ms/token @ {c}" for c in a.contexts)
    head = f"| arch | params (active) | val loss per seed | train tokens/s per seed | {ctx_head} | cache KiB @ {a.contexts[0]} / {a.contexts[-1]} |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, s in summary.items():
        lines.append(
            f"| {name} | {s['params']:,} ({s['active_params']:,}) | "
            + ", ".join(f"{v:.4f}" for v in s["val_loss"])
            + " | "
            + ", ".join(f"{v:.0f}" for v in s["tokens_per_s"])
            + " | "
            + " | ".join(f"{s['cpu_ms_per_token'][c]:.2f}" for c in a.contexts)
            + f" | {s['cache_bytes'][a.contexts[0]] / 1024:.0f} / {s['cache_bytes'][a.contexts[-1]] / 1024:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    a.out.mkdir(parents=True, exist_ok=True)
    result = {
        "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "commit": _commit(),
        "command": "python -m experiments.minimax_vs_qwen2 " + " ".join(shlex.quote(x) for x in sys.argv[1:]),
        "machine": _machine(),
        "torch": torch.__version__,
        "archs": {"qwen2": qwen, "minimax": mm},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "summary": summary,
        "train": train,
        "decode": {n: {str(c): v for c, v in d.items()} for n, d in decode.items()},
        "table": table,
    }
    (a.out / "minimax_vs_qwen2.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {a.out / 'minimax_vs_qwen2.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
