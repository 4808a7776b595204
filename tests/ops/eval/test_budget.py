"""Budget forcing and Wait extension on a real (tiny, briefly trained) Qwen2 with lmforge's tokenizer."""

from __future__ import annotations

import pytest

from tests.assets.eval_fixtures import tiny_model_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ops.eval.tiny import tiny_tasks
    from ops.generate import chat_prompts
    from ops.model import load_model
    from ops.tokenizer import load_tokenizer

    d = tiny_model_dir(tmp_path_factory)
    model, tok = load_model(d), load_tokenizer(d)
    ev = tiny_tasks()[1][:16]
    return model, tok, chat_prompts(tok, [t.question for t in ev])


@pytest.mark.parametrize("budget", [0, 1, 3, 6])
@pytest.mark.parametrize(("temperature", "waits"), [(0.0, 0), (0.0, 3), (1.0, 2)])
def test_budget_forcing_never_exceeds_budget(tiny, budget, temperature, waits):
    from ops.eval.budget import generate_with_budget

    model, tok, prompts = tiny
    gens = generate_with_budget(
        model,
        tok,
        prompts,
        budget=budget,
        max_think_tokens=40,
        wait_extensions=waits,
        temperature=temperature,
        seed=3,
        batch_size=5,
    )
    assert len(gens) == len(prompts)
    for g in gens:
        assert g.thinking_tokens <= budget
        ids = g.token_ids
        close = tok.convert_tokens_to_ids("</think>")
        # thinking = exactly the tokens between <think> and the first </think>
        if close in ids:
            assert ids.index(close) - 1 == g.thinking_tokens
        if g.forced_end:
            assert g.thinking_tokens == budget
            assert "</think><answer>" in g.completion


def test_greedy_loop_matches_transformers_generate(tiny):
    import torch

    from ops.eval.budget import generate_with_budget

    model, tok, prompts = tiny
    gens = generate_with_budget(
        model, tok, prompts[:6], max_think_tokens=40, max_answer_tokens=16, batch_size=3
    )
    think = tok.convert_tokens_to_ids("<think>")
    for p, g in zip(prompts[:6], gens):
        if g.forced_end or not g.finished:
            continue
        ref = model.generate(
            torch.tensor([p + [think]]),
            attention_mask=torch.ones(1, len(p) + 1, dtype=torch.long),
            max_new_tokens=len(g.token_ids),
            do_sample=False,
        )
        assert ref[0, len(p) :].tolist()[: len(g.token_ids)] == g.token_ids


def test_wait_extension_thinks_longer_on_the_same_prompts(tiny):
    from ops.eval.budget import generate_with_budget

    model, tok, prompts = tiny
    base = generate_with_budget(model, tok, prompts, max_think_tokens=48)
    waited = generate_with_budget(model, tok, prompts, max_think_tokens=48, wait_extensions=2)
    closed_itself = [i for i, g in enumerate(base) if not g.forced_end]
    assert closed_itself, "the trained tiny model should close its thinking on its own"
    for i in closed_itself:
        assert waited[i].waits_used >= 1
        assert waited[i].thinking_tokens > base[i].thinking_tokens
        if not waited[i].forced_end:  # (a cap reached mid-"Wait" drops the rest of its tokens)
            assert "Wait" in waited[i].completion
    assert all(w.thinking_tokens >= b.thinking_tokens for b, w in zip(base, waited))
    assert all(w.waits_used <= 2 for w in waited)


def test_missing_special_tokens_is_a_clear_error():
    from ops.eval.budget import SpecialIds
    from ops.eval.tiny import build_tokenizer

    tok = build_tokenizer(["hello world"] * 4)
    SpecialIds.from_tokenizer(tok)  # lmforge's tokenizer has them all
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bare = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    bare.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match="<think>"):
        SpecialIds.from_tokenizer(PreTrainedTokenizerFast(tokenizer_object=bare, unk_token="[UNK]"))


SWEEP = [(None, 0), (0, 0), (2, 0), (5, 0), (None, 1), (None, 2), (3, 1)]


def test_sweep_equals_one_decode_per_setting(tiny):
    """The shared decode forks where settings' tokens differ; each setting's results are those of its own
    decode, token for token (batches of 5 over 16 prompts: a short last batch too)."""
    from ops.eval.budget import generate_sweep, generate_with_budget

    model, tok, prompts = tiny
    kw = dict(max_think_tokens=12, max_answer_tokens=6, batch_size=5)
    swept = generate_sweep(model, tok, prompts, SWEEP, **kw)
    assert len(swept) == len(SWEEP)
    for (budget, waits), gens in zip(SWEEP, swept):
        alone = generate_with_budget(model, tok, prompts, budget=budget, wait_extensions=waits, **kw)
        assert gens == alone, (budget, waits)
    # the settings did fork: a budget of 0 forces </think> at once, the unbudgeted run thinks
    assert [g.token_ids for g in swept[0]] != [g.token_ids for g in swept[1]]


def test_eval_records_of_greedy_runs_equal_separate_decodes(tiny):
    """generate_records decodes its greedy, budget and Wait runs through the sweep; every record equals the
    one a separate generate_with_budget call per run gives, item by item."""
    from ops.eval.budget import generate_with_budget
    from ops.eval.evaluate import EvalItem, EvalSettings, generate_records
    from ops.eval.tiny import tiny_tasks

    model, tok, prompts = tiny
    ev = tiny_tasks()[1][:16]
    items = [EvalItem("t", f"i{k}", t.question, t.answer) for k, t in enumerate(ev)]
    s = EvalSettings(
        samples=2, budgets=[1, 4], wait_extensions=[1], max_think_tokens=12, max_answer_tokens=6, batch_size=6
    )
    recs = generate_records(model, tok, items, s, model_stage="m", model_version="v", log=lambda _: None)
    for mode, budget, waits in [("greedy", None, 0), ("budget", 1, 0), ("budget", 4, 0), ("wait", None, 1)]:
        got = [
            r for r in recs if r["mode"] == mode and r["budget"] == budget and r["wait_extensions"] == waits
        ]
        alone = generate_with_budget(
            model,
            tok,
            prompts,
            budget=budget,
            wait_extensions=waits,
            max_think_tokens=12,
            max_answer_tokens=6,
            batch_size=6,
        )
        assert [r["item_id"] for r in got] == [it.id for it in items]
        assert [
            (
                r["completion"],
                r["thinking_tokens"],
                r["answer_tokens"],
                r["waits_used"],
                r["forced_end"],
                r["finished"],
            )
            for r in got
        ] == [
            (g.completion, g.thinking_tokens, g.answer_tokens, g.waits_used, g.forced_end, g.finished)
            for g in alone
        ]


def test_sweep_refuses_bad_settings(tiny):
    from ops.eval.budget import _decode_batch, generate_sweep

    model, tok, prompts = tiny
    with pytest.raises(ValueError, match="budget must be >= 0, got -1"):
        generate_sweep(model, tok, prompts, [(None, 0), (-1, 0)])
    with pytest.raises(ValueError, match="sampled decode takes one setting"):
        _decode_batch(model, tok, prompts[:2], None, [(4, 0), (8, 0)], 4, 1.0, None)
