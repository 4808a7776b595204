"""DPO and its variants (IPO, Iterative RPO's DPO + NLL) against a frozen reference on preference pairs, on
the shared training core.

``loss`` picks the objective (:func:`preference_loss`): ``dpo`` (Rafailov et al. 2023), ``ipo`` (Azar et al.
2023) or ``rpo`` (DPO + ``alpha`` x length-normalised NLL of the chosen response, Pang et al. 2024).
Key design choice: the reference log-probs of every pair are computed once before training (the reference
never changes), so each step costs one policy forward over chosen + rejected; held-out pairs report the
implicit-reward margin ``beta * [(log pi - log pi_ref)(chosen) - (log pi - log pi_ref)(rejected)]`` and
accuracy before and after.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.losses import dpo_loss, ipo_loss, rpo_loss
from ops.posttrain.common import (
    Example,
    collate,
    encode_all,
    epoch_batches,
    labelled_sequence_logprobs,
    to_device,
)
from ops.posttrain.rm import Pair
from ops.train.optim import OptimConfig


@dataclass
class DPOParams:
    steps: int = 100
    lr: float = 5e-5
    beta: float = 0.1
    label_smoothing: float = 0.0
    loss: str = "dpo"  # dpo | ipo | rpo
    alpha: float = 1.0  # rpo: weight of the chosen response's NLL
    batch_size: int = 16
    warmup_steps: int = 10
    optim: OptimConfig = field(default_factory=OptimConfig)
    max_len: int = 256
    seed: int = 0
    ckpt_every: int = 100  # checkpoint every N steps and at the end (with a work_dir); 0 = at the end only
    keep_last: int = 2  # checkpoints kept in the work directory


LOSSES = ("dpo", "ipo", "rpo")


def check_params(p: DPOParams) -> None:
    """Refuse settings no run can learn from, before any compute: an unknown loss, or ``beta <= 0`` (DPO's
    implicit reward vanishes at 0 and flips sign below it; IPO's target ``1/(2 beta)`` is undefined)."""
    if p.loss not in LOSSES:
        raise ValueError(f"unknown preference loss {p.loss!r}; use one of {', '.join(LOSSES)}")
    if not p.beta > 0:
        raise ValueError(f"preference loss {p.loss!r}: beta must be > 0, got {p.beta}")


def check_pairs(pairs: list[Pair]) -> None:
    """Refuse pairs whose chosen and rejected responses are the same text: they carry no preference (the
    stage drops up to its ``max_identical`` share of them before training; a direct call gets none)."""
    from ops.posttrain.pairs import identical_pairs

    same = identical_pairs(pairs)
    if same:
        raise ValueError(
            f"{len(same)} of {len(pairs)} preference pairs have identical chosen and rejected responses "
            f"(first: id {same[0].id!r}); such a pair carries no preference"
        )


def preference_loss(p: DPOParams, pc: Any, pr: Any, rc: Any, rr: Any, chosen_len: Any) -> tuple[Any, dict]:
    """The objective ``p.loss`` on summed sequence log-probs of the policy (``pc``/``pr``) and reference
    (``rc``/``rr``); ``chosen_len`` is each chosen conversation's token length (``rpo``'s normaliser)."""
    if p.loss == "dpo":
        return dpo_loss(pc, pr, rc, rr, beta=p.beta, label_smoothing=p.label_smoothing)
    if p.loss == "ipo":
        return ipo_loss(pc, pr, rc, rr, beta=p.beta)
    if p.loss == "rpo":
        return rpo_loss(pc, pr, rc, rr, chosen_len, beta=p.beta, alpha=p.alpha)
    raise ValueError(f"unknown preference loss {p.loss!r}; use one of {', '.join(LOSSES)}")


def _encode_pairs(tok, pairs: list[Pair], max_len: int):
    ch, _ = encode_all(tok, [Example(q.id, q.prompt, q.chosen) for q in pairs], 10**9)
    rj, _ = encode_all(tok, [Example(q.id, q.prompt, q.rejected) for q in pairs], 10**9)
    keep = [i for i in range(len(pairs)) if len(ch[i][0]) <= max_len and len(rj[i][0]) <= max_len]
    return [ch[i] for i in keep], [rj[i] for i in keep]


def _seq_lp(model, enc: list, pad: int, batch_size: int = 64) -> Any:
    import torch

    dev = next(model.parameters()).device
    outs = []
    for s in range(0, len(enc), batch_size):
        b = to_device(collate([[e] for e in enc[s : s + batch_size]], pad), dev)
        outs.append(labelled_sequence_logprobs(model, b))
    return torch.cat(outs) if outs else torch.zeros(0)


def pair_margins(policy: Any, ref: Any, tok: Any, pairs: list[Pair], beta: float, max_len: int = 256) -> dict:
    """Held-out DPO statistics of ``policy`` vs ``ref``: mean margin and accuracy."""
    import torch

    ch, rj = _encode_pairs(tok, pairs, max_len)
    if not ch:
        return {"margin": float("nan"), "accuracy": float("nan"), "pairs": 0}
    with torch.no_grad():
        pc, pr = _seq_lp(policy, ch, tok.pad_token_id), _seq_lp(policy, rj, tok.pad_token_id)
        rc, rr = _seq_lp(ref, ch, tok.pad_token_id), _seq_lp(ref, rj, tok.pad_token_id)
    _, st = dpo_loss(pc, pr, rc, rr, beta=beta)
    return {"margin": st["margin"], "accuracy": st["accuracy"], "pairs": len(ch)}


def train_dpo(
    policy: Any,
    ref: Any,
    tok: Any,
    pairs: list[Pair],
    p: DPOParams,
    *,
    work_dir: Path | None,
    fingerprint: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    import torch

    from ops.train.core import params_fingerprint, train
    from ops.train.optim import train_config

    check_params(p)
    check_pairs(pairs)
    ch, rj = _encode_pairs(tok, pairs, p.max_len)
    if not ch:
        raise ValueError(f"no preference pair fits max_len={p.max_len}")
    pad = tok.pad_token_id
    ch_len = torch.tensor([len(e[0]) for e in ch], dtype=torch.float32)
    ref.eval().requires_grad_(False)
    with torch.no_grad():
        ref_c, ref_r = _seq_lp(ref, ch, pad), _seq_lp(ref, rj, pad)

    def batch_fn(step: int, micro: int) -> dict:
        idx = epoch_batches(len(ch), p.batch_size, step, p.seed)
        b = collate([[ch[i]] for i in idx] + [[rj[i]] for i in idx], pad)
        b["ref_c"], b["ref_r"], b["ch_len"] = ref_c[idx], ref_r[idx], ch_len[idx]
        return b

    def loss_fn(model, batch):
        dev = next(model.parameters()).device
        b = to_device(batch, dev)
        lp = labelled_sequence_logprobs(model, b)
        n = lp.shape[0] // 2
        loss, st = preference_loss(p, lp[:n], lp[n:], b["ref_c"], b["ref_r"], b["ch_len"])
        return loss, {**st, "tokens": batch["tokens"]}

    cfg = train_config(p, log_every=max(p.steps // 20, 1))
    fp = {"dpo": params_fingerprint(p), **(fingerprint or {})}
    out = train(policy, loss_fn, batch_fn, cfg, work_dir=work_dir, fingerprint=fp, log=log, progress=False)
    return {"curve": out.curve, "losses": out.losses, "wall_s": out.wall_s, "pairs": len(ch)}
