"""Shared, process-cached builders for the post-training tests: a digit-splitting BPE trained on generated
task text, tiny random Qwen2 models, and (built once per test session) a small SFT'd arithmetic model.

Everything is built locally from generated tasks; nothing is downloaded. The caches are per process, so the
expensive SFT model is trained once however many test modules use it.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

ROOT = Path(tempfile.mkdtemp(prefix="lmforge-posttrain-tests-"))
atexit.register(shutil.rmtree, ROOT, ignore_errors=True)  # the test process's cache, not left behind in /tmp

# The reduced setting every post-training test shares: easy problems, a model that learns them in ~1 min.
DIFFICULTIES = (1,)
ARCH = {"arch": "qwen2", "d_model": 96, "layers": 3, "heads": 4, "kv_heads": 2, "max_seq_len": 256}


@functools.lru_cache(maxsize=1)
def tokenizer_dir() -> Path:
    from ops.tasks import make_splits
    from ops.tokenizer import chat_prompt, chat_response, save_tokenizer, train_bpe

    train, _ = make_splits(2000, 10, seed=11, difficulties=(1, 2, 3))
    texts = [chat_prompt(t.question) + chat_response(t.solution, t.answer) for t in train]
    out = ROOT / "tokenizer"
    save_tokenizer(train_bpe(texts, vocab_size=400), out)
    return out


def tokenizer():
    from ops.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir())


def tiny_model(tok, seed: int = 0, arch: dict | None = None):
    from ops.model import build_model

    return build_model(
        arch or ARCH, len(tok), seed=seed, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
    )


def base_model_dir() -> Path:
    """A randomly initialised tiny model saved as a model artifact directory (tokenizer included)."""
    return _base_model_dir()


@functools.lru_cache(maxsize=1)
def _base_model_dir() -> Path:
    from ops.model import save_model

    tok = tokenizer()
    out = ROOT / "base_model"
    save_model(tiny_model(tok), tok, out)
    return out


SFT_STEPS = 250


@functools.lru_cache(maxsize=1)
def sft_model_dir() -> Path:
    """A tiny model SFT'd from random init on easy problems (trained once per test process, ~1 min idle)."""
    import torch

    from ops.model import save_model
    from ops.posttrain.common import Example
    from ops.posttrain.sft import SFTParams, train_sft
    from ops.tasks import make_splits

    torch.manual_seed(0)
    tok = tokenizer()
    train, _ = make_splits(3000, 100, seed=0, difficulties=DIFFICULTIES)
    ex = [Example(t.id, t.question, t.response, t.answer) for t in train]
    model, _, _ = train_sft(
        tiny_model(tok),
        tok,
        ex,
        SFTParams(steps=SFT_STEPS, lr=3e-3, batch_size=32),
        work_dir=None,
        log=lambda s: None,
    )
    out = ROOT / "sft_model"
    save_model(model, tok, out)
    return out


def task_splits():
    from ops.tasks import make_splits

    return make_splits(3000, 100, seed=0, difficulties=DIFFICULTIES)
