"""The shared-prefix log-prob forward (each distinct prompt once per group, its cache gathered to the group's
samples) is the same function as the full forward: equal log-probs, hidden states and gradients up to float
rounding (the same sums in a different order), and it is used only where prompts repeat."""

from __future__ import annotations

import pytest
import torch

from tests import posttrain_helpers as H

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def batch():
    from ops.generate import chat_prompts, sample, stop_token_ids

    tok = H.tokenizer()
    policy = H.tiny_model(tok, seed=3)
    train, _ = H.task_splits()
    prompts = chat_prompts(tok, [t.question for t in train[:3]])  # different lengths: left padding matters
    rows = [prompts[0]] * 3 + [prompts[1]] * 2 + [prompts[2]] + [prompts[0]]
    samples = sample(policy, rows, max_new_tokens=10, stop_ids=stop_token_ids(tok), pad_id=tok.pad_token_id,
                     seed=4)
    samples[2].ids = samples[2].ids[:1]  # completions of different lengths, one of a single token
    samples[2].finished = False
    return policy, tok, samples


def _run(policy, t, share, temperature=0.7):
    from ops.rl.common import completion_logprobs

    policy.zero_grad()
    lp, hid = completion_logprobs(policy, t, temperature, with_hidden=True, share_prefix=share)
    hid = hid * t["comp_mask"][..., None]  # a padding position's hidden state is never used
    (lp.sum() + hid.pow(2).mean()).backward()
    grads = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
    return lp.detach(), hid.detach(), grads


def test_shared_prefix_forward_equals_the_full_forward_with_gradients(batch):
    from ops.rl.common import completion_tensors

    policy, tok, samples = batch
    policy.train()
    t = completion_tensors(samples, tok.pad_token_id, "cpu")
    assert len(t["prompt_ids"]) == 3 and t["prompt_row"].tolist() == [0, 0, 0, 1, 1, 2, 0]
    lp0, h0, g0 = _run(policy, t, share=False)
    lp1, h1, g1 = _run(policy, t, share=True)
    assert (lp0 != 0).sum() == sum(s.n_tokens for s in samples)
    assert torch.allclose(lp0, lp1, atol=1e-5, rtol=0)
    assert torch.allclose(h0, h1, atol=1e-5, rtol=1e-5)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=1e-5, rtol=1e-4), n


def test_full_forward_is_used_without_repeated_prompts_or_with_activation_checkpointing(batch):
    from ops.rl.common import completion_logprobs, completion_tensors

    policy, tok, samples = batch
    seen: list[int] = []
    hook = policy.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[0]),
                                                  with_kwargs=True)
    try:
        with torch.no_grad():
            completion_logprobs(policy, completion_tensors(samples, tok.pad_token_id, "cpu"))
            assert seen == [3, 7]  # the distinct prompts, then every sample's completion
            seen.clear()
            completion_logprobs(policy, completion_tensors(samples[3:6], tok.pad_token_id, "cpu"))
            assert seen == [2, 3]
            seen.clear()
            completion_logprobs(policy, completion_tensors(samples[4:6], tok.pad_token_id, "cpu"))
            assert seen == [2]  # no prompt repeats: one full forward
            seen.clear()
            policy.train()
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            completion_logprobs(policy, completion_tensors(samples, tok.pad_token_id, "cpu"))
            assert seen == [7]
    finally:
        hook.remove()
        policy.gradient_checkpointing_disable()
