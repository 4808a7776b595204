"""GRPO with rule rewards (DeepSeekMath / DeepSeek-R1): a group of samples per prompt, group-normalised
advantages (no critic), clipped ratio, k3 KL to a frozen reference inside the loss.

Key design choice: one step = sample -> score -> update, run by the training core (``ops.train.core.train``):
GRPO supplies the rollout batch (a :class:`ops.train.core.StepBatch` of minibatch updates) and the loss; the
core owns stepping, the LR schedule, the non-finite guard, checkpoints and logging. Sampling seeds and prompt
order are pure functions of the step, so with a work directory a run killed at any point resumes from its last
checkpoint (weights, optimizer, RNG, history and rollouts so far) and ends bit-identical to an uninterrupted
run on CPU. The defaults follow what the measured miniature runs taught (see
``/work/shared/reference/measured-facts.md``): fully on-policy (one update per batch, the old log-probs are
the current ones detached, so the ratio is exactly 1 at the update), lr <= 5e-5 with warm-up, groups whose
rewards have std <= 1e-6 are dropped from the update (no spurious advantage from float noise, and no compute
spent on them), and many prompts per step. DAPO's two levers are options: clip-higher (``clip_eps_high``, an
upper ratio bound above ``clip_eps``; it acts only off-policy, from the second pass over a batch) and dynamic
sampling (``dynamic_sampling``: the dropped groups are replaced by groups of further prompts, sampled in at
most ``max_refill`` extra rounds per step, so each update sees up to ``prompts_per_step`` groups with signal).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.generate import chat_prompts, pad_token_id, sample, stop_token_ids
from ops.losses import group_advantages, grpo_loss
from ops.rewards import RewardBatch, RewardSpec, score
from ops.rl.common import completion_logprobs, completion_tensors, pick_prompts
from ops.tasks import Task
from ops.train.optim import OptimConfig, RLOptimConfig


@dataclass
class GRPOParams:
    steps: int = 30
    prompts_per_step: int = 32
    group_size: int = 8
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    lr: float = 3e-5
    warmup_steps: int = 5
    beta: float = 0.04  # k3 KL coefficient in the loss (0: KL to the reference measured, not penalised)
    clip_eps: float = 0.2
    clip_eps_high: float | None = None  # DAPO's clip-higher; None = symmetric
    dynamic_sampling: bool = False  # DAPO: replace groups without signal by groups of further prompts
    max_refill: int = 2  # extra sampling rounds per step with dynamic sampling (each at most prompts_per_step)
    norm: str = "token"  # token | sequence | unbiased (Dr. GRPO)
    scale_rewards: bool = True  # False = Dr. GRPO advantages (no std division)
    updates_per_batch: int = 1  # > 1 re-uses each rollout batch (off-policy after the first)
    minibatch_size: int = 0  # samples per optimizer step inside an update; 0 = whole batch
    optim: OptimConfig = field(default_factory=RLOptimConfig)
    seed: int = 0
    min_std: float = 1e-6
    gen_batch_size: int = 512
    fixed_prompts: int = 0  # > 0: always train on the same first N prompts (a unit check)
    ckpt_every: int = 10  # checkpoint every N steps and at the end (with a work_dir); 0 = at the end only
    keep_last: int = 2  # checkpoints kept in the work directory


@dataclass
class GRPOState:
    history: list[dict[str, Any]] = field(default_factory=list)
    rollouts: list[dict[str, Any]] = field(default_factory=list)


def train_grpo(
    policy: Any,
    ref: Any | None,
    tok: Any,
    tasks: list[Task],
    specs: list[RewardSpec],
    p: GRPOParams,
    *,
    eval_fn: Callable[[Any, int], dict] | None = None,
    eval_every: int = 0,
    log: Callable[[str], None] = print,
    keep_rollouts: bool = True,
    stage: str = "grpo",
    work_dir: Path | None = None,
    fingerprint: dict[str, Any] | None = None,
) -> GRPOState:
    """Run ``p.steps`` GRPO steps on ``policy`` in place; returns per-step history and rollout rows.

    The steps run in the training core (:func:`ops.train.core.train`): each step's batch is a sampled and
    scored rollout batch whose live groups give ``updates_per_batch`` passes of minibatch updates. With
    ``work_dir`` the run checkpoints every ``p.ckpt_every`` steps and resumes from the newest checkpoint
    there; a checkpoint written under other parameters or another ``fingerprint`` (the caller's data identity)
    is refused (:class:`ops.train.core.ResumeRefused`).
    """
    import torch

    from ops.train.core import CORE_FIELDS, StepBatch, params_fingerprint, train
    from ops.train.optim import train_config

    if not tasks:
        raise ValueError("GRPO needs at least one training prompt")
    dev = next(policy.parameters()).device
    torch.manual_seed(p.seed)
    # log-prob ratios are computed in the model's own precision (no bf16 autocast), every step is logged
    cfg = train_config(p, precision="fp32", log_every=1)
    if ref is not None:
        ref.eval().requires_grad_(False)
    pool = tasks[: p.fixed_prompts] if p.fixed_prompts else tasks
    prompt_ids = chat_prompts(tok, [t.question for t in pool])
    stop, pad = stop_token_ids(tok), pad_token_id(tok)
    names = [s.name for s in specs]
    state: dict[str, Any] = {"history": [], "rollouts": []}
    current: dict[str, Any] = {}  # the rollout batch of the step being trained

    def rollout(idx: list[int], seed: int) -> dict[str, Any]:
        """Sample a group per prompt of ``idx`` and score it: samples, texts, rewards and advantages."""
        rep = [prompt_ids[i] for i in idx for _ in range(p.group_size)]
        t0 = time.perf_counter()
        samples = sample(
            policy,
            rep,
            max_new_tokens=p.max_new_tokens,
            stop_ids=stop,
            pad_id=pad,
            temperature=p.temperature,
            top_p=p.top_p,
            seed=seed,
            batch_size=p.gen_batch_size,
            return_logprobs=p.updates_per_batch > 1,
        )
        t_gen = time.perf_counter() - t0
        texts = tok.batch_decode([s.ids for s in samples], skip_special_tokens=False)
        answers = [pool[i].answer for i in idx for _ in range(p.group_size)]
        total, comps = score(specs, RewardBatch(texts, answers, [s.n_tokens for s in samples], p.group_size))
        rewards = torch.tensor(total)
        adv, live = group_advantages(rewards, p.group_size, scale=p.scale_rewards, min_std=p.min_std)
        return {"idx": idx, "samples": samples, "texts": texts, "total": total, "comps": comps, "rewards": rewards,
                "adv": adv, "live": live, "t_gen": t_gen}

    def batch_fn(step: int, micro: int) -> StepBatch:
        if step == 0 and eval_fn is not None and not state["history"]:
            state["history"].append({"step": 0, **eval_fn(policy, 0)})
        t0 = time.perf_counter()
        r = rollout(pick_prompts(len(pool), p.prompts_per_step, step, p.seed), p.seed * 1_000_003 + step)
        rounds = 0
        while p.dynamic_sampling and rounds < p.max_refill:
            n_live = int(r["live"].sum()) // p.group_size
            missing = p.prompts_per_step - n_live
            if missing <= 0:
                break
            rounds += 1
            idx = refill_prompts(len(pool), _refill_size(missing, n_live, len(r["idx"]), p), step, rounds, p.seed,
                                 set(r["idx"]))
            if not idx:
                break
            r = _concat(r, rollout(idx, p.seed * 1_000_003 + step + 500_000 * rounds))
        keep = [i for i in range(len(r["samples"])) if bool(r["live"][i])]
        # dynamic sampling trains on at most prompts_per_step groups, the first ones sampled
        keep = keep[: p.prompts_per_step * p.group_size] if p.dynamic_sampling else keep
        adv, samples = r["adv"], r["samples"]
        current.clear()
        current.update(r, t0=t0, t1=time.perf_counter(), keep=keep, refills=rounds)
        return StepBatch(_minibatches(ref, [samples[i] for i in keep], adv[keep], p, pad, dev) if keep else [])

    def loss_fn(model: Any, mb: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        chunk = mb["samples"]
        t = completion_tensors(chunk, pad, dev)
        lp = completion_logprobs(model, t, p.temperature)
        if p.updates_per_batch > 1:
            old = torch.zeros_like(lp)
            for i, smp in enumerate(chunk):
                old[i, : len(smp.logprobs)] = torch.tensor(smp.logprobs, device=dev)
        else:
            old = lp.detach()
        loss, st = grpo_loss(
            lp,
            old,
            mb["ref_lp"],
            mb["adv"].to(dev),
            t["comp_mask"],
            clip_eps=p.clip_eps,
            beta=p.beta,
            norm=p.norm,
            max_len=p.max_new_tokens,
            clip_eps_high=p.clip_eps_high,
        )
        return loss, st

    def on_step(done: int, record: dict[str, Any]) -> None:
        c = current
        samples = c["samples"]
        n_tok = sum(s.n_tokens for s in samples)
        rec = {
            "step": done,
            "reward": float(c["rewards"].mean()),
            **{f"reward_{n}": sum(v) / len(v) for n, v in c["comps"].items()},
            "live_groups": len(c["keep"]) / len(samples),
            **({"sampled_groups": len(c["idx"]), "refill_rounds": c["refills"]} if p.dynamic_sampling else {}),
            "completion_tokens": n_tok / len(samples),
            "gen_s": c["t_gen"],
            "update_s": time.perf_counter() - c["t1"],
            "step_s": time.perf_counter() - c["t0"],
            "gen_tokens_per_s": n_tok / max(c["t_gen"], 1e-9),
        }
        # the update statistics (loss, grad_norm, kl, ...) averaged over the step's updates, if it had any
        rec.update({k: v for k, v in record.items() if k not in CORE_FIELDS})
        if eval_fn is not None and eval_every and done % eval_every == 0 and done < p.steps:
            rec.update(eval_fn(policy, done))
        if eval_fn is not None and done == p.steps:
            rec.update(eval_fn(policy, done))
        state["history"].append(rec)
        record.update({k: v for k, v in rec.items() if k not in record})
        if keep_rollouts:
            state["rollouts"] += _rollout_rows(c, pool, p, names, stage, done - 1)

    params = [q for q in policy.parameters() if q.requires_grad]
    train(
        policy,
        loss_fn,
        batch_fn,
        cfg,
        work_dir=work_dir,
        fingerprint={"grpo": params_fingerprint(p), "keep_rollouts": keep_rollouts, **(fingerprint or {})},
        log=log,
        trainable_params=params,
        progress=False,
        state=state,
        on_step=on_step,
    )
    return GRPOState(history=state["history"], rollouts=state["rollouts"])


def refill_prompts(n_tasks: int, k: int, step: int, round_: int, seed: int, used: set[int]) -> list[int]:
    """Up to ``k`` task indices outside ``used`` for refill round ``round_`` of ``step`` (dynamic sampling): a
    seeded permutation per (seed, step, round), so a resumed run draws the same prompts."""
    perm = list(range(n_tasks))
    random.Random((seed * 1_000_003 + step) * 64 + round_).shuffle(perm)
    return [i for i in perm if i not in used][:k]


def _refill_size(missing: int, n_live: int, n_sampled: int, p: GRPOParams) -> int:
    """Prompts for the next refill round: the missing groups over the live rate seen so far (one full round
    when no group had signal yet), at most ``prompts_per_step``."""
    if n_live == 0:
        return p.prompts_per_step
    return min(p.prompts_per_step, math.ceil(missing * n_sampled / n_live))


def _concat(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    import torch

    return {
        "idx": a["idx"] + b["idx"],
        "samples": a["samples"] + b["samples"],
        "texts": a["texts"] + b["texts"],
        "total": a["total"] + b["total"],
        "comps": {n: a["comps"][n] + b["comps"][n] for n in a["comps"]},
        "rewards": torch.cat([a["rewards"], b["rewards"]]),
        "adv": torch.cat([a["adv"], b["adv"]]),
        "live": torch.cat([a["live"], b["live"]]),
        "t_gen": a["t_gen"] + b["t_gen"],
    }


def _minibatches(ref, samples, adv, p: GRPOParams, pad, dev) -> list[dict[str, Any]]:
    """The step's updates: ``updates_per_batch`` passes over minibatches of the live samples, each with its
    advantages and (with a reference) the reference log-probs, computed once before any update."""
    import torch

    n = len(samples)
    mb = p.minibatch_size or n
    chunks = list(range(0, n, mb))
    ref_lp: list[Any] = [None] * len(chunks)
    # with a reference the k3 KL is always measured (the stage's "bounded KL" check reads it); beta = 0 only
    # drops it from the loss (DAPO / Dr. GRPO style)
    if ref is not None:
        with torch.no_grad():
            ref_lp = [
                completion_logprobs(ref, completion_tensors(samples[s : s + mb], pad, dev), p.temperature)
                for s in chunks
            ]
    return [
        {"samples": samples[s : s + mb], "adv": adv[s : s + mb], "ref_lp": ref_lp[k]}
        for _epoch in range(p.updates_per_batch)
        for k, s in enumerate(chunks)
    ]


def _rollout_rows(c: dict[str, Any], pool: list[Task], p: GRPOParams, names, stage: str, step: int) -> list[dict]:
    rows = []
    for j, s in enumerate(c["samples"]):
        task = pool[c["idx"][j // p.group_size]]
        rows.append(
            {
                "id": f"{stage}-s{step + 1}-{j}",
                "prompt_id": task.id,
                "prompt": task.question,
                "answer": task.answer,
                "completion": c["texts"][j],
                "prompt_tokens": len(s.prompt_ids),
                "completion_tokens": s.n_tokens,
                "finished": s.finished,
                "group": step * p.prompts_per_step * _rounds(p) + j // p.group_size,
                "reward": c["total"][j],
                "advantage": float(c["adv"][j]),
                "policy_version": step,
                "stage": stage,
                **{f"reward_{n}": c["comps"][n][j] for n in names},
            }
        )
    return rows


def _rounds(p: GRPOParams) -> int:
    """The most sampling rounds of ``prompts_per_step`` prompts one step can take (group ids stay unique)."""
    return 1 + p.max_refill if p.dynamic_sampling else 1


def save_policy(policy: Any, tok: Any, out: Path) -> None:
    from ops.model import save_model

    save_model(policy, tok, out)
