"""Compute planner: analytic parameter counts match real transformers models; the FLOPs estimate is within 10% of
6*N*D + the attention term for known configurations; budget sizing follows the tokens-per-parameter rule."""

from __future__ import annotations

import pytest

from ops import planner
from ops.model import active_params, build_model, count_params

pytestmark = pytest.mark.unit

ARCHS = [
    {"arch": "qwen2", "d_model": 64, "layers": 2, "heads": 4, "kv_heads": 2},
    {"arch": "qwen2", "d_model": 96, "layers": 3, "heads": 3, "kv_heads": 1, "tie_embeddings": False},
    {"arch": "llama", "d_model": 64, "layers": 2, "heads": 4, "kv_heads": 2, "qkv_bias": True},
    {"arch": "qwen2_moe", "d_model": 64, "layers": 2, "heads": 4, "kv_heads": 2, "experts": 4, "top_k": 2},
    {
        "arch": "deepseek_v3",
        "d_model": 64,
        "layers": 3,
        "heads": 4,
        "experts": 4,
        "top_k": 2,
        "q_lora_rank": 32,
    },
    {"arch": "minimax", "d_model": 64, "layers": 4, "heads": 4, "kv_heads": 2, "full_attention_every": 2},
    {
        "arch": "minimax",
        "d_model": 64,
        "layers": 3,
        "heads": 2,
        "experts": 4,
        "top_k": 1,
        "expert_ffn": 48,
        "layer_pattern": ["full_attention", "linear_attention", "linear_attention"],
        "tie_embeddings": False,
    },
]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a["arch"])
def test_param_counts_match_real_models(arch):
    pc = planner.param_counts(arch, 500)
    m = build_model(arch, 500)
    assert pc["total"] == count_params(m)
    assert pc["active"] == active_params(m)


def test_flops_estimate_within_10pct_of_6nd_plus_attention():
    # Known configuration: the Qwen2 5.3M model of reference/measured-facts.md (d=256, 6 layers, 8 heads, 2 KV).
    arch = {"arch": "qwen2", "d_model": 256, "layers": 6, "heads": 8, "kv_heads": 2}
    vocab, seq, batch = 4096, 256, 16
    model = build_model(arch, vocab)
    n = count_params(model)  # tied: the embedding counted once (as the LM head)
    p = planner.plan(vocab_size=vocab, seq_len=seq, tokens_per_step=batch * seq, arch=arch, tokens=1e6)
    d_tokens = p.tokens
    reference = 6 * n * d_tokens + 12 * 6 * 256 * seq * d_tokens
    assert abs(p.flops - reference) / reference < 0.10
    assert 5.0e6 < n < 5.6e6  # the "5.3M" of the measured facts


def test_budget_sizing_follows_tokens_per_param():
    c = 1e15
    p = planner.plan(vocab_size=4096, seq_len=256, tokens_per_step=4096, budget_flops=c, tokens_per_param=20)
    ratio = p.tokens / p.matmul_params
    assert 5 < ratio < 80  # ladder granularity around the requested 20
    assert abs(p.flops - c) / c < 0.05  # the budget is spent
    q = planner.plan(vocab_size=4096, seq_len=256, tokens_per_step=4096, budget_flops=c, tokens_per_param=200)
    assert q.matmul_params < p.matmul_params  # more tokens per parameter -> smaller model
    r = planner.plan(
        vocab_size=4096,
        seq_len=128,
        tokens_per_step=2048,
        arch={"arch": "qwen2", "d_model": 128, "layers": 2},
        tokens_per_param=20,
    )
    assert r.tokens == pytest.approx(20 * r.matmul_params, rel=0.01)
    with pytest.raises(ValueError, match="give model.d_model"):
        planner.plan(vocab_size=100, seq_len=8, tokens_per_step=8)


def test_minimax_sizing_keeps_whole_periods_and_flat_lightning_attention_cost():
    p = planner.plan(
        vocab_size=4096,
        seq_len=256,
        tokens_per_step=4096,
        arch={"arch": "minimax", "full_attention_every": 4},
        budget_flops=1e15,
    )
    assert p.arch["layers"] % 4 == 0
    build_model(p.arch, 4096)  # the chosen shape is a valid MiniMax model
    # the softmax layers' attention FLOPs grow with the context, the lightning layers' stop at the block size
    a = {"arch": "minimax", "d_model": 64, "layers": 4, "heads": 4, "full_attention_every": 4, "block_size": 64}
    grow = planner.attention_flops_per_token(a, 1024) - planner.attention_flops_per_token(a, 512)
    assert grow == pytest.approx(12 * 64 * 512)  # one softmax layer: 12 * d_attn * (1024 - 512)


def test_peak_flops_lookup():
    assert planner.peak_flops_for("NVIDIA H200") == 989e12
    assert planner.peak_flops_for("cpu") is None
