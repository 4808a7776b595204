"""Shared pieces of the post-training objectives: training examples from artifacts, chat encoding with an
assistant-only label mask, packing, collation, and task accuracy of a model.

Key design choice: a training example is always ``(question, response)`` text rendered through the
tokenizer's chat template; the prompt and the response are tokenized separately and concatenated, so the
label mask falls exactly on the assistant tokens (response + the template's turn end: ``<|im_end|>`` for
lmforge and ChatML tokenizers, ``<|eot_id|>`` for Llama 3's) whatever the BPE merges.
Packing puts several examples in one row with a block-diagonal causal mask and per-example position ids,
so a packed row computes exactly what the examples would compute alone (tested).
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.generate import ChatTemplateError, chat_prompts, generate, require_chat_template, turn_end
from ops.tasks import Task, extract_answer, format_ok, is_correct, read_task_set

IM_END = "<|im_end|>"


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    response: str  # assistant content without the closing <|im_end|>
    answer: str = ""
    parent_ids: tuple[str, ...] = field(default_factory=tuple)
    context: tuple[tuple[str, str], ...] = ()  # (role, content) turns before the question (system, history)


def examples_from_artifact(
    produces: str,
    path: Path,
    split: str = "train",
    answer_format: str | None = None,
    prompt_template: str | None = None,
) -> list[Example]:
    """SFT examples from a "tasks" (worked solutions, rendered in the task set's answer format and prompt
    template unless overridden), "sft_data" (multi-turn rows keep their earlier turns as context) or
    "rollouts" (accuracy == 1 only) artifact directory."""
    import json

    import pyarrow.parquet as pq

    if produces == "tasks":
        return [
            Example(t.id, t.question, t.response, t.answer, (t.id,))
            for t in read_task_set(path, split, answer_format, prompt_template)
        ]
    if produces == "sft_data":
        rows = pq.read_table(path / "sft.parquet").to_pylist()
        return [
            Example(
                r["id"],
                r["prompt"],
                r["response"],
                r.get("answer") or "",
                tuple(r.get("parent_ids") or ()),
                tuple((m["role"], m["content"]) for m in json.loads(r.get("context") or "[]")),
            )
            for r in rows
        ]
    if produces == "rollouts":
        rows = pq.read_table(path / "rollouts.parquet").to_pylist()
        return [
            Example(r["id"], r["prompt"], strip_stop(r["completion"]), r["answer"], (r["id"],))
            for r in rows
            if r.get("reward_accuracy", 0.0) >= 1.0
        ]
    raise ValueError(f"cannot train on artifact type {produces!r}")


# A completion's closing special token: ``<|im_end|>``, ``<|endoftext|>``, ``<|eot_id|>``, ``</s>``...
_STOP_RE = re.compile(r"(?:<\|[A-Za-z0-9_]+\|>|</s>)$")


def strip_stop(text: str) -> str:
    """The completion without the special token that ended it (whichever model's it is)."""
    return _STOP_RE.sub("", text)


def encode_example(tok: Any, question: str, response: str, max_len: int) -> tuple[list[int], int] | None:
    """``(ids, n_prompt)`` for one conversation (response + the turn end); None if longer than ``max_len``."""
    p = chat_prompts(tok, [question])[0]
    r = tok(strip_stop(response) + turn_end(tok), add_special_tokens=False)["input_ids"]
    ids = p + list(r)
    return (ids, len(p)) if len(ids) <= max_len else None


def example_prompts(tok: Any, examples: list[Example]) -> list[list[int]]:
    """Prompt ids of each example: its context turns and question through the chat template, ending with
    the generation prompt (plain single-turn examples exactly as :func:`ops.generate.chat_prompts`)."""
    from jinja2 import TemplateError

    out = chat_prompts(tok, [e.question for e in examples])
    for i, e in enumerate(examples):
        if e.context:
            msgs = [{"role": r, "content": c} for r, c in e.context] + [{"role": "user", "content": e.question}]
            try:
                text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            except TemplateError as err:  # templates that refuse a system turn (Mistral's, Gemma's) raise here
                roles = ", ".join(m["role"] for m in msgs)
                raise ChatTemplateError(
                    f"example {e.id!r}: the model's chat template refuses its turns ({roles}): {err}; drop those "
                    "turns from the data or give the hf_model stage a chat_template that accepts them"
                ) from None
            out[i] = list(tok(text, add_special_tokens=False)["input_ids"])
    return out


def encode_all(tok: Any, examples: list[Example], max_len: int) -> tuple[list[tuple[list[int], int]], int]:
    """Encode every example; returns ``(encoded, n_dropped_too_long)``."""
    require_chat_template(tok)
    if not examples:
        return [], 0
    prompts = example_prompts(tok, examples)
    end = turn_end(tok)
    resp = tok([strip_stop(e.response) + end for e in examples], add_special_tokens=False)["input_ids"]
    out, dropped = [], 0
    for p, r in zip(prompts, resp):
        ids = p + list(r)
        if len(ids) > max_len:
            dropped += 1
        else:
            out.append((ids, len(p)))
    return out, dropped


def pack(encoded: list[tuple[list[int], int]], seq_len: int) -> list[list[tuple[list[int], int]]]:
    """First-fit packing of whole examples into rows of at most ``seq_len`` tokens (order kept)."""
    rows: list[list[tuple[list[int], int]]] = []
    cur: list[tuple[list[int], int]] = []
    used = 0
    for e in encoded:
        if cur and used + len(e[0]) > seq_len:
            rows.append(cur)
            cur, used = [], 0
        cur.append(e)
        used += len(e[0])
    if cur:
        rows.append(cur)
    return rows


def collate(
    rows: list[list[tuple[list[int], int]]], pad_id: int, *, train_prompt: bool = False
) -> dict[str, Any]:
    """Tensors for a batch of rows, each a list of ``(ids, n_prompt)`` segments (1 segment = unpacked).

    ``labels`` are the ids on assistant tokens and ``-100`` elsewhere (``train_prompt=True`` also labels the
    prompt). With several segments per row the attention mask is 4-D block-diagonal causal and positions
    restart at 0 in each segment; otherwise a 2-D padding mask. Padding is on the right.
    """
    import torch

    T = max(sum(len(s[0]) for s in r) for r in rows)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    seg = torch.full((B, T), -1, dtype=torch.long)
    packed = any(len(r) > 1 for r in rows)
    for b, r in enumerate(rows):
        o = 0
        for k, (s, n_p) in enumerate(r):
            n = len(s)
            t = torch.tensor(s, dtype=torch.long)
            ids[b, o : o + n] = t
            lab = t.clone()
            if not train_prompt:
                lab[:n_p] = -100
            labels[b, o : o + n] = lab
            pos[b, o : o + n] = torch.arange(n)
            seg[b, o : o + n] = k
            o += n
    if packed:
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
        same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)
        # padding rows attend to themselves only, so no row of the mask is empty (NaN-free softmax)
        eye = torch.eye(T, dtype=torch.bool)[None]
        attn = ((same & causal) | eye)[:, None]
    else:
        attn = (seg >= 0).long()
    return {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": attn,
        "position_ids": pos,
        "tokens": int((labels != -100).sum()),
    }


