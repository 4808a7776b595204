"""PPO for language models (InstructGPT-style): policy with a value head, GAE, clipped surrogate, clipped
value loss, per-token KL penalty to a frozen reference folded into the reward, scores from a reward model
and/or rule rewards at the last token, several epochs of minibatches per rollout batch.

Levers for small models, each off by default and measured in ``experiments/LEDGER.md``: the sequence score
whitened over each rollout batch (``reward_whiten``), the reward model's score clipped (``rm_clip``) and
weighted against the rule rewards (``rm_weight``), the first ``value_warmup_steps`` steps fitting only the value
head (on detached hidden states, so neither the policy nor its trunk moves), and the KL coefficient adapted
towards a target KL (``kl_target``, ``kl_horizon``; Ziegler et al. 2019). Every step also records the rule-based
accuracy of its rollouts (``rule_accuracy``) whether or not accuracy is part of the reward, so a run against a
reward model shows whether the model's score rose by solving more problems or by pleasing the model.

Key design choice: the value head is one linear layer on the policy's own last hidden state (a shared trunk,
as TRL's ``AutoModelForCausalLMWithValueHead``), so one forward gives log-probs and values; the head is saved
beside the policy as ``value_head.safetensors`` and the policy itself stays a plain causal LM checkpoint.
The steps run in the training core (``ops.train.core.train``), which owns stepping, the LR schedule, the
non-finite guard, checkpoints (policy, value head, optimizer, RNG, history and rollouts) and logging; sampling
seeds, prompt order and minibatch order are pure functions of the step, so a resumed run ends bit-identical to
an uninterrupted one on CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ops.generate import chat_prompts, pad_token_id, sample, stop_token_ids
from ops.losses import gae, ppo_policy_loss, ppo_value_loss
from ops.rewards import RewardBatch, RewardSpec, score
from ops.rl.common import completion_logprobs, completion_tensors, pick_prompts
from ops.tasks import Task
from ops.train.optim import OptimConfig, RLOptimConfig


@dataclass
class PPOParams:
    steps: int = 20
    prompts_per_step: int = 64
    samples_per_prompt: int = 1
    max_new_tokens: int = 64
    temperature: float = 1.0
    lr: float = 2e-5
    value_lr_mult: float = 50.0  # the fresh value head learns faster than the pretrained trunk
    warmup_steps: int = 3
    kl_coef: float = 0.05
    clip_eps: float = 0.2
    value_clip_eps: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    epochs: int = 2
    minibatch_size: int = 32
    rm_weight: float = 1.0
    rm_clip: float | None = None  # reward-model score clipped to [-rm_clip, rm_clip] before weighting
    reward_whiten: bool = False  # sequence score whitened over the rollout batch before the KL penalty
    value_warmup_steps: int = 0  # the first N steps fit only the value head
    kl_target: float | None = None  # adaptive KL: coefficient steered towards this sequence KL
    kl_horizon: int = 10000  # adaptive KL: samples over which the coefficient may move by e^(+-0.2)
    monitor_format: str | None = None  # answer format of the rule-accuracy monitor (None: the default)
    optim: OptimConfig = field(default_factory=RLOptimConfig)
    whiten_advantages: bool = True
    seed: int = 0
    gen_batch_size: int = 512
    ckpt_every: int = 5  # checkpoint every N steps and at the end (with a work_dir); 0 = at the end only
    keep_last: int = 2  # checkpoints kept in the work directory


@dataclass
class PPOState:
    history: list[dict[str, Any]] = field(default_factory=list)
    rollouts: list[dict[str, Any]] = field(default_factory=list)


def make_value_head(policy: Any) -> Any:
    import torch

    h = torch.nn.Linear(policy.config.hidden_size, 1)
    torch.nn.init.zeros_(h.weight)
    torch.nn.init.zeros_(h.bias)
    return h.to(next(policy.parameters()).device)


def adaptive_kl_coef(coef: float, kl: float, target: float, n_samples: int, horizon: int) -> float:
    """Ziegler et al. (2019)'s proportional controller: ``beta <- beta (1 + clip(KL / target - 1, -0.2, 0.2)
    n / horizon)`` after a rollout batch of ``n`` samples with mean sequence KL ``KL``."""
    err = min(max(kl / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + err * n_samples / horizon)


def train_ppo(
    policy: Any,
    ref: Any,
    tok: Any,
    tasks: list[Task],
    specs: list[RewardSpec],
    p: PPOParams,
    *,
    reward_model: Any = None,
    value_head: Any = None,
    eval_fn: Callable | None = None,
    log: Callable[[str], None] = print,
    stage: str = "ppo",
    work_dir: Path | None = None,
    fingerprint: dict[str, Any] | None = None,
) -> tuple[PPOState, Any]:
    """Run PPO in place; returns ``(state, value_head)``. ``specs`` may be empty when a reward model is given.

    The steps run in the training core (:func:`ops.train.core.train`): each step's batch is a scored rollout
    batch with its advantages, giving ``epochs`` passes of shuffled minibatch updates; the value head is a
    second param group at ``value_lr_mult`` times the policy's LR, clipped together with the policy. With
    ``work_dir`` the run checkpoints every ``p.ckpt_every`` steps and resumes from the newest checkpoint there
    (refused under other parameters or another ``fingerprint``). With ``kl_target`` the coefficient of each
    step follows from the previous step's record (its ``kl_coef`` and ``kl``), so a resumed run continues it.
    """
    import torch

    from ops.train.core import CORE_FIELDS, StepBatch, params_fingerprint, train
    from ops.train.optim import train_config

    if not specs and reward_model is None:
        raise ValueError("PPO needs rule rewards, a reward model, or both")
    if p.value_warmup_steps >= p.steps:
        raise ValueError(f"value_warmup_steps ({p.value_warmup_steps}) must be below steps ({p.steps})")
    dev = next(policy.parameters()).device
    torch.manual_seed(p.seed)
    vh = value_head if value_head is not None else make_value_head(policy)
    # log-prob ratios are computed in the model's own precision (no bf16 autocast), every step is logged
    cfg = train_config(p, precision="fp32", log_every=1)
    # one module for the checkpoint: the policy and its value head are saved and restored together
    both = torch.nn.ModuleDict({"policy": policy, "value_head": vh})
    ref.eval().requires_grad_(False)
    prompt_ids = chat_prompts(tok, [t.question for t in tasks])
    stop, pad = stop_token_ids(tok), pad_token_id(tok)
    state: dict[str, Any] = {"history": [], "rollouts": []}
    current: dict[str, Any] = {}  # the rollout batch of the step being trained

    def batch_fn(step: int, micro: int) -> StepBatch:
        if step == 0 and eval_fn is not None and not state["history"]:
            state["history"].append({"step": 0, **eval_fn(policy, 0)})
        coef = _kl_coef(p, [r for r in state["history"] if r["step"] > 0])
        c = _rollout_batch(
            policy, ref, vh, tok, tasks, specs, reward_model, prompt_ids, stop, pad, dev, p, step, coef
        )
        c["warmup"] = step < p.value_warmup_steps
        current.clear()
        current.update(c)
        g = torch.Generator().manual_seed(p.seed * 31 + step)
        n = len(c["samples"])
        updates = []
        for _ in range(p.epochs):
            perm = torch.randperm(n, generator=g).tolist()
            updates += [perm[s0 : s0 + p.minibatch_size] for s0 in range(0, n, p.minibatch_size)]
        return StepBatch(updates)

    def loss_fn(model: Any, mb: list[int]) -> tuple[Any, dict[str, float]]:
        c = current
        tm = completion_tensors([c["samples"][i] for i in mb], pad, dev)
        L = tm["comp_mask"].shape[1]
        lp, h = completion_logprobs(model["policy"], tm, p.temperature, with_hidden=True)
        # value warm-up: the head learns on detached features, so the policy (trunk included) gets no gradient
        v = model["value_head"](h.detach() if c["warmup"] else h).squeeze(-1)
        pl, pst = ppo_policy_loss(lp, c["old_lp"][mb, :L], c["adv"][mb, :L], tm["comp_mask"], p.clip_eps)
        vl, vst = ppo_value_loss(v, c["old_v"][mb, :L], c["ret"][mb, :L], tm["comp_mask"], p.value_clip_eps)
        loss = p.vf_coef * vl if c["warmup"] else pl + p.vf_coef * vl
        return loss, {"policy_loss": float(pl.detach()), "value_loss": float(vl.detach()), **pst, **vst}

    def on_step(done: int, record: dict[str, Any]) -> None:
        c = current
        samples, total = c["samples"], c["total"]
        n_tok = sum(s.n_tokens for s in samples)
        upd = {k: v for k, v in record.items() if k not in CORE_FIELDS and k != "loss"}
        rec = {
            "step": done,
            "score": sum(total) / len(total),
            **{f"reward_{k}": sum(v) / len(v) for k, v in c["comps"].items()},
            "rule_accuracy": sum(c["rule_accuracy"]) / len(samples),
            "rollouts": len(samples),
            "kl": c["kl"],
            "kl_coef": c["kl_coef"],
            "value_warmup": int(c["warmup"]),
            "completion_tokens": n_tok / len(samples),
            "gen_s": c["t_gen"],
            "step_s": time.perf_counter() - c["t0"],
            # the update statistics averaged over the step's updates, in the order they were always reported
            "policy_loss": upd.pop("policy_loss"),
            "value_loss": upd.pop("value_loss"),
            "grad_norm": upd.pop("grad_norm"),
            **upd,
        }
        if eval_fn is not None and done == p.steps:
            rec.update(eval_fn(policy, done))
        state["history"].append(rec)
        record.update({k: v for k, v in rec.items() if k not in record})
        state["rollouts"] += _rollout_rows(c, tasks, p, stage, done - 1)

    pol_params = [q for q in policy.parameters() if q.requires_grad]
    train(
        both,
        loss_fn,
        batch_fn,
        cfg,
        work_dir=work_dir,
        fingerprint={"ppo": params_fingerprint(p), "reward_model": reward_model is not None, **(fingerprint or {})},
        log=log,
        trainable_params=pol_params,
        param_groups=[{"params": list(vh.parameters()), "weight_decay": 0.0, "lr_mult": p.value_lr_mult}],
        progress=False,
        state=state,
        on_step=on_step,
    )
    return PPOState(history=state["history"], rollouts=state["rollouts"]), vh


def _kl_coef(p: PPOParams, trained: list[dict[str, Any]]) -> float:
    """The KL coefficient of the next step: fixed, or adapted from the last trained step's KL."""
    if p.kl_target is None or not trained:
        return p.kl_coef
    last = trained[-1]
    n = p.prompts_per_step * p.samples_per_prompt
    return adaptive_kl_coef(last["kl_coef"], last["kl"], p.kl_target, n, p.kl_horizon)


