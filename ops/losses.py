"""Every post-training loss as a pure tensor function, each with its formula.

Key design choice: losses take plain tensors (logits or per-token log-probabilities, masks, advantages)
and return a scalar plus a dict of detached statistics; they never call a model, never own state, and never
reduce in a hidden way, so each one is checked against an independent per-token reference in
``tests/ops/test_losses.py`` and reused unchanged by the SFT/RM/DPO/KD batch builders and the RL loops.

Conventions: ``logits`` are ``[B, T, V]`` and ``labels`` are aligned with the input ids (Hugging Face
convention: position ``t`` predicts ``labels[t+1]``; ``-100`` = ignored). Per-token tensors (``logp``,
``mask``, ``advantages``...) are ``[B, L]`` over completion tokens, ``mask`` is 1 for real tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def _num(t: torch.Tensor) -> float:
    """A statistic as a plain float, detached from the graph."""
    return float(t.detach())


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log p(targets[b, t] | logits[b, t])`` for every position (``targets`` aligned with ``logits``).

    Uses ``logsumexp`` rather than a full ``log_softmax`` to avoid materialising ``[B, T, V]`` twice.
    Positions whose target is ``IGNORE`` get 0.
    """
    safe = targets.clamp(min=0)
    picked = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1).float()
    lp = picked - torch.logsumexp(logits.float(), dim=-1)
    return torch.where(targets == IGNORE, torch.zeros_like(lp), lp)


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align HF-convention labels with logits: ``logits[:, :-1]`` predicts ``labels[:, 1:]``."""
    return logits[:, :-1], labels[:, 1:]


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of ``log p`` over the labelled (non-ignored) tokens of each sequence: ``[B]``."""
    lg, lb = shift(logits, labels)
    return token_logprobs(lg, lb).sum(-1)


