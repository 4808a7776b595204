"""Rejection sampling (``ops.posttrain.rejection``) on planted samples: the sampler is replaced by a fixed list
of completions, so each rule is checked on a known case. Only verified-correct, well-formatted, finished,
distinct samples are kept, shortest first, capped per prompt; every kept row points at its rollout."""

from __future__ import annotations

import pytest

from ops.generate import Sample
from ops.posttrain import rejection
from ops.posttrain.common import IM_END
from ops.posttrain.rejection import RejectionParams, rejection_sample, write_sft
from ops.tasks import Task, format_response, is_correct

pytestmark = pytest.mark.unit

TASKS = [
    Task("t1", "What is 7 + 5?", "12", "", 1, "test"),
    Task("t2", "What is 2 + 3?", "5", "", 1, "test"),
]


def _s(text: str, n_tokens: int, finished: bool = True) -> Sample:
    return Sample(prompt_ids=[1, 2, 3], ids=[9] * n_tokens, finished=finished, text=text)


PLANTED = [
    # t1
    _s(format_response("7+5 is 12", "12") + IM_END, 10),  # correct, shortest
    _s(format_response("seven plus five makes twelve", "12") + IM_END, 14),  # correct, longer
    _s(format_response("7+5 is 13", "13") + IM_END, 10),  # wrong
    _s(format_response("7+5 is 12", "12") + IM_END, 10),  # duplicate of the first
    # t2
    _s("<answer>5</answer>" + IM_END, 5),  # correct answer, no <think>: bad format
    _s(format_response("2+3", "5"), 96, finished=False),  # correct but cut off at the length cap
    _s(format_response("2+3", "6") + IM_END, 8),  # wrong
    _s(format_response("2+3=5", "5") + IM_END, 9),  # correct
]


@pytest.fixture
def planted(monkeypatch):
    calls = []

    def fake_generate(model, tok, prompts, *, n, **kw):
        calls.append((prompts, n, kw))
        assert len(prompts) * n == len(PLANTED)
        return list(PLANTED)

    monkeypatch.setattr(rejection, "generate", fake_generate)
    return calls


def test_only_correct_formatted_finished_distinct_samples_are_kept(planted):
    sft, rollouts, stats = rejection_sample(None, None, TASKS, RejectionParams(samples=4, max_per_prompt=2))
    assert [r["id"] for r in sft] == ["rs-t1-0-sft", "rs-t1-1-sft", "rs-t2-3-sft"]
    assert all(is_correct(r["response"], r["answer"]) for r in sft)
    assert sft[0] == {
        "id": "rs-t1-0-sft",
        "prompt": "What is 7 + 5?",
        "response": format_response("7+5 is 12", "12"),  # the stop token is stripped
        "answer": "12",
        "parent_ids": ["rs-t1-0", "t1"],
    }
    assert stats == {
        "sampled": 8,
        "correct": 6,
        "kept": 3,
        "duplicates": 1,
        "too_long": 1,
        "prompts_kept": 2,
        # distinct correct samples of 10, 14 and 9 tokens, all kept
        "candidate_mean_tokens": 11.0,
        "kept_mean_tokens": 11.0,
    }
    # every sample is a rollout row, kept or not, with its verifier reward
    assert [r["id"] for r in rollouts] == [f"rs-t{t}-{j}" for t in (1, 2) for j in range(4)]
    assert [r["reward"] for r in rollouts] == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    assert [r["reward_format"] for r in rollouts] == [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert planted[0][0] == [t.question for t in TASKS] and planted[0][1] == 4


def test_the_cap_per_prompt_keeps_the_shortest_and_the_format_rule_can_be_relaxed(planted):
    sft, _, _ = rejection_sample(None, None, TASKS, RejectionParams(samples=4, max_per_prompt=1))
    assert [r["id"] for r in sft] == ["rs-t1-0-sft", "rs-t2-3-sft"]
    sft, _, stats = rejection_sample(
        None, None, TASKS, RejectionParams(samples=4, max_per_prompt=2, require_format=False)
    )
    # the unformatted correct answer (5 tokens) now qualifies and is the shortest of t2
    assert [r["id"] for r in sft] == ["rs-t1-0-sft", "rs-t1-1-sft", "rs-t2-0-sft", "rs-t2-3-sft"]
    assert stats["kept"] == 4


def test_best_of_k_keeps_the_reward_models_favourite_among_the_correct(planted, monkeypatch):
    import ops.posttrain.rm as rm

    # the reward model prefers the longer correct answer of t1 and scores the wrong ones highest of all
    scores = [0.1, 0.9, 5.0, 0.1, 0.0, 0.0, 5.0, 0.3]
    monkeypatch.setattr(rm, "score_texts", lambda model, tok, prompts, texts: scores)
    sft, rollouts, _ = rejection_sample(
        None, None, TASKS, RejectionParams(samples=4, keep="best_of_k"), reward_model=object()
    )
    assert [r["id"] for r in sft] == ["rs-t1-1-sft", "rs-t2-3-sft"]
    assert [r["reward_model"] for r in rollouts] == scores


def test_shortest_keeps_one_shortest_correct_sample_per_prompt_whatever_a_reward_model_says(
    planted, monkeypatch
):
    import ops.posttrain.rm as rm

    # a reward model favouring the longer correct answer of t1 does not change a length-based selection
    monkeypatch.setattr(rm, "score_texts", lambda model, tok, prompts, texts: [0.1, 0.9, 5.0, 0.1, 0, 0, 5, 0.3])
    for reward_model in (None, object()):
        sft, _, stats = rejection_sample(
            None, None, TASKS, RejectionParams(samples=4, keep="shortest"), reward_model=reward_model
        )
        assert [r["id"] for r in sft] == ["rs-t1-0-sft", "rs-t2-3-sft"]
        assert (stats["candidate_mean_tokens"], stats["kept_mean_tokens"]) == (11.0, 9.5)
    # keep=correct keeps both correct answers of t1 (10 and 14 tokens): the candidates' mean
    _, _, stats = rejection_sample(None, None, TASKS, RejectionParams(samples=4, keep="correct"))
    assert stats["kept_mean_tokens"] == 11.0


def test_bad_settings_are_refused_before_sampling(planted):
    with pytest.raises(ValueError, match=r"keep must be one of \['correct', 'best_of_k', 'shortest'\]"):
        rejection_sample(None, None, TASKS, RejectionParams(keep="all"))
    with pytest.raises(ValueError, match="needs a reward model"):
        rejection_sample(None, None, TASKS, RejectionParams(keep="best_of_k"))
    assert planted == []


def test_write_sft_round_trips_the_kept_rows(planted, tmp_path):
    import pyarrow.parquet as pq

    sft, _, _ = rejection_sample(None, None, TASKS, RejectionParams(samples=4))
    write_sft(sft, tmp_path / "sft.parquet")
    assert pq.read_table(tmp_path / "sft.parquet").to_pylist() == sft
