"""Tiny chat models for tests and the benchmark: lmforge's own BPE tokenizer (``ops.tokenizer``) trained in
memory on generated arithmetic tasks (``ops.tasks``) and a Qwen2 from ``ops.model``, saved as a real model
artifact directory.

Key design choice: nothing is downloaded and nothing is special-cased: the tokenizer speaks the project's
chat format, so everything evaluation does to a real ``model`` artifact (chat template, ``<think>`` /
``<answer>`` parsing, budget forcing) runs unchanged on it. A few seconds of training on think/answer
responses make the model close its thinking on its own, which the budget-forcing behaviour needs; accuracy
is not the point.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any


def tiny_tasks(n_train: int = 200, n_eval: int = 40, seed: int = 0):
    """Train/eval arithmetic tasks (difficulty 1) from the shared generator."""
    from ops.tasks import make_splits

    return make_splits(n_train, n_eval, seed=seed, difficulties=(1,))


def build_tokenizer(texts: list[str], vocab_size: int = 400) -> Any:
    from ops.tokenizer import to_transformers, train_bpe

    return to_transformers(train_bpe(texts, vocab_size, min_frequency=2))


def train_think_answer(
    model, tok, tasks, steps: int = 60, lr: float = 3e-3, seed: int = 0, batch: int = 16
) -> list[float]:
    """A few steps of next-token training on chat-formatted think/answer examples; returns the losses."""
    import torch

    from ops.tokenizer import chat_prompt, chat_response

    g = random.Random(seed)
    seqs = [
        tok(chat_prompt(t.question) + chat_response(t.solution, t.answer), add_special_tokens=False)[
            "input_ids"
        ]
        for t in tasks
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        b = [seqs[g.randrange(len(seqs))] for _ in range(batch)]
        n = max(len(s) for s in b)
        ids = torch.full((len(b), n), tok.pad_token_id)
        labels = torch.full((len(b), n), -100)
        for i, s in enumerate(b):
            ids[i, : len(s)] = torch.tensor(s)
            labels[i, : len(s)] = torch.tensor(s)
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def make_tiny_chat_model(
    out: Path,
    *,
    train_steps: int = 60,
    seed: int = 0,
    d_model: int = 32,
    layers: int = 2,
    extra_texts: tuple[str, ...] = (),
    arch: dict[str, Any] | None = None,
) -> Path:
    """Write a tokenizer + ``save_pretrained`` directory into ``out``; returns ``out``. The model is a Qwen2 of
    ``d_model`` x ``layers`` unless ``arch`` (an :func:`ops.model.build_model` dict) says otherwise."""
    from ops.model import build_model, save_model
    from ops.tokenizer import chat_response

    train, ev = tiny_tasks(seed=seed)
    texts = [t.question + " " + chat_response(t.solution, t.answer) for t in train + ev]
    texts += ["Wait", " Wait", *extra_texts]
    tok = build_tokenizer(texts)
    model = build_model(
        arch or {"arch": "qwen2", "d_model": d_model, "layers": layers, "heads": 4, "kv_heads": 2},
        len(tok),
        seed=seed,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
    )
    if train_steps:
        train_think_answer(model, tok, train, steps=train_steps, seed=seed)
    save_model(model, tok, out)
    return Path(out)


def cached_tiny_chat_model(root: Path, **kw: Any) -> Path:
    """:func:`make_tiny_chat_model` into ``root/<params>``, reused when already complete (test sessions)."""
    import shutil

    from ops.fingerprint import stable_hash

    out = Path(root) / f"tiny-chat-{stable_hash(kw, 8)}"
    if (out / ".complete").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    make_tiny_chat_model(tmp, **kw)
    (tmp / ".complete").write_text("ok")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
