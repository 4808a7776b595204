"""DAPO's two levers in GRPO on a tiny random model: clip-higher lets a positively advantaged token's ratio rise
to ``1 + clip_eps_high`` (the lower bound stays at ``1 - clip_eps``) and changes an off-policy run, not an
on-policy one; dynamic sampling replaces groups whose rewards are all equal by groups of further prompts, so each
update trains on ``prompts_per_step`` groups with signal, at most ``max_refill`` extra rounds per step, and a run
killed mid-way resumes bit-identical."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ops import losses
from tests import posttrain_helpers as H
from tests.ops.rl import resume_runs as R

FLAT_HALF = "test_flat_half"  # no signal for half the prompts, the completion's length for the others
FLAT_ALL = "test_flat_all"  # no signal anywhere


def _register() -> None:
    from ops.rewards import REWARDS, register_reward

    R.register_reward()
    if FLAT_HALF in REWARDS:
        return

    def flat(answer: str) -> bool:
        return sum(map(ord, answer)) % 2 == 0

    @register_reward(FLAT_HALF, "v1", "0 for prompts whose answer has an even character sum, else the length")
    def _half(batch):
        # the characters of sampled text vary within almost every group, so those groups have signal
        return [0.0 if flat(a) else len(t) / 100 for t, a in zip(batch.completions, batch.answers)]

    @register_reward(FLAT_ALL, "v1", "always 1 (no group has signal)")
    def _all(batch):
        return [1.0] * len(batch.completions)


# ------------------------------------------------------------------------------------------ clip-higher
@pytest.mark.unit
def test_clip_higher_lets_a_positive_advantage_token_rise_past_one_plus_eps():
    """ratio 1.25 with A > 0: the symmetric clip (0.2) cuts its gradient, clip_eps_high 0.28 keeps it; a
    negative advantage at ratio 0.75 stays clipped at 1 - clip_eps either way."""

    def grads(ratio: float, adv: float, high: float | None) -> float:
        lp = torch.zeros(1, 1, requires_grad=True)
        old = torch.full((1, 1), -torch.log(torch.tensor(ratio)).item())
        loss, _ = losses.grpo_loss(
            lp, old, None, torch.tensor([adv]), torch.ones(1, 1), clip_eps=0.2, beta=0.0, clip_eps_high=high
        )
        loss.backward()
        return lp.grad.item()

    assert grads(1.25, 1.0, None) == 0.0
    assert grads(1.25, 1.0, 0.28) == pytest.approx(-1.25)
    assert grads(1.3, 1.0, 0.28) == 0.0  # past 1 + clip_eps_high it is clipped again
    assert grads(0.75, -1.0, None) == grads(0.75, -1.0, 0.28) == 0.0


def _run(work: Path | None = None, log=lambda s: None, reward: str = R.REWARD, **over):
    """A tiny GRPO run from a random model (the resume tests' settings) with ``over`` changed."""
    from ops.posttrain.common import load_policy
    from ops.rewards import parse_specs
    from ops.rl.grpo import train_grpo

    _register()
    torch.manual_seed(0)
    policy, tok = load_policy(H.base_model_dir())
    ref, _ = load_policy(H.base_model_dir())
    train, _ = H.task_splits()
    st = train_grpo(
        policy, ref, tok, train[:64], parse_specs([reward]), R.grpo_params(**over), log=log, work_dir=work
    )
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}, st


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_clip_eps_high_changes_an_off_policy_run_and_equal_to_clip_eps_changes_nothing():
    from assets.grpo import GRPOConfig
    from assets.posttrain import params
    from ops.rl.grpo import GRPOParams

    cfg = GRPOConfig(model="m", prompts=["p"], clip_eps_high=0.28, updates_per_batch=2)
    assert params(GRPOParams, cfg).clip_eps_high == 0.28  # the stage's field reaches the loop
    # a high learning rate moves the second pass's ratios well past 1.2, where the two clips differ
    sym, st = _run(steps=3, lr=2e-2)
    assert max(h["clip_frac"] for h in st.history) > 0
    high, _ = _run(steps=3, lr=2e-2, clip_eps_high=0.28)
    same, _ = _run(steps=3, lr=2e-2, clip_eps_high=0.2)
    assert not _same(sym, high)
    assert _same(sym, same)


