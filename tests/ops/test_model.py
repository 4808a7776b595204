"""Model builder: each architecture builds from the spec dict, trains a step, saves as a plain HF directory and
reloads bit-exactly with AutoModelForCausalLM; RoPE/YaRN, GQA and tying reach the transformers config."""

from __future__ import annotations

import pytest

from ops import tokenizer as T
from ops.model import build_model, load_model, make_config, save_model

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tok():
    import pydoc_data.topics as topics

    return T.to_transformers(T.train_bpe(list(topics.topics.values())[:30], 400))


@pytest.mark.parametrize(
    "arch",
    [
        {
            "arch": "qwen2",
            "d_model": 64,
            "layers": 2,
            "heads": 4,
            "kv_heads": 2,
            "max_seq_len": 256,
            "rope_theta": 50000.0,
            "rope_scaling": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 128},
        },
        {"arch": "llama", "d_model": 64, "layers": 1, "heads": 2, "tie_embeddings": False},
        {
            "arch": "qwen2_moe",
            "d_model": 64,
            "layers": 1,
            "heads": 4,
            "kv_heads": 2,
            "experts": 4,
            "top_k": 2,
        },
        {"arch": "deepseek_v3", "d_model": 64, "layers": 2, "heads": 4, "experts": 4, "top_k": 2},
        {
            "arch": "minimax",
            "d_model": 64,
            "layers": 4,
            "heads": 4,
            "kv_heads": 2,
            "full_attention_every": 2,
            "experts": 4,
            "block_size": 8,
        },
    ],
    ids=lambda a: a["arch"],
)
def test_build_save_reload_generate(arch, tok, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    m = build_model(arch, len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    x = torch.randint(0, len(tok), (2, 16))
    m(input_ids=x, labels=x).loss.backward()
    save_model(m, tok, tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    m2 = AutoModelForCausalLM.from_pretrained(str(tmp_path), local_files_only=True)
    assert type(m2) is type(m)
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    out = load_model(tmp_path).generate(x[:1, :4], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)
    assert m2.generation_config.eos_token_id == [0, 3]  # <|endoftext|> and <|im_end|> both stop


def test_config_mapping_and_errors():
    c = make_config(
        {
            "d_model": 128,
            "layers": 2,
            "heads": 4,
            "kv_heads": 1,
            "rope_theta": 1e6,
            "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256},
            "tie_embeddings": False,
        },
        1000,
    )
    assert (c.num_key_value_heads, c.tie_word_embeddings, c.vocab_size) == (1, False, 1000)
    assert c.rope_parameters["rope_type"] == "yarn" and c.rope_parameters["factor"] == 4.0
    assert c.rope_parameters["rope_theta"] == 1e6
    with pytest.raises(ValueError, match="heads 4 is not divisible by kv_heads 3"):
        make_config({"d_model": 128, "layers": 1, "heads": 4, "kv_heads": 3}, 100)
    with pytest.raises(ValueError, match="unknown key"):
        make_config({"d_model": 64, "layers": 1, "experts_typo": 3}, 100)
    with pytest.raises(ValueError, match="Qwen2 always has a QKV bias"):
        make_config({"d_model": 64, "layers": 1, "qkv_bias": False}, 100)
    with pytest.raises(ValueError, match="unknown 'gpt9'"):
        make_config({"arch": "gpt9", "d_model": 64, "layers": 1}, 100)


def test_minimax_config_mapping_and_errors():
    mm = {"arch": "minimax", "d_model": 64, "layers": 8, "heads": 4, "kv_heads": 2}
    c = make_config({**mm, "full_attention_every": 4, "block_size": 32, "experts": 6, "top_k": 1}, 100)
    assert c.model_type == "minimax" and c.block_size == 32
    assert c.layer_types == (["full_attention"] + ["linear_attention"] * 3) * 2
    assert (c.num_local_experts, c.num_experts_per_tok, c.output_router_logits) == (6, 1, True)
    pattern = ["full_attention", "linear_attention"]
    assert make_config({**mm, "layer_pattern": pattern}, 100).layer_types == pattern * 4
    for extra, words in [
        ({"full_attention_every": 3}, "model.full_attention_every: a period of 3 layers does not divide layers 8"),
        ({"layer_pattern": ["linear_attention", "mamba"]}, "model.layer_pattern: unknown layer type(s) ['mamba']"),
        ({"layer_pattern": ["linear_attention", "full_attention"]}, "the first layer must be full_attention"),
        ({"layer_pattern": ["linear_attention"] * 2}, "no full_attention layer"),
        ({}, "needs its layer pattern"),
        ({"full_attention_every": 2, "ffn": 128}, "model.ffn: not a MiniMax setting"),
    ]:
        with pytest.raises(ValueError) as ei:
            make_config({**mm, **extra}, 100)
        assert words in str(ei.value)
    with pytest.raises(ValueError, match="only for arch 'minimax'"):
        make_config({"d_model": 64, "layers": 2, "block_size": 64}, 100)


def test_minimax_cached_sampling_matches_full_recompute(tok):
    """lmforge's sampler (left-padded batch, KV cache for the softmax layers, the recurrent ``K^T V`` state for
    the lightning layers) picks, at every step, the argmax of a fresh full forward over the unpadded prefix:
    the lightning layers' one-token recurrence agrees with their block-wise prefill and padding leaks into
    neither the lightning state nor the softmax layers' cache."""
    import torch

    from ops.generate import sample

    arch = {"arch": "minimax", "d_model": 64, "layers": 4, "heads": 4, "full_attention_every": 2}
    m = build_model({**arch, "block_size": 4, "init_std": 0.2}, len(tok), seed=3).eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, len(tok), (n,), generator=g).tolist() for n in (3, 9, 6)]
    got = sample(m, prompts, max_new_tokens=12, stop_ids=[], pad_id=0, temperature=0.0)
    with torch.no_grad():
        for p, s in zip(prompts, got):
            seq = list(p)
            for _ in range(12):
                seq.append(int(m(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
            assert s.ids == seq[len(p) :]