# ------------------------------------------------------------------------------------------------ SFT
def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Cross-entropy on assistant tokens only.

    ``L = -(1/|A|) * sum_{(b,t) in A} log p_theta(y_{b,t} | y_{b,<t})`` where ``A`` is the set of positions
    whose label is not ``-100`` (prompt and padding are masked by the batch builder), pooled over the batch
    (token-level mean, so long responses weigh by their length).
    """
    lg, lb = shift(logits, labels)
    mask = (lb != IGNORE).float()
    lp = token_logprobs(lg, lb)
    loss = -_masked_mean(lp, mask)
    return loss, {"tokens": float(mask.sum())}


# ------------------------------------------------------------------------------------------------ reward model
def bradley_terry_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float = 0.0
) -> tuple[torch.Tensor, dict]:
    """Bradley-Terry pairwise loss for a scalar reward model.

    ``P(chosen > rejected) = sigma(r_c - r_r)``;  ``L = -mean_i log sigma(r_c,i - r_r,i - m)`` with an
    optional margin ``m`` (Llama-2 style). Stats: pair accuracy ``mean[r_c > r_r]`` and mean margin.
    """
    diff = r_chosen.float() - r_rejected.float()
    loss = -F.logsigmoid(diff - margin).mean()
    return loss, {"accuracy": _num((diff > 0).float().mean()), "margin": _num(diff.mean())}


# ------------------------------------------------------------------------------------------------ DPO
def dpo_loss(
    pol_chosen: torch.Tensor,
    pol_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """Direct Preference Optimization (Rafailov et al. 2023) on summed sequence log-probs ``[B]``.

    Implicit rewards ``r_c = beta (log pi(y_c|x) - log pi_ref(y_c|x))``, ``r_r`` likewise;
    ``L = -(1-eps) log sigma(r_c - r_r) - eps log sigma(r_r - r_c)`` averaged over pairs (``eps`` = label
    smoothing, conservative DPO; 0 = the paper's loss). Stats: reward accuracy and the chosen-minus-rejected
    margin ``r_c - r_r``.
    """
    r_c = beta * (pol_chosen.float() - ref_chosen.float())
    r_r = beta * (pol_rejected.float() - ref_rejected.float())
    z = r_c - r_r
    loss = (-(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)).mean()
    return loss, {
        "accuracy": _num((z > 0).float().mean()),
        "margin": _num(z.mean()),
        "chosen_reward": _num(r_c.mean()),
        "rejected_reward": _num(r_r.mean()),
    }


def ipo_loss(
    pol_chosen: torch.Tensor,
    pol_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, dict]:
    """Identity Preference Optimisation (Azar et al. 2023, eq. 17) on summed sequence log-probs ``[B]``.

    ``h = (log pi(y_c|x) - log pi_ref(y_c|x)) - (log pi(y_r|x) - log pi_ref(y_r|x))``;
    ``L = mean_i (h_i - 1/(2 beta))^2`` with the paper's regularisation ``tau = beta``: the log-ratio gap is
    pulled toward a finite target instead of being pushed to infinity, so deterministic preferences do not
    overfit. Stats as :func:`dpo_loss` (the margin is ``beta * h``, DPO's implicit-reward margin).
    """
    r_c = pol_chosen.float() - ref_chosen.float()
    r_r = pol_rejected.float() - ref_rejected.float()
    h = r_c - r_r
    loss = ((h - 1 / (2 * beta)) ** 2).mean()
    return loss, {
        "accuracy": _num((h > 0).float().mean()),
        "margin": _num(beta * h.mean()),
        "chosen_reward": _num(beta * r_c.mean()),
        "rejected_reward": _num(beta * r_r.mean()),
    }


def rpo_loss(
    pol_chosen: torch.Tensor,
    pol_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    chosen_len: torch.Tensor,
    beta: float = 0.1,
    alpha: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """Iterative Reasoning Preference Optimisation (Pang et al. 2024, eq. 1): DPO plus ``alpha`` times a
    length-normalised negative log-likelihood of the chosen response.

    ``L = mean_i [ -log sigma(r_c,i - r_r,i) - alpha log pi(y_c,i|x_i) / len_i ]`` with DPO's implicit rewards
    ``r = beta (log pi - log pi_ref)``. ``chosen_len`` ``[B]`` is the paper's normaliser ``|x| + |c| + |y|``, the
    token length of the whole chosen conversation (prompt and response); ``log pi(y_c|x)`` sums the response's
    tokens (the prompt is conditioned on). The NLL term keeps the chosen chains likely, where plain DPO lowers
    both responses' likelihood. Stats as :func:`dpo_loss` plus ``nll`` and the DPO term ``dpo``.
    """
    nll = -(pol_chosen.float() / chosen_len.float().clamp(min=1)).mean()
    dpo, st = dpo_loss(pol_chosen, pol_rejected, ref_chosen, ref_rejected, beta=beta)
    return dpo + alpha * nll, {**st, "nll": _num(nll), "dpo": _num(dpo)}


# ------------------------------------------------------------------------------------------------ KL
def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of ``KL(pi || pi_ref)`` from samples of ``pi`` (Schulman 2020):
    ``k3 = exp(ref - logp) - (ref - logp) - 1 >= 0``, unbiased, low variance."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


# ------------------------------------------------------------------------------------------------ PPO
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation over completion tokens (Schulman et al. 2016).

    ``delta_t = r_t + gamma V_{t+1} - V_t`` (``V`` past the last real token is 0),
    ``A_t = sum_k (gamma lam)^k delta_{t+k}``, ``returns_t = A_t + V_t``. ``rewards``, ``values``, ``mask``:
    ``[B, L]``; masked positions get 0. Computed backwards without gradient.
    """
    with torch.no_grad():
        B, L = rewards.shape
        adv = torch.zeros_like(rewards, dtype=torch.float32)
        last = torch.zeros(B, dtype=torch.float32, device=rewards.device)
        next_v = torch.zeros(B, dtype=torch.float32, device=rewards.device)
        m = mask.float()
        for t in range(L - 1, -1, -1):
            delta = rewards[:, t] + gamma * next_v - values[:, t]
            last = delta + gamma * lam * last
            last = last * m[:, t]
            adv[:, t] = last
            next_v = values[:, t] * m[:, t]
        returns = (adv + values) * m
    return adv * m, returns


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, dict]:
    """PPO clipped surrogate (Schulman et al. 2017), token-level mean over real tokens.

    ``rho_t = exp(logp_t - old_logp_t)``;
    ``L = -mean_t min(rho_t A_t, clip(rho_t, 1-eps, 1+eps) A_t)``. Stats: clip fraction, approx KL to the
    behaviour policy ``mean(old - new)``.
    """
    ratio = torch.exp(logp - old_logp)
    s1 = ratio * advantages
    s2 = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages
    loss = -_masked_mean(torch.min(s1, s2), mask)
    with torch.no_grad():
        clipped = ((ratio - 1).abs() > clip_eps).float()
        stats = {
            "clip_frac": _num(_masked_mean(clipped, mask)),
            "approx_kl": _num(_masked_mean(old_logp - logp, mask)),
        }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, dict]:
    """Clipped value loss (as in OpenAI baselines / InstructGPT's PPO).

    ``V_clip = old_V + clip(V - old_V, -eps, eps)``;
    ``L = 0.5 * mean_t max((V_t - R_t)^2, (V_clip_t - R_t)^2)``.
    """
    v_clip = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    l1 = (values - returns) ** 2
    l2 = (v_clip - returns) ** 2
    loss = 0.5 * _masked_mean(torch.max(l1, l2), mask)
    return loss, {"value_clip_frac": _num(_masked_mean((l2 > l1).float(), mask))}


