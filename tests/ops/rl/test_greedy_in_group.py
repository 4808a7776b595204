"""GRPO's ``greedy_in_group``: one completion of each group is the policy's greedy answer, the one greedy
scoring sees, trained beside the group's drawn samples with its group-relative advantage; off-policy re-use is
refused before any compute."""

from __future__ import annotations

import pytest

from tests import posttrain_helpers as H
from tests.ops.rl.test_dapo_levers import _run


@pytest.mark.slow
def test_each_group_starts_with_the_policys_greedy_completion_and_the_rest_are_drawn():
    from ops.generate import chat_prompts, pad_token_id, sample, stop_token_ids
    from ops.posttrain.common import load_policy

    g = 4  # the resume runs' group size
    _, st = _run(steps=1, greedy_in_group=True, updates_per_batch=1)
    firsts = st.rollouts[::g]
    policy, tok = load_policy(H.base_model_dir())  # the policy the first step sampled from
    greedy = sample(
        policy,
        chat_prompts(tok, [r["prompt"] for r in firsts]),
        max_new_tokens=12,
        stop_ids=stop_token_ids(tok),
        pad_id=pad_token_id(tok),
        temperature=0.0,
    )
    assert [r["completion"] for r in firsts] == tok.batch_decode([s.ids for s in greedy], skip_special_tokens=False)
    assert all(r["prompt_id"] == st.rollouts[i - i % g]["prompt_id"] for i, r in enumerate(st.rollouts))
    drawn = [r["completion"] for i, r in enumerate(st.rollouts) if i % g]
    assert len(drawn) == len(firsts) * (g - 1)
    assert any(c != firsts[i // (g - 1)]["completion"] for i, c in enumerate(drawn))  # T=1 draws, not argmax


@pytest.mark.unit
def test_greedy_in_group_refuses_off_policy_reuse_and_a_group_of_one():
    with pytest.raises(ValueError, match="greedy_in_group"):
        _run(steps=1, greedy_in_group=True, updates_per_batch=2)
    with pytest.raises(ValueError, match="greedy_in_group"):
        _run(steps=1, greedy_in_group=True, updates_per_batch=1, group_size=1)
