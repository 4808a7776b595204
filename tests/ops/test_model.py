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