# Architectures whose causal-LM head is a plain ``lm_head(hidden)`` (no logit scaling or soft-capping), so the
# head may be applied to a subset of positions and give exactly those positions' logits.
PLAIN_HEAD = ("qwen2", "qwen3", "llama", "mistral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "minimax")


def head_on_subset_ok(model: Any) -> bool:
    """Whether ``model`` (a transformers causal LM, or a peft model around one) may be run as decoder + head
    on selected positions: single process (DDP/FSDP hooks live on the wrapper's forward) and a plain head."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    return (
        getattr(cfg, "model_type", None) in PLAIN_HEAD
        and hasattr(base, "get_decoder")
        and hasattr(base, "get_output_embeddings")
    )


def decoder_and_head(model: Any) -> tuple[Any, Any] | None:
    """``(decoder, output head)`` of ``model`` (through a peft wrapper, whose adapters live inside them) when
    :func:`head_on_subset_ok`, else ``None`` (then only the model's own forward may be used)."""
    if not head_on_subset_ok(model):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def labelled_logits(model: Any, batch: dict[str, Any], *, length_groups: int = 0) -> tuple[Any, Any]:
    """The logits at the positions that predict a label, as one row ``([1, N+1, V], [1, N+1])``.

    Only about a third of an SFT batch's positions carry a label (the assistant tokens); the vocabulary head
    and every ``[.., V]`` loss tensor on the others is wasted work. Row position ``i < N`` holds the logits
    that predict label ``i + 1``; the last logit row is zeros and label 0 is ``-100``, so the losses' shift
    convention (``logits[:, :-1]`` predicts ``labels[:, 1:]``) pairs them exactly and the SFT and KD losses
    are unchanged (token-level means over the same positions; tested against the full forward). Models
    for which :func:`head_on_subset_ok` is false take the full forward and the same selection.

    ``length_groups >= 1`` (``ops.posttrain.sft.LENGTH_GROUPS``, for SFT and the distillation student) runs an
    unpacked batch through the decoder as
    up to that many groups of rows of similar length, each cut to its own longest row and without a padding
    mask (:func:`_grouped_hidden`); ``0`` runs the one padded forward. The result is the same function
    (values equal up to float rounding, tested), in the same order, for less work: on the default recipe's
    SFT batches (64 rows of 52-96 tokens) padding is a fifth of the padded forward.
    """
    hidden, head, y = labelled_hidden(model, batch, length_groups)
    return labelled_row(head(hidden) if head is not None else hidden, y)


def labelled_row(logits: Any, y: Any) -> tuple[Any, Any]:
    """``(logits [N, V], labels [N])`` at the labelled positions as :func:`labelled_logits`'s one row: a zero
    logit row appended and ``-100`` prepended to the labels, ``([1, N+1, V], [1, N+1])``."""
    import torch

    from ops.losses import IGNORE

    logits = torch.cat([logits, logits.new_zeros(1, logits.shape[-1])])[None]
    labels = torch.cat([y.new_full((1,), IGNORE), y])[None]
    return logits, labels


def labelled_hidden(model: Any, batch: dict[str, Any], length_groups: int = 0) -> tuple[Any, Any, Any]:
    """``(hidden [N, d], head, labels [N])`` at the N positions that predict a label, in row-major order; for a
    model without :func:`decoder_and_head`, ``(logits [N, V], None, labels)`` from its own forward."""
    from ops.losses import IGNORE

    tgt = batch["labels"][:, 1:]
    sel = tgt != IGNORE
    kw = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    parts = decoder_and_head(model)
    if parts is None:
        return model(**kw).logits[:, :-1][sel], None, tgt[sel]
    hidden = _grouped_hidden(parts[0], batch, sel, length_groups) if length_groups else None
    if hidden is None:
        hidden = parts[0](**kw).last_hidden_state[:, :-1][sel]
    return hidden, parts[1], tgt[sel]


# a length group's fewest rows: a smaller group's forward costs more in per-call overhead than it saves
MIN_GROUP_ROWS = 16


def _grouped_hidden(decoder: Any, batch: dict[str, Any], sel: Any, groups: int) -> Any:
    """The decoder's last hidden states at the selected positions ``sel`` (``[B, T-1]``), in row-major
    order, computed as ``groups`` forwards over rows sorted by length, each cut to its longest row and run
    without a padding mask; None when the batch is not plain right-padded rows (a packed batch's 4-D mask).

    With causal attention a right-padded row's real positions never see its padding, so neither the padding
    mask nor the columns past a row's end change them (positions are ``0..n-1`` either way); only the
    padding's own outputs, never selected, differ. Rows keep their order inside the result: each selected
    position's place is its rank in the row-major selection."""
    import torch

    mask = batch.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return None
    lengths = mask.sum(1)
    B, T = mask.shape
    if not torch.equal(mask.bool(), torch.arange(T, device=mask.device)[None] < lengths[:, None]):
        return None  # not right-padded
    pos = batch.get("position_ids")
    if pos is not None and not torch.equal(pos * mask, (torch.arange(T, device=mask.device)[None] * mask)):
        return None  # positions other than 0..n-1 per row
    groups = max(1, min(groups, B // MIN_GROUP_ROWS))
    order = torch.argsort(lengths, stable=True)
    place = (torch.cumsum(sel.flatten(), 0) - 1).view_as(sel)  # each selected position's row-major rank
    hs, dest = [], []
    for g in range(groups):
        rows = order[g * B // groups : (g + 1) * B // groups]
        n = int(lengths[rows].max())
        s = sel[rows, : n - 1]
        out = decoder(input_ids=batch["input_ids"][rows, :n], use_cache=False)
        hs.append(out.last_hidden_state[:, :-1][s])
        dest.append(place[rows, : n - 1][s])
    dest_all = torch.cat(dest)
    if len(dest_all) != int(sel.sum()):
        return None  # a label on a padding position: only the padded forward computes it
    src = torch.empty_like(dest_all)
    src[dest_all] = torch.arange(len(dest_all), device=dest_all.device)
    return torch.cat(hs)[src]


def labelled_logprobs(model: Any, batch: dict[str, Any], *, length_groups: int = 0) -> Any:
    """``log p(label)`` at every labelled position ``[N]``, in row-major order (the labels of
    :func:`labelled_logits`, without its padding entry): the head fused with the log-softmax where
    :func:`ops.fused_head.fused_ok`, else the head's logits through ``ops.losses.token_logprobs``."""
    from ops.fused_head import fused_ok, head_logprobs
    from ops.losses import token_logprobs

    hidden, head, y = labelled_hidden(model, batch, length_groups)
    if head is not None and fused_ok(hidden, head):
        return head_logprobs(hidden, head.weight, y)
    return token_logprobs(head(hidden) if head is not None else hidden, y)


def labelled_sequence_logprobs(model: Any, batch: dict[str, Any]) -> Any:
    """``sum_t log p(label_t)`` over each row's labelled tokens, ``[B]`` (as ``ops.losses.sequence_logprobs``
    on the full logits), from :func:`labelled_logprobs`."""
    import torch

    from ops.losses import IGNORE

    lp = labelled_logprobs(model, batch)
    rows = (batch["labels"][:, 1:] != IGNORE).nonzero()[:, 0]
    return torch.zeros(batch["labels"].shape[0], dtype=lp.dtype, device=lp.device).index_add(0, rows, lp)


def epoch_batches(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of the batch for ``step``: a fresh seeded permutation per epoch (pure function of the step)."""
    per_epoch = max(n // batch_size, 1)
    epoch, k = divmod(step, per_epoch)
    perm = _epoch_permutation(n, seed, epoch)
    if n < batch_size:
        return [perm[i % n] for i in range(batch_size)]
    return list(perm[k * batch_size : (k + 1) * batch_size])


@functools.lru_cache(maxsize=4)
def _epoch_permutation(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The seeded permutation of epoch ``epoch``, shuffled once per epoch rather than once per step (a
    20,000-row shuffle costs more than the step's collation)."""
    perm = list(range(n))
    random.Random(seed * 100003 + epoch).shuffle(perm)
    return tuple(perm)


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}


def task_accuracy(
    model: Any,
    tok: Any,
    tasks: list[Task],
    *,
    samples: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 96,
    seed: int = 0,
    batch_size: int = 256,
    per_item: bool = False,
) -> dict[str, Any]:
    """Greedy (``temperature=0``) or sampled accuracy on ``tasks``.

    Returns ``accuracy`` (mean over all samples), ``pass_at_k`` (share of tasks with >= 1 correct of
    ``samples``), ``parse_rate`` (an answer was found), ``format_rate`` (:func:`ops.tasks.format_ok`), each in
    the task's answer format,
    ``mean_tokens``; with ``per_item``, also ``per_item``: each task's share of correct samples, in order
    (for paired comparisons over items).
    """
    if not tasks:
        return {"accuracy": 0.0, "pass_at_k": 0.0, "parse_rate": 0.0, "format_rate": 0.0, "mean_tokens": 0.0}
    out = generate(
        model,
        tok,
        [t.question for t in tasks],
        n=samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        batch_size=batch_size,
    )
    ok = [is_correct(s.text, tasks[i // samples].answer, tasks[i // samples].answer_format) for i, s in enumerate(out)]
    per_task = [any(ok[i * samples : (i + 1) * samples]) for i in range(len(tasks))]
    res: dict[str, Any] = {
        "accuracy": sum(ok) / len(ok),
        "pass_at_k": sum(per_task) / len(tasks),
        "parse_rate": sum(
            extract_answer(s.text, tasks[i // samples].answer_format) is not None for i, s in enumerate(out)
        )
        / len(out),
        "format_rate": sum(format_ok(s.text, tasks[i // samples].answer_format) for i, s in enumerate(out))
        / len(out),
        "mean_tokens": sum(s.n_tokens for s in out) / len(out),
    }
    if per_item:
        res["per_item"] = [sum(ok[i * samples : (i + 1) * samples]) / samples for i in range(len(tasks))]
    return res


def accuracy_metrics(
    model: Any, tok: Any, tasks: list[Task], n_samples: int, max_new: int, seed: int = 0
) -> dict[str, float]:
    """The held-out figures a post-training stage reports: greedy accuracy, parse, format and length, and
    with ``n_samples`` > 0 also sampled (T=1) accuracy and pass@k; empty when there are no tasks."""
    if not tasks:
        return {}
    g = task_accuracy(model, tok, tasks, temperature=0.0, max_new_tokens=max_new)
    out = {
        "eval_accuracy": g["accuracy"],
        "eval_parse_rate": g["parse_rate"],
        "eval_format_rate": g["format_rate"],
        "eval_tokens": g["mean_tokens"],
    }
    if n_samples > 0:
        s = task_accuracy(
            model, tok, tasks, samples=n_samples, temperature=1.0, max_new_tokens=max_new, seed=seed
        )
        out.update({"eval_sampled_accuracy": s["accuracy"], f"eval_pass_at_{n_samples}": s["pass_at_k"]})
    return out


def sample_rows(model: Any, tok: Any, tasks: list[Task], k: int = 8, max_new: int = 96) -> list[dict]:
    """Greedy answers to the first ``k`` tasks: question, response, gold answer and whether it is correct."""
    outs = generate(model, tok, [t.question for t in tasks[:k]], temperature=0.0, max_new_tokens=max_new)
    return [
        {
            "question": t.question,
            "response": s.text,
            "gold": t.answer,
            "correct": is_correct(s.text, t.answer, t.answer_format),
        }
        for t, s in zip(tasks[:k], outs)
    ]


def load_policy(path: Path | str, device: str | None = None) -> tuple[Any, Any]:
    """A model artifact and its tokenizer; a tokenizer without the chat template is an error here."""
    from ops.model import load_model
    from ops.tokenizer import load_tokenizer

    tok = load_tokenizer(path)
    require_chat_template(tok, where=str(path))
    return load_model(path, device=device), tok


def device_for(pref: str = "auto") -> str:
    import torch

    if pref == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return pref
