"""Supervised fine-tuning on chat examples: loss on assistant tokens only, optional packing, full or LoRA.

Key design choice: SFT is the shared training core (``ops.train.core.train``) with an SFT batch builder and
``ops.losses.sft_loss``; nothing here is a loop. LoRA wraps the model with ``peft`` before training and
returns both a merged plain model (loadable without peft) and the adapter (saved beside it), so downstream
stages never need peft.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.posttrain.common import (
    Example,
    collate,
    encode_all,
    epoch_batches,
    labelled_logprobs,
    pack,
    to_device,
)
from ops.train.optim import OptimConfig

# attention and MLP projections; qkv_proj / out_proj / output_gate are MiniMax's lightning-attention layers
LORA_TARGETS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "qkv_proj",
    "out_proj",
    "output_gate",
)


def packing_refusal(model: Any) -> str | None:
    """Why ``model`` cannot train on packed rows, or None. Packing isolates the examples of a row with a 4-D
    block-diagonal mask; transformers' linear-attention layers (MiniMax's lightning attention) take only a 2-D
    padding mask and ignore a 4-D one, so their recurrent state would carry one example into the next."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    types = getattr(getattr(base, "config", None), "layer_types", None) or []
    if "linear_attention" in types:
        mt = getattr(base.config, "model_type", "?")
        return (
            f"a {mt!r} model has linear-attention layers, which ignore the block-diagonal mask that keeps packed "
            "examples apart (their state would run from one example into the next); set pack: false"
        )
    return None


@dataclass
class SFTParams:
    steps: int = 300
    lr: float = 2e-3
    batch_size: int = 32  # examples per step (unpacked) or rows per step (packed)
    max_len: int = 256  # longer examples are dropped (counted)
    pack: bool = False
    seq_len: int = 512  # packed row length
    warmup_steps: int = 20
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: str = "auto"  # ops.train.core.PRECISIONS
    seed: int = 0
    lora_r: int = 0  # 0 = full fine-tuning
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    eval_every: int = 0
    ckpt_every: int = 100  # checkpoint every N steps and at the end (with a work_dir); 0 = at the end only
    keep_last: int = 2  # checkpoints kept in the work directory


def make_batches(tok: Any, examples: list[Example], p: SFTParams) -> tuple[Callable[[int, int], dict], dict]:
    """``batch_fn(step, micro)`` (pure function of the step) and data stats."""
    units, pad, stats = sft_units(tok, examples, p)
    return units_batch_fn(units, pad, p), stats


def sft_units(tok: Any, examples: list[Example], p: SFTParams) -> tuple[list, int, dict]:
    """``(units, pad_id, stats)``: the training rows (one ``[(ids, n_prompt)]`` segment list each, several
    segments when packing) that :func:`units_batch_fn` draws batches from, and data stats."""
    enc, dropped = encode_all(tok, examples, p.max_len)
    if not enc:
        raise ValueError(f"no SFT example fits max_len={p.max_len} ({dropped} dropped)")
    units = pack(enc, p.seq_len) if p.pack else [[e] for e in enc]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    stats = {
        "examples": len(enc),
        "dropped_too_long": dropped,
        "rows": len(units),
        "assistant_tokens": sum(len(ids) - n for ids, n in enc),
    }
    return units, pad, stats


def units_batch_fn(units: list, pad: int, p: SFTParams) -> Callable[[int, int], dict]:
    """``batch_fn(step, micro)``: the collated rows of ``units`` for the step, a fresh seeded permutation per
    epoch; the batch's ``index`` names those rows, in order."""

    def batch_fn(step: int, micro: int) -> dict:
        idx = epoch_batches(len(units), p.batch_size, step, p.seed)
        return {**collate([units[i] for i in idx], pad), "index": idx}

    return batch_fn


# decoder forwards per SFT batch over rows sorted by length (:func:`ops.posttrain.common.labelled_logits`); 0 = the
# one padded forward, the exact reference. 3 is the same function up to float rounding for 0.8x the CPU a step;
# its accuracy over three paired cold starts differed no more than a rounding-only row reordering's (LEDGER.md)
LENGTH_GROUPS = 0


def sft_loss_fn(model: Any, batch: dict) -> tuple[Any, dict]:
    """``ops.losses.sft_loss`` (the token-level mean of ``-log p`` over labelled positions) from the labelled
    positions' log-probabilities, the head fused with the log-softmax where it can be
    (:func:`ops.posttrain.common.labelled_logprobs`)."""
    dev = next(model.parameters()).device
    lp = labelled_logprobs(model, to_device(batch, dev), length_groups=LENGTH_GROUPS)
    return -lp.sum() / max(lp.numel(), 1), {"tokens": float(lp.numel())}


def add_lora(model: Any, p: SFTParams) -> Any:
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=p.lora_r,
        lora_alpha=p.lora_alpha,
        lora_dropout=p.lora_dropout,
        target_modules=list(LORA_TARGETS),
        task_type="CAUSAL_LM",
        bias="none",
    )
    return get_peft_model(model, cfg)


def train_sft(
    model: Any,
    tok: Any,
    examples: list[Example],
    p: SFTParams,
    *,
    work_dir: Path | None,
    fingerprint: dict | None = None,
    eval_fn: Callable[[Any, int], dict] | None = None,
    log: Callable[[str], None] = print,
    spans: list | None = None,
) -> tuple[Any, Any, dict]:
    """Train and return ``(plain_model, peft_model_or_None, info)``; ``info`` has the curve and data stats.

    With ``lora_r > 0`` only the adapter trains; the returned plain model has the adapter merged in. ``spans``
    (per example, character spans of its response) leaves those characters' tokens out of the loss
    (``ops.posttrain.masked_sft``; unpacked rows only), the same rows in the same steps as without it.
    """
    from ops.train.core import params_fingerprint, train
    from ops.train.optim import train_config

    refusal = packing_refusal(model) if p.pack else None
    if refusal:
        raise ValueError(f"field 'pack': {refusal}")
    if spans is None:
        batch_fn, stats = make_batches(tok, examples, p)
    else:
        from ops.posttrain.masked_sft import masked_batch_fn, masked_units

        units, masked, pad, stats = masked_units(tok, examples, spans, p)
        batch_fn = masked_batch_fn(units, masked, pad, p)
    peft_model = add_lora(model, p) if p.lora_r > 0 else None
    net = peft_model if peft_model is not None else model
    trainable = [q for q in net.parameters() if q.requires_grad]
    cfg = train_config(p, log_every=max(p.steps // 20, 1))
    outcome = train(
        net,
        sft_loss_fn,
        batch_fn,
        cfg,
        work_dir=work_dir,
        fingerprint={"sft": params_fingerprint(p), **(fingerprint or {})},
        eval_fn=eval_fn,
        log=log,
        trainable_params=trainable,
        progress=False,
    )
    info = {
        "curve": outcome.curve,
        "losses": outcome.losses,
        "tokens": outcome.tokens,
        "wall_s": outcome.wall_s,
        "final_eval": outcome.final_eval,
        "trainable_params": sum(q.numel() for q in trainable),
        **stats,
    }
    if peft_model is not None:
        import copy

        merged = copy.deepcopy(peft_model).merge_and_unload()
        return merged, peft_model, info
    return model, None, info