# ------------------------------------------------------------------------------------------------ GRPO
def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4, min_std: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-normalised advantages (DeepSeekMath's GRPO, outcome supervision).

    Rewards ``[N]`` arranged as consecutive groups of ``group_size`` samples of one prompt:
    ``A_i = (r_i - mean_g r) / (std_g r + eps)`` (``scale=False``: ``A_i = r_i - mean_g r``, the unbiased
    "Dr. GRPO" variant). Groups whose std is ``<= min_std`` carry no signal and get ``A = 0`` exactly (float
    noise in an all-equal group would otherwise become a spurious +-1 advantage). Returns
    ``(advantages [N], group_has_signal [N] bool)``. ``std`` is the unbiased sample std, as in TRL.
    """
    r = rewards.float().view(-1, group_size)
    mean = r.mean(1, keepdim=True)
    std = r.std(1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    live = std > min_std
    adv = r - mean
    if scale:
        adv = adv / (std + eps)
    adv = torch.where(live, adv, torch.zeros_like(adv))
    return adv.view(-1), live.expand_as(r).reshape(-1)


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    beta: float = 0.04,
    norm: str = "token",
    max_len: int | None = None,
    clip_eps_high: float | None = None,
) -> tuple[torch.Tensor, dict]:
    """GRPO objective (DeepSeekMath 2024) with a choice of length normalisation.

    Per token of sample ``i`` (advantage ``A_i`` broadcast over its tokens):
    ``rho = exp(logp - old_logp)``,
    ``l_t = -[min(rho A_i, clip(rho, 1-eps, 1+eps_high) A_i) - beta * k3_t]``, ``k3`` from :func:`kl_k3`.

    * ``norm="sequence"``: ``L = mean_i (1/|o_i|) sum_t l_t`` (the paper's per-sample mean; biased towards
      short correct / long wrong answers),
    * ``norm="token"``: ``L = sum_{i,t} l_t / sum_i |o_i|`` (DAPO's token-level normalisation),
    * ``norm="unbiased"``: ``L = sum_{i,t} l_t / (N * max_len)`` with a constant ``max_len`` (Dr. GRPO;
      no length bias; pair it with ``group_advantages(scale=False)``).

    ``ref_logp=None`` or ``beta=0`` drops the KL term. Stats: mean k3 KL, clip fraction (tokens whose ratio is
    outside ``[1 - eps, 1 + eps_high]``), mean ratio.
    """
    if norm not in ("token", "sequence", "unbiased"):
        raise ValueError(f"unknown GRPO normalisation {norm!r}; use 'token', 'sequence' or 'unbiased'")
    m = mask.float()
    ratio = torch.exp(logp - old_logp)
    a = advantages.view(-1, 1).float()
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    surr = torch.min(ratio * a, torch.clamp(ratio, 1 - clip_eps, 1 + hi) * a)
    per_tok = -surr
    kl = kl_k3(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    if ref_logp is not None and beta:
        per_tok = per_tok + beta * kl
    if norm == "token":
        loss = (per_tok * m).sum() / m.sum().clamp(min=1)
    elif norm == "sequence":
        loss = ((per_tok * m).sum(1) / m.sum(1).clamp(min=1)).mean()
    else:
        L = max_len if max_len is not None else m.shape[1]
        loss = (per_tok * m).sum() / (m.shape[0] * L)
    with torch.no_grad():
        stats = {
            "kl": _num(_masked_mean(kl, m)),
            "clip_frac": _num(_masked_mean(((ratio < 1 - clip_eps) | (ratio > 1 + hi)).float(), m)),
            "ratio": _num(_masked_mean(ratio, m)),
        }
    return loss, stats


# ------------------------------------------------------------------------------------------------ KD
def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> tuple[torch.Tensor, dict]:
    """Logit distillation (Hinton et al. 2015) on labelled positions, mixed with cross-entropy.

    ``p_T = softmax(z_teacher / T)``, ``q_T = softmax(z_student / T)``;
    ``L = alpha * T^2 * mean_t KL(p_T || q_T) + (1 - alpha) * mean_t CE(y_t, softmax(z_student))``
    over positions ``t`` whose label is not ``-100`` (``T^2`` keeps gradient scale independent of ``T``).
    Both logits must share the vocabulary (the student shares the teacher's tokenizer).
    """
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"student vocab {student_logits.shape[-1]} != teacher vocab {teacher_logits.shape[-1]}"
        )
    s, lb = shift(student_logits, labels)
    t, _ = shift(teacher_logits, labels)
    mask = (lb != IGNORE).float()
    log_q = F.log_softmax(s.float() / temperature, -1)
    log_p = F.log_softmax(t.float() / temperature, -1)
    kl_tok = (log_p.exp() * (log_p - log_q)).sum(-1)
    kl = _masked_mean(kl_tok, mask)
    ce = -_masked_mean(token_logprobs(s, lb), mask)
    loss = alpha * temperature**2 * kl + (1 - alpha) * ce
    return loss, {"kl": _num(kl), "ce": _num(ce)}
