"""PPO for language models (InstructGPT-style): policy with a value head, GAE, clipped surrogate, clipped
value loss, per-token KL penalty to a frozen reference folded into the reward, scores from a reward model
and/or rule rewards at the last token, several epochs of minibatches per rollout batch.

Key design choice: the value head is one linear layer on the policy's own last hidden state (a shared trunk,
as TRL's ``AutoModelForCausalLMWithValueHead``), so one forward gives log-probs and values; the head is saved
beside the policy as ``value_head.safetensors`` and the policy itself stays a plain causal LM checkpoint.
With a work directory the run checkpoints policy, value head, optimizer, RNG, history and rollouts through the
training core's :class:`ops.train.core.Checkpointer`; sampling seeds, prompt order and minibatch order are
pure functions of the step, so a resumed run ends bit-identical to an uninterrupted one on CPU.
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

    With ``work_dir`` the run checkpoints every ``p.ckpt_every`` steps and resumes from the newest checkpoint
    there (refused under other parameters or another ``fingerprint``, as in :func:`ops.train.core.train`).
    """
    import torch

    from ops.posttrain.common import strip_stop
    from ops.train.core import (
        Checkpointer,
        NonFiniteError,
        clip_grads,
        make_optimizer,
        params_fingerprint,
        schedule_lr,
        set_lr,
    )
    from ops.train.optim import train_config

    if not specs and reward_model is None:
        raise ValueError("PPO needs rule rewards, a reward model, or both")
    dev = next(policy.parameters()).device
    torch.manual_seed(p.seed)
    vh = value_head if value_head is not None else make_value_head(policy)
    cfg = train_config(p)
    pol_params = [q for q in policy.parameters() if q.requires_grad]
    opt = make_optimizer(pol_params, cfg)
    opt.add_param_group({"params": list(vh.parameters()), "lr": p.lr * p.value_lr_mult, "weight_decay": 0.0})
    # one module for the checkpoint: the policy and its value head are saved and restored together
    both = torch.nn.ModuleDict({"policy": policy, "value_head": vh})
    ck = Checkpointer(
        work_dir,
        cfg,
        {"ppo": params_fingerprint(p), "reward_model": reward_model is not None, **(fingerprint or {})},
    )
    ref.eval().requires_grad_(False)
    prompt_ids = chat_prompts(tok, [t.question for t in tasks])
    stop, pad = stop_token_ids(tok), pad_token_id(tok)
    st = PPOState()
    start = 0
    resumed = ck.resume(both, opt)
    if resumed is not None:
        start, saved = resumed
        st.history, st.rollouts = saved["history"], saved["rollouts"]
        log(f"resumed from checkpoint {ck.last.name} (step {start}/{p.steps})")
    elif eval_fn is not None:
        st.history.append({"step": 0, **eval_fn(policy, 0)})
    n_s = p.samples_per_prompt
    for step in range(start, p.steps):
        t0 = time.perf_counter()
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
        if specs:
            total, comps = score(specs, RewardBatch(texts, answers, [s.n_tokens for s in samples], n_s))
        if reward_model is not None:
            from ops.posttrain.rm import score_texts

            rm = score_texts(
                reward_model,
                tok,
                [tasks[i].question for i in idx for _ in range(n_s)],
                [strip_stop(t) for t in texts],
            )
            comps["model"] = rm
            total = [a + p.rm_weight * b for a, b in zip(total, rm)]
        t = completion_tensors(samples, pad, dev)
        mask = t["comp_mask"]
        with torch.no_grad():
            old_lp, hid = completion_logprobs(policy, t, p.temperature, with_hidden=True)
            old_v = vh(hid).squeeze(-1) * mask
            ref_lp = completion_logprobs(ref, t, p.temperature)
            kl_tok = (old_lp - ref_lp) * mask
            rew = -p.kl_coef * kl_tok
            last = (mask.sum(1) - 1).long().clamp(min=0)
            rew[torch.arange(len(samples), device=dev), last] += torch.tensor(total, device=dev)
            adv, ret = gae(rew, old_v, mask, p.gamma, p.lam)
            if p.whiten_advantages:
                m = mask.bool()
                mu, sd = adv[m].mean(), adv[m].std()
                adv = torch.where(m, (adv - mu) / (sd + 1e-8), torch.zeros_like(adv))
        set_lr(opt, schedule_lr(step, cfg))
        opt.param_groups[-1]["lr"] = schedule_lr(step, cfg) * p.value_lr_mult
        agg: dict[str, float] = {}
        cnt = 0
        g = torch.Generator().manual_seed(p.seed * 31 + step)
        for _ in range(p.epochs):
            perm = torch.randperm(len(samples), generator=g).tolist()
            for s0 in range(0, len(samples), p.minibatch_size):
                mb = perm[s0 : s0 + p.minibatch_size]
                tm = completion_tensors([samples[i] for i in mb], pad, dev)
                L = tm["comp_mask"].shape[1]
                lp, h = completion_logprobs(policy, tm, p.temperature, with_hidden=True)
                v = vh(h).squeeze(-1)
                pl, pst = ppo_policy_loss(lp, old_lp[mb, :L], adv[mb, :L], tm["comp_mask"], p.clip_eps)
                vl, vst = ppo_value_loss(v, old_v[mb, :L], ret[mb, :L], tm["comp_mask"], p.value_clip_eps)
                loss = pl + p.vf_coef * vl
                if not torch.isfinite(loss):
                    raise NonFiniteError("PPO loss", step + 1, float(loss), ck.last)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gn = clip_grads(pol_params + list(vh.parameters()), cfg.grad_clip)
                opt.step()
                for k, val in {
                    "policy_loss": float(pl),
                    "value_loss": float(vl),
                    "grad_norm": gn,
                    **pst,
                    **vst,
                }.items():
                    agg[k] = agg.get(k, 0.0) + val
                cnt += 1
        n_tok = sum(s.n_tokens for s in samples)
        rec = {
            "step": step + 1,
            "score": sum(total) / len(total),
            **{f"reward_{k}": sum(v) / len(v) for k, v in comps.items()},
            "kl": float(kl_tok.sum(1).mean()),
            "completion_tokens": n_tok / len(samples),
            "gen_s": t_gen,
            "step_s": time.perf_counter() - t0,
            **{k: v / cnt for k, v in agg.items()},
        }
        if eval_fn is not None and step + 1 == p.steps:
            rec.update(eval_fn(policy, step + 1))
        st.history.append(rec)
        log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
        for j, s in enumerate(samples):
            task = tasks[idx[j // n_s]]
            st.rollouts.append(
                {
                    "id": f"{stage}-s{step + 1}-{j}",
                    "prompt_id": task.id,
                    "prompt": task.question,
                    "answer": task.answer,
                    "completion": texts[j],
                    "prompt_tokens": len(s.prompt_ids),
                    "completion_tokens": s.n_tokens,
                    "finished": s.finished,
                    "group": step * p.prompts_per_step + j // n_s,
                    "reward": total[j],
                    "advantage": float(adv[j][mask[j].bool()].mean()) if s.n_tokens else 0.0,
                    "policy_version": step,
                    "stage": stage,
                    **{f"reward_{k}": v[j] for k, v in comps.items()},
                }
            )
        if ck.due(step + 1):
            ck.save(step + 1, both, opt, {"history": st.history, "rollouts": st.rollouts})
    return st, vh