def _rollout_batch(
    policy, ref, vh, tok, tasks, specs, reward_model, prompt_ids, stop, pad, dev, p, step, kl_coef
) -> dict:
    """Sample and score step ``step``'s rollouts, then (without gradients) the old log-probs and values, the
    per-token KL to the reference folded into the rewards, and the GAE advantages and returns."""
    import torch

    from ops.posttrain.common import strip_stop
    from ops.rewards import FORMAT_PARAM, RewardSpec

    t0 = time.perf_counter()
    n_s = p.samples_per_prompt
    idx = pick_prompts(len(tasks), p.prompts_per_step, step, p.seed)
    rep = [prompt_ids[i] for i in idx for _ in range(n_s)]
    samples = sample(
        policy,
        rep,
        max_new_tokens=p.max_new_tokens,
        stop_ids=stop,
        pad_id=pad,
        temperature=p.temperature,
        seed=p.seed * 1_000_003 + step,
        batch_size=p.gen_batch_size,
    )
    t_gen = time.perf_counter() - t0
    texts = tok.batch_decode([s.ids for s in samples], skip_special_tokens=False)
    answers = [tasks[i].answer for i in idx for _ in range(n_s)]
    total = [0.0] * len(samples)
    comps: dict[str, list[float]] = {}
    batch = RewardBatch(texts, answers, [s.n_tokens for s in samples], n_s)
    if specs:
        total, comps = score(specs, batch)
    fmt = {FORMAT_PARAM: p.monitor_format} if p.monitor_format else {}
    rule_acc = comps.get("accuracy") or score([RewardSpec("accuracy", 1.0, fmt)], batch)[1]["accuracy"]
    if reward_model is not None:
        from ops.posttrain.rm import score_texts

        rm = score_texts(
            reward_model,
            tok,
            [tasks[i].question for i in idx for _ in range(n_s)],
            [strip_stop(t) for t in texts],
        )
        comps["model"] = rm  # the model's own score; the clipped one enters the reward
        if p.rm_clip is not None:
            rm = [min(max(x, -p.rm_clip), p.rm_clip) for x in rm]
        total = [a + p.rm_weight * b for a, b in zip(total, rm)]
    score_used = total
    if p.reward_whiten and len(total) > 1:
        mu = sum(total) / len(total)
        sd = (sum((x - mu) ** 2 for x in total) / (len(total) - 1)) ** 0.5
        score_used = [(x - mu) / (sd + 1e-8) for x in total]
    t = completion_tensors(samples, pad, dev)
    mask = t["comp_mask"]
    with torch.no_grad():
        old_lp, hid = completion_logprobs(policy, t, p.temperature, with_hidden=True)
        old_v = vh(hid).squeeze(-1) * mask
        ref_lp = completion_logprobs(ref, t, p.temperature)
        kl_tok = (old_lp - ref_lp) * mask
        rew = -kl_coef * kl_tok
        last = (mask.sum(1) - 1).long().clamp(min=0)
        rew[torch.arange(len(samples), device=dev), last] += torch.tensor(score_used, device=dev)
        adv, ret = gae(rew, old_v, mask, p.gamma, p.lam)
        if p.whiten_advantages:
            m = mask.bool()
            mu, sd = adv[m].mean(), adv[m].std()
            adv = torch.where(m, (adv - mu) / (sd + 1e-8), torch.zeros_like(adv))
    return {
        "t0": t0, "t_gen": t_gen, "idx": idx, "samples": samples, "texts": texts, "total": total, "comps": comps,
        "rule_accuracy": rule_acc, "kl_coef": kl_coef,
        "mask": mask, "old_lp": old_lp, "old_v": old_v, "adv": adv, "ret": ret, "kl": float(kl_tok.sum(1).mean()),
    }


def _rollout_rows(c: dict[str, Any], tasks: list[Task], p: PPOParams, stage: str, step: int) -> list[dict]:
    rows = []
    n_s = p.samples_per_prompt
    for j, s in enumerate(c["samples"]):
        task = tasks[c["idx"][j // n_s]]
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
                "group": step * p.prompts_per_step + j // n_s,
                "reward": c["total"][j],
                "advantage": float(c["adv"][j][c["mask"][j].bool()].mean()) if s.n_tokens else 0.0,
                "policy_version": step,
                "stage": stage,
                **{f"reward_{k}": v[j] for k, v in c["comps"].items()},
            }
        )
    return rows
