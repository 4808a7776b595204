"""The fully on-policy GRPO update takes its old log-probs from the training forward itself (detached): no
separate old-log-prob forward runs, and the one it saves would give the very same numbers."""

from __future__ import annotations

import copy

import pytest
import torch

from tests import posttrain_helpers as H

pytestmark = pytest.mark.unit


def test_on_policy_update_runs_one_forward_per_minibatch_and_its_ratio_is_exactly_one():
    from ops.rewards import parse_specs
    from ops.rl.grpo import GRPOParams, train_grpo

    tok = H.tokenizer()
    policy = H.tiny_model(tok, seed=2).train()
    ref = copy.deepcopy(policy)
    train, _ = H.task_splits()
    # a random reward gives every group a spread (a random model's accuracy is 0: no update would run)
    specs = parse_specs([{"random": {"p": 0.5}}])
    p = GRPOParams(steps=2, prompts_per_step=4, group_size=4, max_new_tokens=6, lr=1e-3, warmup_steps=0,
                   minibatch_size=8)
    calls = {"grad": 0, "no_grad": 0}

    def count(module, args, kwargs):
        if torch.is_inference_mode_enabled():
            return  # the sampler
        calls["grad" if torch.is_grad_enabled() else "no_grad"] += 1

    hook = policy.model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        st = train_grpo(policy, ref, tok, train, specs, p, log=lambda s: None, keep_rollouts=False)
    finally:
        hook.remove()
    steps = [h for h in st.history if h["step"] > 0]
    minibatches = sum(-(-round(h["live_groups"] * 16) // 8) for h in steps)
    assert minibatches >= 2  # the case has updates to check
    # each minibatch: one training forward (its prompts once per group, then the completions), nothing else
    assert calls == {"grad": 2 * minibatches, "no_grad": 0}
    for h in steps:
        if h["live_groups"] > 0:
            assert h["ratio"] == 1.0 and h["clip_frac"] == 0.0


def test_the_skipped_old_logprob_forward_equals_the_training_forward():
    from ops.generate import chat_prompts, sample, stop_token_ids
    from ops.rl.common import completion_logprobs, completion_tensors

    tok = H.tokenizer()
    policy = H.tiny_model(tok, seed=2)
    train, _ = H.task_splits()
    rows = chat_prompts(tok, [t.question for t in train[:3]]) * 2
    samples = sample(policy, rows, max_new_tokens=8, stop_ids=stop_token_ids(tok), pad_id=tok.pad_token_id, seed=1)
    t = completion_tensors(samples, tok.pad_token_id, "cpu")
    policy.train()
    with_grad = completion_logprobs(policy, t)
    with torch.no_grad():
        separate = completion_logprobs(policy, t)
    assert with_grad.requires_grad
    assert torch.equal(with_grad.detach(), separate)  # bit for bit: skipping it changes no number
