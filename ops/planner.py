"""Compute planner: parameter counts, training FLOPs (6ND + attention), Chinchilla-style sizing, time estimates.

Key design choice: counts are analytic (closed-form from the architecture dict, no model is built), so a plan
costs microseconds and can be shown before anything trains; a test checks them against
``ops.model.count_params`` on real models. FLOPs per trained token follow the PaLM appendix:
``6 * N_matmul + 12 * n_layers * d_attn * seq_len`` where ``N_matmul`` counts every weight used in a matrix
multiply per token (the LM head yes, the embedding lookup no; for MoE only ``top_k`` routed experts).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ops.model import minimax_period

# Dense bf16 peak FLOP/s per device (vendor datasheets, no sparsity). CPU: unknown -> no MFU.
PEAK_FLOPS = {
    "h200": 989e12,
    "h100": 989e12,
    "a100": 312e12,
    "l40s": 362e12,
    "a10g": 125e12,
    "l4": 121e12,
    "4090": 165e12,
    "3090": 71e12,
    "v100": 125e12,
}
# What this project measured for a 5M-param Qwen2 on 2 shared cores (reference/measured-facts.md).
CPU_ACHIEVED_FLOPS = 8e10


def peak_flops_for(device_name: str | None) -> float | None:
    """Known bf16 peak for a CUDA device name (``torch.cuda.get_device_name``), else None."""
    if not device_name:
        return None
    n = device_name.lower()
    for key, v in PEAK_FLOPS.items():
        if key in n:
            return v
    return None


def _dims(arch: dict[str, Any]) -> dict[str, Any]:
    d = int(arch["d_model"])
    heads = int(arch.get("heads", max(1, d // 64)))
    kv = int(arch.get("kv_heads", heads))
    ffn = int(arch.get("ffn", int(32 * -(-(8 * d // 3) // 32))))
    return {"d": d, "L": int(arch["layers"]), "h": heads, "kv": kv, "hd": d // heads, "ffn": ffn}


def param_counts(arch: dict[str, Any], vocab_size: int) -> dict[str, int]:
    """``total`` (stored, tied once), ``embedding``, ``matmul`` (per-token matmul weights, for FLOPs),
    ``active`` (total minus unused routed experts) for the architectures of ``ops.model``."""
    a = arch.get("arch", "qwen2")
    x = _dims(arch)
    d, L, hd, kv, ffn = x["d"], x["L"], x["hd"], x["kv"], x["ffn"]
    tied = bool(arch.get("tie_embeddings", True))
    emb = vocab_size * d
    head = 0 if tied else vocab_size * d
    norms = 2 * d
    if a in ("qwen2", "llama", "qwen2_moe"):
        bias = (
            a == "qwen2"
            or (a == "qwen2_moe" and arch.get("qkv_bias", True) is not False)
            or (a == "llama" and bool(arch.get("qkv_bias", False)))
        )
        attn_w = d * d + 2 * d * kv * hd + d * d
        attn_b = (d + 2 * kv * hd) if bias else 0
        if a == "llama" and bias:  # Llama's attention_bias also puts a bias on the output projection
            attn_b += d
        if a == "qwen2_moe":
            e, k = int(arch.get("experts", 8)), int(arch.get("top_k", 2))
            ef = int(arch.get("expert_ffn", max(32, ffn // 4)))
            sf = int(arch.get("shared_expert_ffn", ffn))
            router, shared = d * e, 3 * d * sf + d  # shared expert + its sigmoid gate
            mlp_total = router + e * 3 * d * ef + shared
            mlp_active = router + k * 3 * d * ef + shared
        else:
            mlp_total = mlp_active = 3 * d * ffn
        layer_total = attn_w + attn_b + norms + mlp_total
        layer_active = attn_w + attn_b + norms + mlp_active
        attn_matmul = attn_w
        total = emb + head + L * layer_total + d
        active = emb + head + L * layer_active + d
        matmul = L * (attn_matmul + (mlp_active if a == "qwen2_moe" else 3 * d * ffn)) + vocab_size * d
        return {"total": total, "active": active, "embedding": emb, "matmul": matmul}
    if a == "minimax":
        n_full, n_lin = _minimax_layer_counts(arch)
        e, k = int(arch.get("experts", 8)), int(arch.get("top_k", 2))
        ef = int(arch.get("expert_ffn", max(32, int(32 * -(-(8 * d // 3) // 32)) // k)))
        full_attn = d * d + 2 * d * kv * hd + d * d  # q, k, v (GQA), o; no bias
        lin_attn = 3 * d * d + d * d + d * d  # fused qkv, output gate, out projection
        lin_norm = d  # RMSNorm over the heads' outputs
        moe_total, moe_active = d * e + e * 3 * d * ef, d * e + k * 3 * d * ef  # router + SwiGLU experts
        attn_total = n_full * full_attn + n_lin * (lin_attn + lin_norm)
        total = emb + head + d + L * (norms + moe_total) + attn_total
        active = emb + head + d + L * (norms + moe_active) + attn_total
        matmul = n_full * full_attn + n_lin * lin_attn + L * moe_active + vocab_size * d
        return {"total": total, "active": active, "embedding": emb, "matmul": matmul}
    if a == "deepseek_v3":
        h = x["h"]
        r = int(arch.get("qk_rope_head_dim", max(8, d // h // 2)))
        nope = int(arch.get("qk_nope_head_dim", d // h))
        vd = int(arch.get("v_head_dim", d // h))
        kvr = int(arch.get("kv_lora_rank", max(16, d // 4)))
        qr = arch.get("q_lora_rank")
        qk = nope + r
        q = (d * qr + qr + qr * h * qk) if qr else d * h * qk
        attn = q + d * (kvr + r) + kvr + kvr * h * (nope + vd) + h * vd * d
        e, k = int(arch.get("experts", 8)), int(arch.get("top_k", 2))
        ef = int(arch.get("expert_ffn", max(32, ffn // 4)))
        n_sh = int(arch.get("shared_experts", 1))
        dense_k = int(arch.get("dense_layers", 1))
        moe_total = d * e + e * 3 * d * ef + 3 * d * ef * n_sh  # router + experts + shared
        moe_active = d * e + k * 3 * d * ef + 3 * d * ef * n_sh
        dense = 3 * d * ffn
        total = emb + head + d + L * (attn + norms) + dense_k * dense + (L - dense_k) * moe_total
        active = emb + head + d + L * (attn + norms) + dense_k * dense + (L - dense_k) * moe_active
        matmul = L * (attn - kvr - (qr or 0)) + dense_k * dense + (L - dense_k) * moe_active + vocab_size * d
        return {"total": total, "active": active, "embedding": emb, "matmul": matmul}
    raise ValueError(f"model.arch: unknown {a!r}")


def _minimax_layer_counts(arch: dict[str, Any]) -> tuple[int, int]:
    """``(softmax layers, lightning layers)`` of a MiniMax arch dict."""
    from ops.model import minimax_layer_types

    types = minimax_layer_types(int(arch["layers"]), arch.get("full_attention_every"), arch.get("layer_pattern"))
    n_full = types.count("full_attention")
    return n_full, len(types) - n_full


def attention_flops_per_token(arch: dict[str, Any], seq_len: int) -> float:
    """Training FLOPs per token of the attention score/value products: 12 * L * d_attn * T (PaLM).

    A MiniMax lightning layer pays that only within its block (``min(block_size, T)`` instead of T) plus
    the inter-block recurrence: per token ``q @ KV`` and the ``K^T V`` state update, each ``d_attn * head_dim``
    multiply-adds, which does not grow with T."""
    x = _dims(arch)
    if arch.get("arch") == "minimax":
        n_full, n_lin = _minimax_layer_counts(arch)
        d_attn = x["h"] * x["hd"]
        intra = min(int(arch.get("block_size", 256)), seq_len)
        return 12.0 * d_attn * (n_full * seq_len + n_lin * (intra + x["hd"]))
    if arch.get("arch") == "deepseek_v3":
        h = x["h"]
        qk = int(arch.get("qk_nope_head_dim", x["hd"])) + int(
            arch.get("qk_rope_head_dim", max(8, x["hd"] // 2))
        )
        vd = int(arch.get("v_head_dim", x["hd"]))
        return 6.0 * x["L"] * h * (qk + vd) * seq_len
    return 12.0 * x["L"] * x["h"] * x["hd"] * seq_len


def train_flops_per_token(arch: dict[str, Any], vocab_size: int, seq_len: int) -> float:
    return 6.0 * param_counts(arch, vocab_size)["matmul"] + attention_flops_per_token(arch, seq_len)


@dataclass
class Plan:
    arch: dict[str, Any]
    params: int  # stored parameters
    active_params: int
    matmul_params: int  # N of 6ND
    tokens: int  # training tokens D
    steps: int
    tokens_per_step: int
    flops: float  # estimated training FLOPs (6ND + attention)
    flops_per_token: float
    est_seconds: float
    throughput_assumed: float  # FLOP/s used for the time estimate
    rationale: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ladder(arch_name: str = "qwen2") -> list[dict[str, Any]]:
    """Candidate shapes for automatic sizing: depth grows with width (d_model = 64 * heads, d/layers ~ 32-64)."""
    out = []
    for d, L in (
        (64, 2),
        (96, 3),
        (128, 4),
        (192, 6),
        (256, 6),
        (384, 8),
        (512, 8),
        (768, 12),
        (1024, 16),
        (1536, 20),
        (2048, 24),
        (3072, 28),
        (4096, 32),
    ):
        h = max(2, d // 64)
        out.append({"arch": arch_name, "d_model": d, "layers": L, "heads": h, "kv_heads": max(1, h // 2)})
    return out


def plan(
    *,
    vocab_size: int,
    seq_len: int,
    tokens_per_step: int,
    arch: dict[str, Any] | None = None,
    tokens: float | None = None,
    budget_flops: float | None = None,
    tokens_per_param: float = 20.0,
    throughput: float | None = None,
    arch_name: str = "qwen2",
) -> Plan:
    """Size a run. Exactly one sizing path applies:

    * ``arch`` has ``d_model`` and ``layers``: that model; tokens = ``tokens`` or the FLOPs budget divided by
      FLOPs/token, else ``tokens_per_param * N``;
    * otherwise a ladder shape is chosen: with ``budget_flops`` C, N ~ sqrt(C / (6 r)) (Chinchilla, r tokens per
      parameter) and D = C / FLOPs-per-token; with ``tokens`` D, N ~ D / r.
    """
    thr = throughput or CPU_ACHIEVED_FLOPS
    why = []
    if arch and "d_model" in arch and "layers" in arch:
        chosen = dict(arch)
        fpt = train_flops_per_token(chosen, vocab_size, seq_len)
        pc = param_counts(chosen, vocab_size)
        if tokens:
            d_tok = float(tokens)
            why.append("model and tokens given")
        elif budget_flops:
            d_tok = budget_flops / fpt
            why.append(f"model given; tokens = budget {budget_flops:.3g} FLOPs / {fpt:.3g} FLOPs per token")
        else:
            d_tok = tokens_per_param * pc["matmul"]
            why.append(f"model given; tokens = {tokens_per_param} x {pc['matmul']} params (Chinchilla-style)")
    else:
        base = {k: v for k, v in (arch or {}).items() if k not in ("d_model", "layers")}
        name = base.get("arch", arch_name)
        if budget_flops:
            n_target = math.sqrt(budget_flops / (6.0 * tokens_per_param))
            why.append(
                f"budget {budget_flops:.3g} FLOPs, {tokens_per_param} tokens/param -> N ~ {n_target:.3g}"
            )
        elif tokens:
            n_target = float(tokens) / tokens_per_param
            why.append(f"{float(tokens):.3g} tokens at {tokens_per_param} tokens/param -> N ~ {n_target:.3g}")
        else:
            raise ValueError("planner: give model.d_model and model.layers, or tokens, or budget_flops")
        cands = [{**c, **base, "arch": name} for c in ladder(name)]
        period = minimax_period(cands[0])
        for c in cands:  # a hybrid's depth is whole periods of its layer pattern
            c["layers"] = period * -(-c["layers"] // period)
        chosen = min(cands, key=lambda c: abs(math.log(param_counts(c, vocab_size)["matmul"] / n_target)))
        pc = param_counts(chosen, vocab_size)
        fpt = train_flops_per_token(chosen, vocab_size, seq_len)
        d_tok = float(tokens) if tokens else budget_flops / fpt
        why.append(f"chose d_model={chosen['d_model']}, layers={chosen['layers']} (N_matmul={pc['matmul']})")
    steps = max(1, round(d_tok / tokens_per_step))
    d_real = steps * tokens_per_step
    flops = fpt * d_real
    why.append(
        f"{steps} steps x {tokens_per_step} tokens = {d_real} tokens, {flops:.3g} FLOPs, "
        f"~{flops / thr:.0f} s at {thr:.3g} FLOP/s"
    )
    return Plan(
        arch=chosen,
        params=pc["total"],
        active_params=pc["active"],
        matmul_params=pc["matmul"],
        tokens=d_real,
        steps=steps,
        tokens_per_step=tokens_per_step,
        flops=flops,
        flops_per_token=fpt,
        est_seconds=flops / thr,
        throughput_assumed=thr,
        rationale="; ".join(why),
    )
