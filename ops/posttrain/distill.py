"""Distillation into a smaller student sharing the teacher's tokenizer: logit KD (KL on softened
distributions x T^2 mixed with CE) or sequence-level KD (SFT on teacher samples).

Key design choice: both modes are the shared training core with the SFT batch builder; logit KD only swaps
the loss for ``ops.losses.kd_loss`` with a no-grad teacher forward on the same batch, so "logit KD vs SFT on
the same data" differs in exactly one thing (``alpha=0`` is plain SFT).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.losses import kd_loss
from ops.posttrain.common import Example, labelled_logits, to_device
from ops.posttrain.sft import SFTParams, make_batches, sft_loss_fn


@dataclass
class DistillParams:
    mode: str = "logit"  # logit | sequence
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the KD term (1 - alpha on CE)
    sft: SFTParams | None = None


def teacher_samples(
    teacher: Any,
    tok: Any,
    questions: list[str],
    *,
    n: int = 1,
    max_new_tokens: int = 96,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[Example]:
    """Sequence-level KD data: the teacher's own finished responses to ``questions``."""
    from ops.generate import generate
    from ops.posttrain.common import strip_stop

    out = generate(
        teacher, tok, questions, n=n, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed
    )
    return [
        Example(f"teacher-{i}", questions[i // n], strip_stop(s.text))
        for i, s in enumerate(out)
        if s.finished
    ]


def train_distill(
    student: Any,
    teacher: Any,
    tok: Any,
    examples: list[Example],
    p: DistillParams,
    *,
    work_dir: Path | None,
    fingerprint: dict | None = None,
    eval_fn: Callable | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    from ops.train.core import params_fingerprint, train
    from ops.train.optim import train_config

    sp = p.sft or SFTParams()
    if student.get_output_embeddings().weight.shape[0] != teacher.get_output_embeddings().weight.shape[0]:
        raise ValueError("student and teacher must share the vocabulary (same tokenizer)")
    batch_fn, stats = make_batches(tok, examples, sp)
    teacher.eval().requires_grad_(False)

    def kd_fn(model, batch):
        import torch

        dev = next(model.parameters()).device
        b = to_device(batch, dev)
        # both models' logits only where a label is predicted (same positions, same order)
        s_logits, labels = labelled_logits(model, b)
        if p.alpha == 0:
            # plain SFT through the same loss: the KD term has weight 0, so the teacher's forward is skipped
            t_logits = s_logits.detach()
        else:
            with torch.no_grad():
                t_logits, _ = labelled_logits(teacher, b)
        loss, st = kd_loss(s_logits, t_logits, labels, temperature=p.temperature, alpha=p.alpha)
        return loss, {**st, "tokens": batch["tokens"]}

    loss_fn = kd_fn if p.mode == "logit" else sft_loss_fn
    if p.mode not in ("logit", "sequence"):
        raise ValueError(f"distill mode must be 'logit' or 'sequence', got {p.mode!r}")
    cfg = train_config(sp, log_every=max(sp.steps // 20, 1))
    kd = {"mode": p.mode, "temperature": p.temperature, "alpha": p.alpha}
    out = train(
        student,
        loss_fn,
        batch_fn,
        cfg,
        work_dir=work_dir,
        fingerprint={"distill": kd, "sft": params_fingerprint(sp), **(fingerprint or {})},
        eval_fn=eval_fn,
        log=log,
        progress=False,
    )
    return {
        "curve": out.curve,
        "losses": out.losses,
        "wall_s": out.wall_s,
        "final_eval": out.final_eval,
        **stats,
    }
