"""Checks of an architecture block (pretrain's ``model``, distill's ``student``: a ``ModelSpec``).

Key design choice: one set of cross-field checks for every kind that builds a decoder, so a setting the
chosen arch does not take, or one that contradicts another, is the same clear compile-time error wherever a
spec writes an architecture (never a ``KeyError`` or a transformers error when the model is built).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .pretrain import ModelSpec

_MOE_FIELDS = ("experts", "top_k", "expert_ffn", "shared_expert_ffn", "router_aux_loss_coef")
_MINIMAX_FIELDS = ("full_attention_every", "layer_pattern", "block_size")
_MLA_FIELDS = (
    "kv_lora_rank",
    "q_lora_rank",
    "qk_rope_head_dim",
    "qk_nope_head_dim",
    "v_head_dim",
    "shared_experts",
    "dense_layers",
)


def arch_problems(m: ModelSpec, field: str) -> list[tuple[str, str]]:
    """``[(field.key, message)]`` for every setting of architecture block ``m`` (the config field ``field``)
    that its arch does not take or that contradicts another (heads vs d_model, top_k vs experts)."""
    errs: list[tuple[str, str]] = []
    if m.arch in ("qwen2", "llama"):
        errs += [
            (f"{field}.{f}", f"only for MoE architectures, not {m.arch!r}")
            for f in _MOE_FIELDS + _MLA_FIELDS
            if getattr(m, f) is not None
        ]
    if m.arch == "qwen2_moe":
        errs += [
            (f"{field}.{f}", "only for arch 'deepseek_v3'") for f in _MLA_FIELDS if getattr(m, f) is not None
        ]
    if m.arch != "minimax":
        errs += [
            (f"{field}.{f}", f"only for arch 'minimax', not {m.arch!r}")
            for f in _MINIMAX_FIELDS
            if getattr(m, f) is not None
        ]
    else:
        from ops.model import NOT_MINIMAX, minimax_pattern_problems

        errs += [
            (f"{field}.{f}", "not a MiniMax setting (no dense MLP, no shared expert, no latent attention; "
             "each expert's width is expert_ffn)")
            for f in NOT_MINIMAX
            if getattr(m, f) is not None
        ]
        if m.qkv_bias:
            errs.append((f"{field}.qkv_bias", "MiniMax's projections have no bias"))
        errs += [  # ops names the block 'model'
            (field + fld.removeprefix("model"), msg)
            for fld, msg in minimax_pattern_problems(m.layers, m.full_attention_every, m.layer_pattern)
        ]
    if m.arch == "qwen2" and m.qkv_bias is False:
        errs.append((f"{field}.qkv_bias", "Qwen2 always has a QKV bias; use arch 'llama' for none"))
    if m.d_model is not None:
        heads = m.heads or max(1, m.d_model // 64)
        if m.d_model % heads:
            errs.append((f"{field}.heads", f"d_model {m.d_model} is not divisible by heads {heads}"))
        elif m.kv_heads and heads % m.kv_heads:
            errs.append((f"{field}.kv_heads", f"heads {heads} is not divisible by kv_heads {m.kv_heads}"))
    if m.top_k and m.experts and m.top_k > m.experts:
        errs.append((f"{field}.top_k", f"top_k {m.top_k} > experts {m.experts}"))
    return errs
