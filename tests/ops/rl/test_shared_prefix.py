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


def test_shared_prefix_gradients_do_not_depend_on_thread_timing(batch):
    """At two threads the gradients of the shared-prefix forward are equal bit for bit from run to run. A
    prompt's cache rows used to be gathered by tensor indexing, whose CPU backward adds a prompt's rows with
    atomic float adds from both threads (when the gathered tensor has >= 32768 elements): the sum's order then
    followed thread timing. Here every prompt's samples are interleaved, so both threads add into every
    prompt's rows at once and that race shows within a few repetitions."""
    from ops.generate import Sample, chat_prompts
    from ops.rl.common import completion_logprobs, completion_tensors

    policy, tok, _ = batch
    train, _ = H.task_splits()
    prompts = chat_prompts(tok, [t.question for t in train[:8]])
    g = torch.Generator().manual_seed(0)
    samples = [
        Sample(prompts[i % 8], torch.randint(5, len(tok), (6 + i % 5,), generator=g).tolist(), True)
        for i in range(64)
    ]
    t = completion_tensors(samples, tok.pad_token_id, "cpu")
    head_dim = policy.config.hidden_size // policy.config.num_attention_heads
    n_cache = 64 * policy.config.num_key_value_heads * t["prompt_ids"].shape[1] * head_dim
    assert n_cache >= 32768  # the size from which torch's CPU index backward runs in parallel
    policy.train()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = []
        for _ in range(12):
            policy.zero_grad()
            lp = completion_logprobs(policy, t)
            (lp.sum() / t["comp_mask"].sum()).backward()
            runs.append(torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None]))
    finally:
        torch.set_num_threads(before)
    for r in runs[1:]:
        assert torch.equal(r, runs[0])
