"""Reward model: Bradley-Terry pairwise training of a scalar head on preference pairs.

Key design choice: the reward model is a plain ``Qwen2ForSequenceClassification`` (``num_labels=1``)
initialised from the policy's weights (the score head is new), so ``AutoModelForSequenceClassification``
loads the artifact without custom code; the reward of a conversation is the head's output at its last
non-pad token. Pairs come from rollouts (for each prompt, a verified-correct completion is "chosen" over an
incorrect one) or from a user "pairs" Parquet. Held-out pairs are split by prompt, never by pair, so no
held-out prompt was seen in training; a length-only baseline (longer-wins or shorter-wins, whichever is
better on the held-out pairs) is reported beside the model's accuracy.

A second head, ``likelihood`` (:class:`LikelihoodReward`), is a generative reward: the trunk's mean per-token
log-likelihood of the response, ``r(x, y) = s * (mean_t log p(y_t | x, y_<t) - c)``, with the scale ``s``
fitted by Bradley-Terry maximum likelihood on the training pairs and ``c`` centring the training responses'
rewards at 0. The trunk is not trained: a model that solves the task finds a wrong step surprising, and on
correct-vs-incorrect samples that signal is what a small classifier head fails to learn from a few thousand
pairs (measured on the default pipeline; the README's reward-model section). Its artifact is the causal LM
(``AutoModelForCausalLM``) plus ``reward.json`` with ``s`` and ``c``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.losses import bradley_terry_loss
from ops.posttrain.common import IM_END, encode_all, epoch_batches, strip_stop
from ops.train.optim import OptimConfig


@dataclass(frozen=True)
class Pair:
    id: str
    prompt: str
    chosen: str
    rejected: str
    parent_ids: tuple[str, ...] = ()


def pairs_from_rollouts(rows: list[dict], max_per_prompt: int = 4, seed: int = 0) -> list[Pair]:
    """Correct-vs-incorrect pairs within each prompt's samples (distinct texts), at most ``max_per_prompt``."""
    rng = random.Random(seed)
    by_prompt: dict[str, list[dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    out = []
    for pid in sorted(by_prompt):
        rs = by_prompt[pid]
        good = list({strip_stop(r["completion"]): r for r in rs if r.get("reward_accuracy", 0) >= 1}.values())
        bad = list({strip_stop(r["completion"]): r for r in rs if r.get("reward_accuracy", 0) < 1}.values())
        combos = [(g, b) for g in good for b in bad]
        rng.shuffle(combos)
        for g, b in combos[:max_per_prompt]:
            out.append(
                Pair(
                    f"pair-{g['id']}-{b['id']}",
                    g["prompt"],
                    strip_stop(g["completion"]),
                    strip_stop(b["completion"]),
                    (g["id"], b["id"]),
                )
            )
    return out


def pairs_from_table(rows: list[dict]) -> list[Pair]:
    return [
        Pair(
            str(r["id"]),
            r["prompt"],
            strip_stop(r["chosen"]),
            strip_stop(r["rejected"]),
            tuple(r.get("parent_ids") or ()),
        )
        for r in rows
    ]


def split_pairs(pairs: list[Pair], held_out: float, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """Split by prompt text (a held-out prompt never appears in training)."""
    prompts = sorted({p.prompt for p in pairs})
    random.Random(seed).shuffle(prompts)
    n = int(round(len(prompts) * held_out))
    held = set(prompts[:n])
    return [p for p in pairs if p.prompt not in held], [p for p in pairs if p.prompt in held]


def init_reward_model(policy_dir: Path | str) -> Any:
    """A sequence-classification model with one output, initialised from a causal-LM artifact."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from ops.cpu_gemm import fast_linear

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        rm = AutoModelForSequenceClassification.from_pretrained(
            str(policy_dir), num_labels=1, local_files_only=True, dtype=torch.float32
        )
    return fast_linear(rm)


HEADS = ("classifier", "likelihood")
REWARD_FILE = "reward.json"


@dataclass
class LikelihoodReward:
    """``r(x, y) = scale * (mean_t log p_lm(y_t | x, y_<t) - center)`` over the response's tokens (the
    assistant turn, closing ``<|im_end|>`` included), under the causal LM ``lm``."""

    lm: Any
    scale: float = 1.0
    center: float = 0.0

    def mean_logprobs(
        self, tok: Any, prompts: list[str], responses: list[str], batch_size: int = 128, max_len: int = 512
    ) -> list[float]:
        import torch

        from ops.losses import IGNORE
        from ops.posttrain.common import Example, collate, labelled_sequence_logprobs, to_device

        ex = [Example(str(i), q, r) for i, (q, r) in enumerate(zip(prompts, responses))]
        enc, _ = encode_all(tok, ex, max_len=10**9)
        # keep the last max_len tokens (the response and as much of the prompt as fits)
        enc = [(ids[-max_len:], max(n_p - max(len(ids) - max_len, 0), 0)) for ids, n_p in enc]
        dev = next(self.lm.parameters()).device
        out: list[float] = []
        was = self.lm.training
        self.lm.eval()
        with torch.no_grad():
            for s in range(0, len(enc), batch_size):
                b = to_device(collate([[e] for e in enc[s : s + batch_size]], tok.pad_token_id), dev)
                n = (b["labels"][:, 1:] != IGNORE).sum(1).clamp(min=1)
                out += (labelled_sequence_logprobs(self.lm, b) / n).float().tolist()
        self.lm.train(was)
        return out

    def score(self, tok: Any, prompts: list[str], responses: list[str], **kw: Any) -> list[float]:
        return [self.scale * (m - self.center) for m in self.mean_logprobs(tok, prompts, responses, **kw)]

    def save(self, tok: Any, out_dir: Path | str) -> None:
        from ops.model import save_model

        save_model(self.lm, tok, out_dir)
        (Path(out_dir) / REWARD_FILE).write_text(
            json.dumps(
                {
                    "head": "likelihood",
                    "scale": self.scale,
                    "center": self.center,
                    "formula": "scale * (mean over response tokens of log p(token | prefix) - center)",
                },
                indent=1,
            )
        )


def win_rate(a: list[float], b: list[float]) -> float:
    """Share of pairs where ``a`` beats ``b``, ties counting half."""
    return sum((x > y) + 0.5 * (x == y) for x, y in zip(a, b)) / max(len(a), 1)


def fit_bt_scale(diffs: list[float], l2: float = 1e-4, iters: int = 100) -> float:
    """Bradley-Terry maximum likelihood of one scale ``s >= 0``: ``P(chosen > rejected) = sigma(s * d_i)``.

    Minimises ``-(1/n) sum_i log sigma(s d_i) + (l2 / 2) s^2`` (convex; the small ridge keeps ``s`` finite
    when the pairs are separable) by Newton's method; ``d_i`` is the feature's chosen-minus-rejected value.
    """
    if not diffs:
        return 1.0
    n = len(diffs)
    s = 1.0
    for _ in range(iters):
        sig = [1.0 / (1.0 + math.exp(min(s * d, 50.0))) for d in diffs]  # sigma(-s d)
        g = -sum(d * q for d, q in zip(diffs, sig)) / n + l2 * s
        h = sum(d * d * q * (1 - q) for d, q in zip(diffs, sig)) / n + l2
        step = g / h
        s = max(s - step, 0.0)
        if abs(step) < 1e-9 * max(s, 1.0):
            break
    return s


def fit_likelihood_reward(lm: Any, tok: Any, train_pairs: list[Pair]) -> tuple[LikelihoodReward, dict]:
    """The likelihood head's two numbers from the training pairs: the BT scale and the centre."""
    rm = LikelihoodReward(lm)
    prompts = [q.prompt for q in train_pairs]
    mc = rm.mean_logprobs(tok, prompts, [q.chosen for q in train_pairs])
    mr = rm.mean_logprobs(tok, prompts, [q.rejected for q in train_pairs])
    rm.scale = fit_bt_scale([a - b for a, b in zip(mc, mr)])
    rm.center = (sum(mc) + sum(mr)) / max(len(mc) + len(mr), 1)
    return rm, {"train_accuracy": win_rate(mc, mr), "scale": rm.scale, "center": rm.center}


def load_reward_model(path: Path | str) -> Any:
    """A reward-model artifact: ``LikelihoodReward`` when ``reward.json`` says so, else the sequence
    classifier (``AutoModelForSequenceClassification``), in float32."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from ops.cpu_gemm import fast_linear

    path = Path(path)
    spec = path / REWARD_FILE
    if spec.is_file():
        meta = json.loads(spec.read_text())
        if meta.get("head") == "likelihood":
            from ops.model import load_model

            return LikelihoodReward(load_model(path), float(meta["scale"]), float(meta["center"]))
        raise ValueError(f"{spec}: unknown reward head {meta.get('head')!r}; expected one of {HEADS}")
    rm = AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    rm.eval()
    return fast_linear(rm)


def _encode(tok, prompts, responses, max_len):
    from ops.posttrain.common import Example

    ex = [Example(str(i), q, r) for i, (q, r) in enumerate(zip(prompts, responses))]
    enc, _ = encode_all(tok, ex, max_len=10**9)
    return [ids[-max_len:] for ids, _ in enc]


def _rewards(rm: Any, seqs: list[list[int]], pad_id: int) -> Any:
    """Scalar reward per sequence: the head at the last real token (right padding, explicit index)."""
    import torch

    dev = next(rm.parameters()).device
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    att = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        att[i, : len(s)] = 1
    ids, att = ids.to(dev), att.to(dev)
    hidden = rm.model(input_ids=ids, attention_mask=att).last_hidden_state
    last = att.sum(1) - 1
    h = hidden[torch.arange(len(seqs), device=dev), last]
    return rm.score(h).squeeze(-1).float()


def score_texts(
    rm: Any, tok: Any, prompts: list[str], responses: list[str], batch_size: int = 128, max_len: int = 512
) -> list[float]:
    import torch

    if isinstance(rm, LikelihoodReward):
        return rm.score(tok, prompts, responses, batch_size=batch_size, max_len=max_len)
    seqs = _encode(tok, prompts, responses, max_len)
    out: list[float] = []
    was = rm.training
    rm.eval()
    with torch.no_grad():
        for s in range(0, len(seqs), batch_size):
            out += _rewards(rm, seqs[s : s + batch_size], tok.pad_token_id).tolist()
    rm.train(was)
    return out


def pair_accuracy(rm: Any, tok: Any, pairs: list[Pair], with_rewards: bool = False) -> dict[str, Any]:
    """Held-out accuracy of the reward model and of the length-only baseline (best direction); with
    ``with_rewards`` also the per-pair rewards (``chosen_rewards``, ``rejected_rewards``)."""
    if not pairs:
        return {"accuracy": float("nan"), "length_baseline": float("nan"), "pairs": 0}
    rc = score_texts(rm, tok, [p.prompt for p in pairs], [p.chosen for p in pairs])
    rr = score_texts(rm, tok, [p.prompt for p in pairs], [p.rejected for p in pairs])
    acc = win_rate(rc, rr)
    lc = [len(tok(p.chosen, add_special_tokens=False)["input_ids"]) for p in pairs]
    lr = [len(tok(p.rejected, add_special_tokens=False)["input_ids"]) for p in pairs]
    longer = win_rate(lc, lr)
    out: dict[str, Any] = {
        "accuracy": acc,
        "length_baseline": max(longer, 1 - longer),
        "pairs": len(pairs),
        "margin": sum(a - b for a, b in zip(rc, rr)) / len(pairs),
    }
    if with_rewards:
        out.update(chosen_rewards=rc, rejected_rewards=rr)
    return out


@dataclass
class RMParams:
    steps: int = 200
    lr: float = 1e-3
    batch_size: int = 32
    warmup_steps: int = 10
    optim: OptimConfig = field(default_factory=OptimConfig)
    max_len: int = 256
    seed: int = 0
    ckpt_every: int = 100  # checkpoint every N steps and at the end (with a work_dir); 0 = at the end only
    keep_last: int = 2  # checkpoints kept in the work directory


def train_reward_model(
    rm: Any,
    tok: Any,
    train_pairs: list[Pair],
    p: RMParams,
    *,
    work_dir: Path | None,
    fingerprint: dict | None = None,
    eval_fn: Callable | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    from ops.train.core import params_fingerprint, train
    from ops.train.optim import train_config

    if not train_pairs:
        raise ValueError(
            "no training pairs: the rollouts have no prompt with both a correct and an incorrect sample"
        )
    ch = _encode(tok, [q.prompt for q in train_pairs], [q.chosen + "" for q in train_pairs], p.max_len)
    rj = _encode(tok, [q.prompt for q in train_pairs], [q.rejected for q in train_pairs], p.max_len)
    pad = tok.pad_token_id

    def batch_fn(step: int, micro: int) -> dict:
        idx = epoch_batches(len(ch), p.batch_size, step, p.seed)
        return {"chosen": [ch[i] for i in idx], "rejected": [rj[i] for i in idx]}

    def loss_fn(model, batch):
        n = len(batch["chosen"])
        r = _rewards(model, batch["chosen"] + batch["rejected"], pad)
        loss, st = bradley_terry_loss(r[:n], r[n:])
        return loss, {**st, "tokens": sum(map(len, batch["chosen"] + batch["rejected"]))}

    cfg = train_config(p, log_every=max(p.steps // 20, 1))
    out = train(
        rm,
        loss_fn,
        batch_fn,
        cfg,
        work_dir=work_dir,
        fingerprint={"reward_model": params_fingerprint(p), **(fingerprint or {})},
        eval_fn=eval_fn,
        log=log,
        progress=False,
    )
    return {"curve": out.curve, "losses": out.losses, "wall_s": out.wall_s, "final_eval": out.final_eval}


__all__ = [
    "IM_END",
    "Pair",
    "pairs_from_rollouts",
    "pairs_from_table",
    "split_pairs",
    "init_reward_model",
    "LikelihoodReward",
    "fit_bt_scale",
    "fit_likelihood_reward",
    "load_reward_model",
    "score_texts",
    "pair_accuracy",
    "RMParams",
    "train_reward_model",
]