# ------------------------------------------------------------------------------------------ dynamic sampling
def _trained_groups(h: dict, sampled: int) -> int:
    return round(h["live_groups"] * sampled)


@pytest.mark.slow
def test_dynamic_sampling_refills_each_update_to_prompts_per_step_live_groups():
    pps = 4
    _, plain = _run(reward=FLAT_HALF, steps=3)
    live_plain = [_trained_groups(h, pps) for h in plain.history]
    assert min(live_plain) < pps  # the flat half of the prompts leaves updates short of groups
    _, dyn = _run(reward=FLAT_HALF, steps=3, dynamic_sampling=True, max_refill=3)
    for h in dyn.history:
        assert _trained_groups(h, h["sampled_groups"]) == pps
        assert h["sampled_groups"] > pps or h["refill_rounds"] == 0
    assert sum(h["refill_rounds"] for h in dyn.history) > 0
    groups = [r["group"] for r in dyn.rollouts]
    by_step: dict[int, list[str]] = {}
    for r in dyn.rollouts:
        by_step.setdefault(r["policy_version"], []).append(r["prompt_id"])
    for step, ids in by_step.items():
        distinct = list(dict.fromkeys(ids))
        assert len(distinct) * 4 == len(ids), f"step {step} sampled a prompt twice"
    # every sampled group keeps its own id across the run, refills included
    assert len(set(groups)) * 4 == len(groups)


@pytest.mark.slow
def test_dynamic_sampling_stops_after_max_refill_rounds_and_skips_an_update_without_signal():
    w, st = _run(reward=FLAT_ALL, steps=2, dynamic_sampling=True, max_refill=2)
    for h in st.history:
        assert (h["refill_rounds"], h["sampled_groups"], h["live_groups"]) == (2, 4 * 3, 0.0)
    from ops.posttrain.common import load_policy

    m, _ = load_policy(H.base_model_dir())
    assert _same(w, {k: v.detach() for k, v in m.state_dict().items()})  # no live group, no update


class _Interrupted(Exception):
    pass


@pytest.mark.slow
def test_dynamic_sampling_run_interrupted_then_resumed_is_bit_identical(tmp_path):
    kw = dict(reward=FLAT_HALF, steps=4, dynamic_sampling=True, max_refill=2, ckpt_every=2)
    whole, st = _run(**kw)

    def stop(line: str) -> None:
        if line.startswith("step=3 "):
            raise _Interrupted(line)

    with pytest.raises(_Interrupted):
        _run(tmp_path / "work", log=stop, **kw)
    resumed, st2 = _run(tmp_path / "work", **kw)
    assert _same(whole, resumed)
    assert R.without_timing(st.history) == R.without_timing(st2.history)
    assert [r["prompt_id"] for r in st.rollouts] == [r["prompt_id"] for r in st2.rollouts]


@pytest.mark.unit
def test_clip_fraction_counts_the_asymmetric_clip_region():
    lp = torch.zeros(1, 4)
    old = -torch.log(torch.tensor([[0.7, 0.9, 1.25, 1.3]]))  # ratios 0.7, 0.9, 1.25, 1.3
    mask, adv = torch.ones(1, 4), torch.ones(1)
    _, sym = losses.grpo_loss(lp, old, None, adv, mask, clip_eps=0.2)
    _, high = losses.grpo_loss(lp, old, None, adv, mask, clip_eps=0.2, clip_eps_high=0.28)
    assert (sym["clip_frac"], high["clip_frac"]) == (0.75, 0.5)
