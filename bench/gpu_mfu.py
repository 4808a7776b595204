"""GPU MFU benchmark: lmforge's pretraining path vs a minimal hand-written decoder of the same shape, same run.

Key design choice: both variants train the same ~100M-parameter Qwen-style shape (d=768, 12 layers, 12 heads,
4 KV heads, SwiGLU 2048, vocab 32768, T=1024) in bf16 autocast with ``torch.compile``, fused AdamW, on the same
random batches; variant "lmforge" is ``ops.model.build_model`` (HF ``Qwen2ForCausalLM``) driven by
``ops.train.core.train`` with the same loss the ``pretrain`` stage uses; variant "minimal" is a ~60-line
decoder and a bare loop. MFU = tokens/s x training FLOPs/token (``ops.planner``, 6N + attention) / peak.

    python bench/gpu_mfu.py --out bench/results            # on a CUDA machine
    python bench/gpu_mfu.py --smoke                        # tiny shape on CPU: checks the code runs
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FULL = {
    "d_model": 768,
    "layers": 12,
    "heads": 12,
    "kv_heads": 4,
    "ffn": 2048,
    "vocab": 32768,
    "seq": 1024,
    "batch": 32,
    "steps": 30,
    "warmup": 10,
}
SMOKE = {
    "d_model": 64,
    "layers": 2,
    "heads": 4,
    "kv_heads": 2,
    "ffn": 128,
    "vocab": 512,
    "seq": 64,
    "batch": 4,
    "steps": 4,
    "warmup": 2,
}


def minimal_decoder(shape: dict):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    d, h, kv, ffn, V = shape["d_model"], shape["heads"], shape["kv_heads"], shape["ffn"], shape["vocab"]
    hd = d // h

    class RMSNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(d))

        def forward(self, x):
            return self.w * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).type_as(
                x
            )

    def rope(x, cos, sin):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.n1, self.n2 = RMSNorm(), RMSNorm()
            self.qkv = nn.Linear(d, (h + 2 * kv) * hd, bias=True)
            self.o = nn.Linear(h * hd, d, bias=False)
            self.gu = nn.Linear(d, 2 * ffn, bias=False)
            self.down = nn.Linear(ffn, d, bias=False)

        def forward(self, x, cos, sin):
            B, T, _ = x.shape
            q, k, v = self.qkv(self.n1(x)).split([h * hd, kv * hd, kv * hd], -1)
            q = rope(q.view(B, T, h, hd).transpose(1, 2), cos, sin)
            k = rope(k.view(B, T, kv, hd).transpose(1, 2), cos, sin)
            v = v.view(B, T, kv, hd).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            x = x + self.o(a.transpose(1, 2).reshape(B, T, d))
            g, u = self.gu(self.n2(x)).chunk(2, -1)
            return x + self.down(F.silu(g) * u)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(V, d)
            self.blocks = nn.ModuleList(Block() for _ in range(shape["layers"]))
            self.norm = RMSNorm()
            inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
            f = torch.outer(torch.arange(shape["seq"]).float(), inv)
            self.register_buffer("cos", f.cos(), persistent=False)
            self.register_buffer("sin", f.sin(), persistent=False)

        def forward(self, idx):
            T = idx.shape[1]
            x = self.emb(idx)
            for b in self.blocks:
                x = b(x, self.cos[:T], self.sin[:T])
            return F.linear(self.norm(x), self.emb.weight)  # tied head

    return Decoder()


def _batches(shape: dict, n: int, device):
    import torch

    g = torch.Generator().manual_seed(0)
    return [
        torch.randint(0, shape["vocab"], (shape["batch"], shape["seq"] + 1), generator=g).to(device)
        for _ in range(n)
    ]


def bench_minimal(shape: dict, device, compile: bool) -> float:
    import torch
    import torch.nn.functional as F

    model = minimal_decoder(shape).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")
    fwd = torch.compile(model) if compile else model
    data = _batches(shape, shape["steps"], device)
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    t0 = None
    for i, x in enumerate(data):
        if i == shape["warmup"]:
            _sync(device)
            t0 = time.perf_counter()
        with amp:
            logits = fwd(x[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, shape["vocab"]), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return (shape["steps"] - shape["warmup"]) * shape["batch"] * shape["seq"] / (time.perf_counter() - t0)


def bench_lmforge(shape: dict, device, compile: bool) -> float:
    from ops.model import build_model
    from ops.train.core import TrainConfig, train
    from ops.train.lm import lm_loss

    arch = {
        "arch": "qwen2",
        "d_model": shape["d_model"],
        "layers": shape["layers"],
        "heads": shape["heads"],
        "kv_heads": shape["kv_heads"],
        "ffn": shape["ffn"],
        "max_seq_len": shape["seq"],
    }
    model = build_model(arch, shape["vocab"], device=str(device))
    data = _batches(shape, shape["steps"], device)
    marks: dict[int, float] = {}

    def batch_fn(step, micro):
        if step == shape["warmup"]:
            _sync(device)
            marks[0] = time.perf_counter()
        x = data[step]
        return {"input_ids": x[:, :-1], "labels": x[:, 1:]}

    train(
        model,
        lm_loss,
        batch_fn,
        TrainConfig(steps=shape["steps"], lr=3e-4, compile=compile, log_every=0),
        progress=False,
        log=lambda s: None,
    )
    _sync(device)
    return (
        (shape["steps"] - shape["warmup"]) * shape["batch"] * shape["seq"] / (time.perf_counter() - marks[0])
    )


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run(out_dir: Path | str | None = None, smoke: bool = False) -> dict:
    import torch

    from ops import planner

    cuda = torch.cuda.is_available() and not smoke
    device = torch.device("cuda" if cuda else "cpu")
    shape = SMOKE if smoke or not cuda else FULL
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    arch = {
        "arch": "qwen2",
        "d_model": shape["d_model"],
        "layers": shape["layers"],
        "heads": shape["heads"],
        "kv_heads": shape["kv_heads"],
        "ffn": shape["ffn"],
    }
    fpt = planner.train_flops_per_token(arch, shape["vocab"], shape["seq"])
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = planner.peak_flops_for(name)
    res: dict = {
        "device": name,
        "shape": shape,
        "flops_per_token": fpt,
        "peak_flops": peak,
        "params": planner.param_counts(arch, shape["vocab"])["total"],
        "variants": {},
    }
    for variant, fn in (("minimal", bench_minimal), ("lmforge", bench_lmforge)):
        for comp in (False, True) if cuda else (False,):
            tps = fn(shape, device, comp)
            key = f"{variant}{'+compile' if comp else ''}"
            res["variants"][key] = {"tokens_per_s": tps, "mfu": tps * fpt / peak if peak else None}
    v = res["variants"]
    best = "+compile" if cuda else ""
    res["ratio_lmforge_vs_minimal"] = (
        v[f"lmforge{best}"]["tokens_per_s"] / v[f"minimal{best}"]["tokens_per_s"]
    )
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_mfu.json").write_text(json.dumps(res, indent=2))
        rows = [
            f"| {k} | {x['tokens_per_s']:,.0f} | {x['mfu'] if x['mfu'] is None else round(x['mfu'], 3)} |"
            for k, x in v.items()
        ]
        (out / "gpu_mfu.md").write_text(
            f"# GPU MFU ({name}, {res['params'] / 1e6:.1f}M params, T={shape['seq']}, B={shape['batch']})\n\n"
            "| variant | tokens/s | MFU |\n|---|---|---|\n"
            + "\n".join(rows)
            + f"\n\nlmforge / minimal: {res['ratio_lmforge_vs_minimal']:.3f}\n"
        )
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    r = run(a.out, smoke=a.smoke)
    print(
        json.dumps(
            {k: r[k] for k in ("device", "variants", "ratio_lmforge_vs_minimal")}, indent=2, default=str
        )
    )
    sys.exit(0 if all(math.isfinite(x["tokens_per_s"]) for x in r["variants"].values()) else 1)
