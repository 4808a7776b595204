"""GRPO and PPO run through the training core (``ops.train.core.train``): the core's loop is what steps them,
and a GRPO step whose groups all have equal rewards (no live group) leaves the weights and the optimizer
state exactly as they were, while still recording its rewards and rollouts."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit

CONSTANT = "test_constant"


def _register_constant() -> None:
    from ops.rewards import REWARDS, register_reward

    if CONSTANT not in REWARDS:

        @register_reward(CONSTANT, "v1", "the same reward for every completion (a test reward)")
        def _const(batch):
            return [1.0 for _ in batch.completions]


def _policy():
    from ops.posttrain.common import load_policy
    from tests import posttrain_helpers as H

    return load_policy(H.base_model_dir())


def _weights(m) -> dict:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_grpo_steps_without_a_live_group_move_nothing(tmp_path):
    import torch

    from ops.rewards import parse_specs
    from ops.rl.grpo import GRPOParams, train_grpo
    from tests import posttrain_helpers as H

    _register_constant()
    policy, tok = _policy()
    ref, _ = _policy()
    before = _weights(policy)
    train, _ = H.task_splits()
    p = GRPOParams(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=6, lr=1e-2, warmup_steps=0, ckpt_every=1)
    st = train_grpo(policy, ref, tok, train[:8], parse_specs([CONSTANT]), p, log=lambda s: None, work_dir=tmp_path)
    after = _weights(policy)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [r["live_groups"] for r in st.history] == [0.0, 0.0]
    assert not any("loss" in r or "grad_norm" in r for r in st.history)
    assert len(st.rollouts) == 2 * 2 * 4 and all(r["advantage"] == 0.0 for r in st.rollouts)
    opt = torch.load(tmp_path / "checkpoints" / "step-00000002" / "optimizer.pt", weights_only=True)
    assert opt["state"] == {}  # AdamW never stepped: no moments, no step count


@pytest.mark.parametrize("kind", ["grpo", "ppo"])
def test_rl_kinds_are_stepped_by_the_training_core(kind, monkeypatch):
    import ops.train.core as core
    from tests import posttrain_helpers as H
    from tests.ops.rl.resume_runs import run

    calls = []
    real = core.train

    def spy(*a, **kw):
        calls.append(a[3])  # the TrainConfig
        return real(*a, **kw)

    monkeypatch.setattr(core, "train", spy)
    _, _, history, _ = run(kind, H.base_model_dir(), None, steps=2)
    (cfg,) = calls
    assert cfg.steps == 2 and cfg.schedule == "constant" and cfg.log_every == 1
    assert [r["step"] for r in history] == [0, 1, 2]
