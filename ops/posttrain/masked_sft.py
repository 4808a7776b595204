"""SFT with the loss left off chosen character spans of each response, e.g. the deliberately slipped results of
a Wait-style trace (``ops.solutions.slipped_result_spans``): the model still reads a slip before its Wait and correction,
and is trained to write the Wait and the correction, never the slip.

Key design choice: everything but the labels is SFT's own. Rows are encoded as :func:`ops.posttrain.common.
encode_all` encodes them (checked token for token), batches are drawn by :func:`ops.posttrain.sft.units_batch_fn`
(so with the same seed a masked run sees the same rows in the same steps as an unmasked one) and the loss is
:func:`ops.posttrain.sft.sft_loss_fn`; only tokens whose characters overlap a span get label ``-100``, found
from the tokenizer's character offsets of the response text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ops.generate import turn_end
from ops.posttrain.common import Example, encode_all, example_prompts, strip_stop
from ops.posttrain.sft import SFTParams, units_batch_fn

Spans = Sequence[tuple[int, int]]

def masked_token_positions(tok: Any, response: str, spans: Spans) -> tuple[list[int], list[int]]:
    """``(ids, positions)``: the response's token ids as SFT encodes them (the text, then the turn end) and the
    indices of the tokens whose characters overlap a span ``[start, end)`` of ``response``."""
    for s, e in spans:
        if not 0 <= s < e <= len(response):
            raise ValueError(f"span ({s}, {e}) is not inside the response ({len(response)} characters)")
    text = strip_stop(response)
    enc = tok(text + turn_end(tok), add_special_tokens=False, return_offsets_mapping=True)
    pos = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if any(a < e and b > s for s, e in spans)]
    return list(enc["input_ids"]), pos


def masked_units(
    tok: Any, examples: list[Example], spans: list[Spans], p: SFTParams
) -> tuple[list, list[list[int]], int, dict]:
    """``(units, masked, pad_id, stats)``: one unpacked row per example that fits ``p.max_len`` (as
    :func:`ops.posttrain.sft.sft_units` with ``pack: false``) and, per row, the positions whose label is masked."""
    if len(spans) != len(examples):
        raise ValueError(f"spans: {len(spans)} span lists for {len(examples)} examples")
    if p.pack:
        raise ValueError("pack: masked SFT takes unpacked rows (pack: false)")
    prompts = example_prompts(tok, examples)
    units, masked, dropped = [], [], 0
    for e, pr, sp in zip(examples, prompts, spans):
        r, pos = masked_token_positions(tok, e.response, sp)
        ids = pr + r
        if len(ids) > p.max_len:
            dropped += 1
            continue
        units.append([(ids, len(pr))])
        masked.append([len(pr) + i for i in pos])
    if not units:
        raise ValueError(f"no SFT example fits max_len={p.max_len} ({dropped} dropped)")
    reference, _ = encode_all(tok, examples, p.max_len)
    if [u[0] for u in units] != reference:
        raise ValueError("masked SFT rows differ from SFT's own encoding of the same examples")
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    stats = {
        "examples": len(units),
        "dropped_too_long": dropped,
        "rows": len(units),
        "assistant_tokens": sum(len(u[0][0]) - u[0][1] for u in units),
        "masked_tokens": sum(len(m) for m in masked),
    }
    return units, masked, pad, stats


def masked_batch_fn(
    units: list, masked: list[list[int]], pad: int, p: SFTParams
) -> Callable[[int, int], dict]:
    """SFT's ``batch_fn(step, micro)`` over ``units`` with the labels at each row's ``masked`` positions set to
    ``-100`` (and the batch's token count without them)."""
    inner = units_batch_fn(units, pad, p)

    def batch_fn(step: int, micro: int) -> dict:
        b = inner(step, micro)
        for row, i in enumerate(b["index"]):
            if masked[i]:
                b["labels"][row, masked[i]] = -100
        b["tokens"] = int((b["labels"] != -100).sum())
        return b

    return batch_fn


def train_sft_masked(
    model: Any,
    tok: Any,
    examples: list[Example],
    spans: list[Spans],
    p: SFTParams,
    *,
    log: Callable[[str], None] = print,
) -> tuple[Any, dict]:
    """Full fine-tuning of ``model`` in place on ``examples`` with the loss off ``spans`` (per example, character
    spans of its response); ``(model, info)`` with the curve and data stats, as :func:`ops.posttrain.sft.train_sft`."""
    from ops.posttrain.sft import train_sft

    if p.lora_r:
        raise ValueError("lora_r: masked SFT trains the full model (lora_r: 0)")
    model, _, info = train_sft(
        model, tok, examples, p, work_dir=None, fingerprint={"masked_spans": True}, log=log, spans=spans
    )
    return model, info
