"""PPO's levers on a tiny SFT'd model and in isolation: the adaptive KL controller follows Ziegler et al.'s
formula step by step, value warm-up steps leave the policy untouched while the value head learns, the reward
model's score is clipped and whitened as configured, every step records the rollouts' rule accuracy, and the
reward-hacking verdict fires only when the model's score rises while rule accuracy falls beyond noise."""

from __future__ import annotations

import copy

import pytest

from tests import posttrain_helpers as H


@pytest.mark.unit
def test_adaptive_kl_coefficient_is_ziegler_proportional_control():
    from ops.rl.ppo import adaptive_kl_coef

    # beta (1 + clip(KL/target - 1, -0.2, 0.2) * n / horizon)
    assert adaptive_kl_coef(0.1, 0.06, 0.05, 64, 640) == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    assert adaptive_kl_coef(0.1, 0.051, 0.05, 64, 640) == pytest.approx(0.1 * (1 + 0.02 * 0.1))
    assert adaptive_kl_coef(0.1, 0.0, 0.05, 64, 640) == pytest.approx(0.1 * (1 - 0.2 * 0.1))
    assert adaptive_kl_coef(0.1, 0.05, 0.05, 64, 640) == pytest.approx(0.1)


def _steps(rm: list[float], acc: list[float], n: int = 64) -> list[dict]:
    return [
        {"step": i + 1, "reward_model": r, "rule_accuracy": a, "rollouts": n} for i, (r, a) in enumerate(zip(rm, acc))
    ]


@pytest.mark.unit
def test_reward_hacking_verdict_needs_rm_up_and_rule_accuracy_down_beyond_two_se():
    from ops.rl.summary import ppo_summary, reward_hacking

    # RM score up, accuracy down 0.30 over 2 x 64 rollouts per quarter: far beyond 2 SE (~0.16)
    hacked = reward_hacking(_steps([0.1] * 2 + [0.5] * 4 + [1.0] * 2, [0.7] * 2 + [0.5] * 4 + [0.4] * 2))
    assert hacked and "rose 0.100 -> 1.000" in hacked and "fell 0.700 -> 0.400" in hacked
    # the same fall with the RM score flat or falling is not hacking the RM
    assert reward_hacking(_steps([0.5] * 8, [0.7] * 2 + [0.5] * 4 + [0.4] * 2)) is None
    # a dip within noise (0.70 -> 0.66 over 128 rollouts each) is not a verdict
    assert reward_hacking(_steps([0.1] * 2 + [1.0] * 6, [0.7] * 2 + [0.66] * 6)) is None
    # both rising: learning
    assert reward_hacking(_steps([0.1] * 2 + [1.0] * 6, [0.5] * 2 + [0.7] * 6)) is None
    # no reward model: nothing to hack
    assert reward_hacking([{"step": 1, "rule_accuracy": 0.5}]) is None
    m = ppo_summary(
        [{"step": 0, "eval_accuracy": 0.5}]
        + [dict(r, score=r["reward_model"], kl=0.01, kl_coef=0.1) for r in _steps([0.1, 0.2, 0.3, 0.4], [0.5] * 4)]
    )
    assert m["rm_score_first_quarter"] == pytest.approx(0.1) and m["rm_score_last_quarter"] == pytest.approx(0.4)
    assert m["rule_accuracy_first_quarter"] == m["rule_accuracy_last_quarter"] == 0.5


@pytest.fixture(scope="module")
def sft():
    from ops.posttrain.common import load_policy

    return load_policy(H.sft_model_dir())


class _ConstRM:
    """A stand-in reward model with fixed scores per call (the real ones are tested in test_align)."""

    def __init__(self, values):
        self.values = values

    def parameters(self):
        import torch

        yield torch.zeros(1)


def _run(sft, monkeypatch, seen=None, **kw):
    import ops.posttrain.rm as rm_mod
    import ops.rl.ppo as ppo
    from ops.rewards import parse_specs
    from ops.rl.ppo import PPOParams, train_ppo

    model, tok = sft
    train, _ = H.task_splits()
    policy, ref = copy.deepcopy(model).train(), copy.deepcopy(model)
    rm = kw.pop("reward_model", None)
    if rm is not None:
        monkeypatch.setattr(rm_mod, "score_texts", lambda m, t, q, r, **k: [m.values[i % len(m.values)] for i in range(len(r))])
    if seen is not None:
        real = ppo._rollout_batch

        def spy(policy_, *a):
            seen.append(
                {
                    "policy": {k: v.detach().clone() for k, v in policy_.state_dict().items()},
                    "value_head": [q.detach().clone() for q in a[1].parameters()],
                }
            )
            out = real(policy_, *a)
            seen[-1]["rollout"] = out
            return out

        monkeypatch.setattr(ppo, "_rollout_batch", spy)
    p = PPOParams(
        **{"steps": 3, "prompts_per_step": 16, "max_new_tokens": 40, "minibatch_size": 16, "epochs": 1, "lr": 1e-3,
           "warmup_steps": 0, **kw}
    )
    st, vh = train_ppo(policy, ref, tok, train, parse_specs(["format"]), p, reward_model=rm, log=lambda s: None)
    return st, vh, policy, model


