"""Tiny "user checkpoints": Llama, Qwen2, Qwen3 and Mistral causal LMs with their own tokenizers and chat
templates (Llama 3's header/``<|eot_id|>`` format, Qwen's ChatML with a default system turn, Mistral's
``[INST]``/``</s>``), randomly initialised with a fixed seed and written with ``save_pretrained`` the way a
user's checkpoint directory looks (``model.safetensors``, ``config.json``, ``generation_config.json``,
``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``). No tokenizer has lmforge's
``<think>``/``<answer>`` special tokens. Built locally from generated task text; nothing is downloaded.

Used by the import tests (the defaults: a ~420-token BPE, 2 layers of width 64) and by ``bench/bench_sft.py``
(a larger vocabulary and shape, passed in), so a benchmark's checkpoint is built exactly like a test's.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

LLAMA_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
MISTRAL_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{- '[INST] ' + message['content'] + ' [/INST]' }}"
    "{%- else %}{{- message['content'] + eos_token }}{%- endif %}"
    "{%- endfor %}"
)
FAMILIES = {
    "llama": {
        "special": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "tokens": {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"},
        "template": LLAMA_TEMPLATE,
    },
    "qwen2": {
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "tokens": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "template": QWEN_TEMPLATE,
    },
    "qwen3": {
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "tokens": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "template": QWEN_TEMPLATE,
    },
    "mistral": {
        "special": ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
        "tokens": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
        "template": MISTRAL_TEMPLATE,
    },
}


TEST_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def task_texts(n: int = 1500, seed: int = 11) -> list[str]:
    """Tokenizer training text: ``n`` generated problems with their worked responses and the role words."""
    from ops.tasks import make_splits

    train, _ = make_splits(n, 10, seed=seed, difficulties=(1, 2))
    return [f"{t.question} {t.response} You are a helpful assistant. user assistant system" for t in train]


def digit_byte_bpe(special: list[str], vocab_size: int, **trainer_kw: Any):
    """An untrained bare ``tokenizers`` BPE with the stage's pre-tokenizer (each digit its own piece, then
    byte-level) and its trainer (``special`` tokens first, the 256-byte initial alphabet): ``(tok, trainer)``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        **trainer_kw,
    )
    return tok, trainer


def build_tokenizer(
    family: str,
    template: str | None = "default",
    *,
    texts: list[str] | None = None,
    vocab_size: int = 420,
    max_len: int = 512,
):
    """A byte-level BPE (digits split) with the family's special tokens and chat template, trained on
    ``texts`` (default :func:`task_texts`)."""
    from transformers import PreTrainedTokenizerFast

    f = FAMILIES[family]
    tok, trainer = digit_byte_bpe(f["special"], vocab_size)
    tok.train_from_iterator(texts if texts is not None else task_texts(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_len, **f["tokens"])
    if template:
        fast.chat_template = f["template"] if template == "default" else template
    return fast


def build_model(family: str, tok, seed: int = 0, *, shape: dict[str, Any] | None = None, max_len: int = 512):
    """The family's causal LM over ``tok``'s vocabulary, ``shape`` (default :data:`TEST_SHAPE`), fp32, seeded
    without touching the caller's RNG; Qwen families tie the embeddings, as the real ones do."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=len(tok),
        **(shape or TEST_SHAPE),
        max_position_embeddings=max_len,
        eos_token_id=tok.convert_tokens_to_ids(FAMILIES[family]["tokens"]["eos_token"]),
        bos_token_id=tok.bos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config, "mistral": MistralConfig}[family]
    cfg = cls(**common, tie_word_embeddings=family.startswith("qwen"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)


def write_checkpoint(family: str, out: Path, *, seed: int = 0, shape: dict[str, Any] | None = None,
                     texts: list[str] | None = None, vocab_size: int = 420, max_len: int = 512) -> Path:
    """A user-style checkpoint directory at ``out``: ``save_pretrained`` of the model and its tokenizer."""
    tok = build_tokenizer(family, texts=texts, vocab_size=vocab_size, max_len=max_len)
    model = build_model(family, tok, seed, shape=shape, max_len=max_len)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@functools.cache
def _cached(family: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix="lmforge-hf-ckpt-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # a per-process cache, removed when it ends
    return write_checkpoint(family, root / f"{family}-ckpt")


def checkpoint(family: str, dest: Path) -> Path:
    """A fresh copy (tests move and modify it) of the family's default tiny checkpoint directory at ``dest``;
    each family is built once per process."""
    shutil.copytree(_cached(family), dest)
    return dest
