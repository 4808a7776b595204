"""Distillation into a smaller student sharing the teacher's tokenizer: logit KD (KL on softened
distributions x T^2 mixed with CE) or sequence-level KD (SFT on teacher samples).

Key design choice: both modes are the shared training core with the SFT batch builder; logit KD only swaps
the loss for ``ops.losses.kd_loss`` with the frozen teacher's logits on the same batch, so "logit KD vs SFT on
the same data" differs in exactly one thing (``alpha=0`` is plain SFT). The teacher is frozen, so its logits
on an example are a function of the example alone: they are computed once per training row
(:class:`TeacherLogits`) instead of once per visit, when that is exact on this machine (checked on the first
batch) and fits :data:`CACHE_MAX_BYTES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.fused_head import fused_ok, head_kd
from ops.losses import kd_loss
from ops.posttrain.common import Example, collate, labelled_hidden, labelled_logits, labelled_row, to_device
from ops.posttrain.sft import LENGTH_GROUPS, SFTParams, sft_loss_fn, sft_units, units_batch_fn

# Teacher logits of every training row are kept when they take at most this much memory (fp32, labelled
# positions only); larger sets run the teacher on each batch.
CACHE_MAX_BYTES = 1 << 30


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


class TeacherLogits:
    """The frozen teacher's logits at the labelled positions of every training row, computed once in chunks of
    ``batch_size`` rows, so a batch's teacher logits are its rows' slices, concatenated in batch order.

    This is exact when a row's logits do not depend on the rows batched with it (right padding, causal
    attention, row-wise kernels). Attention kernels may still round differently at another padded length, so
    the training loop runs the teacher itself on the first batch of each padded length and keeps the cache
    only while it matches that forward bit for bit (:meth:`matches`).
    """

    def __init__(self, teacher: Any, units: list, pad: int, batch_size: int):
        import torch

        self.teacher, self.pad = teacher, pad
        self.rows: list[Any] = []
        with torch.no_grad():
            for k in range(0, len(units), batch_size):
                chunk = units[k : k + batch_size]
                logits, counts = self._forward(chunk)
                self.rows += list(torch.split(logits, counts))

    def _forward(self, rows: list) -> tuple[Any, list[int]]:
        """The teacher's labelled logits on ``rows`` (``[N, V]``, zeros row dropped) and each row's count."""
        from ops.losses import IGNORE

        b = collate(rows, self.pad)
        b = to_device(b, next(self.teacher.parameters()).device)
        logits, _ = labelled_logits(self.teacher, b)
        counts = (b["labels"][:, 1:] != IGNORE).sum(1).tolist()
        return logits[0, :-1], counts

    @staticmethod
    def bytes_needed(units: list, vocab: int) -> int:
        """An upper bound of the cache's size: fp32 logits for every response token of every row."""
        return 4 * vocab * sum(len(ids) - n_p for row in units for ids, n_p in row)

    def batch(self, index: list[int]) -> Any:
        """``[1, N+1, V]`` as :func:`labelled_logits` returns for the batch of rows ``index``."""
        import torch

        parts = [self.rows[i] for i in index]
        return torch.cat([*parts, parts[0].new_zeros(1, parts[0].shape[-1])])[None]

    def matches(self, index: list[int], direct: Any) -> bool:
        """Whether the cache equals ``direct``, the teacher's labelled logits on the rows ``index``."""
        import torch

        cached = self.batch(index)
        return cached.shape == direct.shape and bool(torch.equal(cached.to(direct.device), direct))


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
    units, pad, stats = sft_units(tok, examples, sp)
    batch_fn = units_batch_fn(units, pad, sp)
    teacher.eval().requires_grad_(False)
    cache: list[TeacherLogits | None] = [None]
    vocab = teacher.get_output_embeddings().weight.shape[0]
    # worth it when rows are visited more than once and the cache fits; packed rows keep the per-batch forward
    if (
        p.mode == "logit"
        and p.alpha > 0
        and not sp.pack
        and sp.steps * sp.batch_size > len(units)
        and TeacherLogits.bytes_needed(units, vocab) <= CACHE_MAX_BYTES
    ):
        cache[0] = TeacherLogits(teacher, units, pad, sp.batch_size)
    checked: set[int] = set()  # padded lengths at which the cache matched the teacher's own forward

    def kd_fn(model, batch):
        dev = next(model.parameters()).device
        b = to_device(batch, dev)
        # both models' logits only where a label is predicted (same positions, same order)
        hidden, head, y = labelled_hidden(model, b, length_groups=LENGTH_GROUPS)
        if p.alpha > 0 and head is not None and fused_ok(hidden, head):
            # the student's head fused with the loss (ops.fused_head): no [tokens, vocabulary] student logits
            t_logits = teacher_logits(b, batch, dev)
            loss, kl, ce = head_kd(hidden, head.weight, t_logits[0, :-1], y, p.temperature, p.alpha)
            return loss, {"kl": float(kl), "ce": float(ce), "tokens": batch["tokens"]}
        s_logits, labels = labelled_row(head(hidden) if head is not None else hidden, y)
        # alpha 0 is plain SFT through the same loss: the KD term has no weight, the teacher's forward is skipped
        t_logits = s_logits.detach() if p.alpha == 0 else teacher_logits(b, batch, dev)
        loss, st = kd_loss(s_logits, t_logits, labels, temperature=p.temperature, alpha=p.alpha)
        return loss, {**st, "tokens": batch["tokens"]}

    def teacher_logits(b, batch, dev):
        """The teacher's labelled logits for the batch, as :func:`labelled_logits` returns them: from the cache
        once it matched the teacher's own forward at this padded length, else the teacher's forward."""
        import torch

        length = b["input_ids"].shape[1]
        if cache[0] is not None and length in checked:
            t_logits = cache[0].batch(batch["index"]).to(dev)
        else:
            # the frozen teacher in its own precision whatever the student trains in, so the cache stays exact
            with torch.no_grad(), torch.autocast(dev.type, enabled=False):
                t_logits, _ = labelled_logits(teacher, b)
            if cache[0] is not None:
                if cache[0].matches(batch["index"], t_logits):
                    checked.add(length)
                else:
                    log(f"distill: cached teacher logits differ from the teacher's forward on a batch of padded "
                        f"length {length}; running the teacher on every batch")
                    cache[0] = None
        return t_logits

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
        "teacher_logits_cached": cache[0] is not None,
        **stats,
    }