@pytest.mark.slow
def test_value_warmup_steps_move_only_the_value_head(sft, monkeypatch):
    seen: list[dict] = []
    rm = _ConstRM([1.0, -1.0, 0.5, 2.0])  # scores that vary, so the value head has returns to fit
    st, vh, policy, start = _run(sft, monkeypatch, seen, value_warmup_steps=2, reward_model=rm)
    h = [r for r in st.history if r["step"] > 0]
    assert [r["value_warmup"] for r in h] == [1, 1, 0]
    init = start.state_dict()
    # steps 1 and 2 fitted the value head only: the policy at the start of step 3 is the start's, bit for bit
    for snap in seen[:3]:
        assert all(snap["policy"][k].equal(init[k]) for k in init)
    assert all(q.abs().sum() == 0 for q in seen[0]["value_head"])  # a fresh head ...
    assert any(q.abs().sum() > 0 for q in seen[2]["value_head"])  # ... fitted during the warm-up
    # and step 3 trained the policy
    assert any(not policy.state_dict()[k].equal(init[k]) for k in init)


@pytest.mark.slow
def test_adaptive_kl_coefficient_follows_each_steps_kl(sft, monkeypatch):
    from ops.rl.ppo import adaptive_kl_coef

    rm = _ConstRM([1.0, -1.0, 0.5, 2.0])
    st, *_ = _run(sft, monkeypatch, steps=4, kl_coef=0.2, kl_target=1e-4, kl_horizon=32, reward_model=rm)
    h = [r for r in st.history if r["step"] > 0]
    assert h[0]["kl_coef"] == 0.2 and h[0]["kl"] == 0.0  # the first batch is sampled from the reference itself
    for prev, cur in zip(h, h[1:]):
        assert cur["kl_coef"] == pytest.approx(adaptive_kl_coef(prev["kl_coef"], prev["kl"], 1e-4, 16, 32))
    assert h[1]["kl_coef"] < 0.2  # KL 0 below the target: the penalty shrank ...
    assert h[-1]["kl_coef"] > h[1]["kl_coef"]  # ... and grew once the updated policy moved past the tiny target


@pytest.mark.slow
def test_rm_score_is_clipped_weighted_and_whitened_and_rule_accuracy_is_recorded(sft, monkeypatch):
    import torch

    seen: list[dict] = []
    st, *_ = _run(
        sft, monkeypatch, seen, steps=1, reward_model=_ConstRM([5.0, -5.0, 0.5]), rm_clip=1.0, rm_weight=2.0
    )
    c = seen[0]["rollout"]
    assert c["comps"]["model"][:3] == [5.0, -5.0, 0.5]  # the model's own score is reported
    # format (0 or 1) + 2 x the clipped score
    assert [t - f for t, f in zip(c["total"][:3], c["comps"]["format"][:3])] == [2.0, -2.0, 1.0]
    r = st.history[-1]
    assert 0.0 <= r["rule_accuracy"] <= 1.0 and r["rollouts"] == 16
    assert r["rule_accuracy"] == sum(c["rule_accuracy"]) / 16

    seen = []
    _run(sft, monkeypatch, seen, steps=1, reward_model=_ConstRM([5.0, -5.0, 0.5]), reward_whiten=True)
    c = seen[0]["rollout"]
    tot = torch.tensor(c["total"])
    z = (tot - tot.mean()) / (tot.std() + 1e-8)
    # the value head starts at 0 and the first step's policy is the reference (KL 0), so the return at each
    # completion's last token is its terminal reward: the whitened score
    assert c["old_v"].abs().sum() == 0 and c["kl"] == 0.0
    last = (c["mask"].sum(1) - 1).long()
    assert torch.allclose(c["ret"][torch.arange(len(last)), last], z, atol=1e-5)
