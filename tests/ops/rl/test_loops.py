"""RL loops on a tiny SFT'd model: GRPO's update is right (sampled accuracy on 16 fixed prompts rises
by 0.15 and x1.5 within 30 steps), PPO runs with finite statistics and bounded KL, rollouts are well-formed."""

from __future__ import annotations

import copy

import pytest

from tests import posttrain_helpers as H

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sft():
    from ops.posttrain.common import load_policy

    model, tok = load_policy(H.sft_model_dir())
    return model, tok


def _mixed_outcome_prompts(model, tok, tasks, n: int = 16, k: int = 8, max_rate: float = 0.5):
    """The first ``n`` training prompts the policy solves sometimes but at most ``max_rate`` of the time, judged
    on ``k`` samples each. A prompt the policy always or never solves gives every sample of its group the same
    reward, hence no advantage (DAPO filters such groups out of its batches for the same reason). The GRPO run
    then draws its own fresh samples, so its starting accuracy is not the (selected, hence biased) estimate."""
    from ops.generate import generate
    from ops.tasks import is_correct

    picked = []
    for b in range(0, len(tasks), 64):
        chunk = tasks[b : b + 64]
        outs = generate(
            model, tok, [t.question for t in chunk], n=k, max_new_tokens=48, temperature=1.0, seed=b
        )
        for i, t in enumerate(chunk):
            right = sum(is_correct(o.text, t.answer) for o in outs[i * k : (i + 1) * k])
            if 0 < right <= max_rate * k:
                picked.append(t)
        if len(picked) >= n:
            return picked[:n]
    raise AssertionError(f"only {len(picked)} training prompts with mixed outcomes")


def test_grpo_raises_sampled_accuracy_on_16_fixed_prompts(sft):
    """The update is right: on 16 fixed prompts the policy solves sometimes, sampled accuracy rises by at least
    0.15 and x1.5 within 30 steps. Groups of 16 samples (a less noisy group baseline than 8), three updates per rollout batch,
    lr 2e-4, no KL term (KL still measured and asserted bounded). Measured on this reduced model (mean of the
    first 5 -> last 5 steps): seed 1 (this test) 0.20 -> 0.48, max KL 0.44; seed 2 0.19 -> 0.52, max KL 0.93.
    Two updates per batch: 0.20 -> 0.40 and 0.17 -> 0.36 (KL 0.41, 0.46). With groups of 8 (lr 1e-4..5e-4, one
    or two updates) it did not reliably double (0.15 -> 0.25 .. 0.19 -> 0.37, or doubled with KL 1.1-3.6)."""
    import torch

    from ops.rewards import parse_specs
    from ops.rl.grpo import GRPOParams, train_grpo

    model, tok = sft
    torch.manual_seed(0)
    train, _ = H.task_splits()
    fixed = _mixed_outcome_prompts(model, tok, train)
    policy, ref = copy.deepcopy(model).train(), copy.deepcopy(model)
    st = train_grpo(
        policy,
        ref,
        tok,
        fixed,
        parse_specs(["accuracy", "format"]),
        GRPOParams(
            steps=30,
            prompts_per_step=16,
            group_size=16,
            updates_per_batch=3,
            fixed_prompts=16,
            lr=2e-4,
            warmup_steps=3,
            beta=0.0,
            max_new_tokens=48,
            seed=1,
        ),
        log=lambda s: None,
    )
    acc = [h["reward_accuracy"] for h in st.history]
    first, last = sum(acc[:5]) / 5, sum(acc[-5:]) / 5
    assert first > 0, "the SFT model must solve some of the fixed prompts for the test to mean anything"
    # Float details (thread count) move the start: 0.20 -> 0.48 and 0.28 -> 0.52 on two machines. A broken
    # update leaves accuracy flat or lower; a working one adds > 0.2, so the bar is +0.15 and x1.5.
    assert last - first >= 0.15 and last >= 1.5 * first, f"sampled accuracy {first:.3f} -> {last:.3f}"
    assert max(h.get("kl", 0.0) for h in st.history) < 1.0
    r = st.rollouts[0]
    assert {
        "prompt_id",
        "completion",
        "completion_tokens",
        "reward_accuracy",
        "reward_format",
        "advantage",
        "policy_version",
    } <= set(r)
    assert len(st.rollouts) == 30 * 16 * 16


def test_ppo_runs_with_finite_stats_and_bounded_kl(sft):
    import math

    from ops.rewards import parse_specs
    from ops.rl.ppo import PPOParams, train_ppo

    model, tok = sft
    train, _ = H.task_splits()
    policy, ref = copy.deepcopy(model).train(), copy.deepcopy(model)
    st, vh = train_ppo(
        policy,
        ref,
        tok,
        train,
        parse_specs(["accuracy", "format"]),
        PPOParams(steps=4, prompts_per_step=32, max_new_tokens=40, minibatch_size=16, epochs=2),
        log=lambda s: None,
    )
    for h in st.history:
        assert all(math.isfinite(v) for v in h.values() if isinstance(v, float))
    assert max(h["kl"] for h in st.history) < 10
    assert any(p.abs().sum() > 0 for p in vh.parameters())  # the value head learned something


def test_grpo_without_kl_penalty_still_measures_kl_to_the_reference(sft):
    """beta=0 drops the KL term from the loss (DAPO / Dr. GRPO) but the k3 KL to the reference is still
    measured, so a run's "bounded KL" check means something; without a reference there is nothing to measure."""
    from ops.rewards import parse_specs
    from ops.rl.grpo import GRPOParams, train_grpo

    model, tok = sft
    train, _ = H.task_splits()
    p = GRPOParams(steps=3, prompts_per_step=16, group_size=8, lr=1e-3, warmup_steps=0, beta=0.0, seed=3)
    specs = parse_specs(["accuracy"])
    st = train_grpo(
        copy.deepcopy(model).train(), copy.deepcopy(model), tok, train, specs, p, log=lambda s: None
    )
    kls = [h["kl"] for h in st.history if h["step"] > 0]
    assert kls[0] == pytest.approx(0.0, abs=1e-6)  # first update: the policy still equals the reference
    assert max(kls[1:]) > 1e-4  # after an update at lr 1e-3 the policy has moved, and it is measured
    st = train_grpo(copy.deepcopy(model).train(), None, tok, train, specs, p, log=lambda s: None)
    assert all(h.get("kl", 0.0) == 0.0 for h in st.history)
