"""The sampler: greedy parity with transformers.generate, stop tokens, budgets, determinism, top-p."""

from __future__ import annotations

import pytest
import torch

from ops import generate as G
from tests import posttrain_helpers as H

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tok():
    return H.tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return H.tiny_model(tok, seed=1).eval()


QUESTIONS = [
    "Ann has 3 pens. She gets 4 more. How many pens does Ann have?",
    "Tom has 12 cups. He gives away 5. Then he has 2 times as many. How many cups does Tom have?",
    "Zoe has 9 keys. How many keys does Zoe have?",
]


def test_chat_prompts_follow_the_template(tok):
    ids = G.chat_prompts(tok, QUESTIONS[:1])[0]
    assert tok.decode(ids) == f"<|im_start|>user\n{QUESTIONS[0]}<|im_end|>\n<|im_start|>assistant\n"


def test_missing_chat_template_is_a_clear_error(tok):
    bare = H.tokenizer()
    bare.chat_template = None
    with pytest.raises(G.ChatTemplateError, match="no chat template"):
        G.chat_prompts(bare, ["x"])


def test_greedy_matches_transformers_generate_with_left_padding(tok, model):
    prompts = G.chat_prompts(tok, QUESTIONS)  # different lengths -> left padding
    ours = G.sample(
        model,
        prompts,
        max_new_tokens=12,
        stop_ids=G.stop_token_ids(tok),
        pad_id=tok.pad_token_id,
        temperature=0.0,
    )
    for p, s in zip(prompts, ours):
        ref = model.generate(
            torch.tensor([p]),
            attention_mask=torch.ones(1, len(p), dtype=torch.long),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=G.stop_token_ids(tok),
            pad_token_id=tok.pad_token_id,
        )[0, len(p) :].tolist()
        n = len(s.ids)
        assert s.ids == ref[:n]
        assert len(s.ids) == 12 or s.finished


def test_budget_stop_and_logprobs(tok, model):
    stop = G.stop_token_ids(tok)
    s = G.sample(
        model,
        G.chat_prompts(tok, QUESTIONS) * 4,
        max_new_tokens=5,
        stop_ids=stop,
        pad_id=tok.pad_token_id,
        temperature=1.0,
        seed=0,
        return_logprobs=True,
    )
    for x in s:
        assert 1 <= x.n_tokens <= 5
        assert len(x.logprobs) == x.n_tokens and all(lp <= 0 for lp in x.logprobs)
        assert x.finished == (x.ids[-1] in stop)
        assert all(t not in stop for t in x.ids[:-1])
    # logprobs agree with a teacher-forced forward pass of the same tokens
    x = s[0]
    full = torch.tensor([x.prompt_ids + x.ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(full).logits[0, len(x.prompt_ids) - 1 : -1].float(), -1)
    ref = lp.gather(-1, torch.tensor(x.ids)[:, None]).squeeze(-1)
    assert torch.allclose(ref, torch.tensor(x.logprobs), atol=1e-4)


def test_stop_token_ends_a_row(tok, model):
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():  # make <|im_end|> overwhelmingly likely
        saved = model.get_output_embeddings().weight.data.clone()
        model.get_output_embeddings().weight.data[im_end] += 50.0 * model.model.norm.weight.sign()
    try:
        s = G.sample(
            model,
            G.chat_prompts(tok, QUESTIONS),
            max_new_tokens=20,
            stop_ids=G.stop_token_ids(tok),
            pad_id=tok.pad_token_id,
            temperature=1.0,
            seed=0,
        )
    finally:
        model.get_output_embeddings().weight.data.copy_(saved)
    assert all(x.finished and x.ids[-1] == im_end for x in s)
    assert sum(x.n_tokens for x in s) < 3 * 20


def test_sampling_is_deterministic_by_seed(tok, model):
    kw = dict(n=2, max_new_tokens=8, temperature=1.0, top_p=0.9)
    a = [x.ids for x in G.generate(model, tok, QUESTIONS, seed=3, **kw)]
    b = [x.ids for x in G.generate(model, tok, QUESTIONS, seed=3, **kw)]
    c = [x.ids for x in G.generate(model, tok, QUESTIONS, seed=4, **kw)]
    assert a == b and a != c


def test_top_p_draws_only_from_the_nucleus_with_renormalised_frequencies():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    ids, lp = G.sample_next(logits, temperature=1.0, top_p=0.75, generator=g)
    counts = torch.bincount(ids, minlength=4).float() / len(ids)
    # nucleus = {0, 1} (0.5 < 0.75 <= 0.8): renormalised 0.625 / 0.375, tokens 2 and 3 never drawn
    assert counts[2] == 0 and counts[3] == 0
    assert abs(counts[0] - 0.625) < 0.015
    assert torch.allclose(lp, probs.log()[ids], atol=1e-5)
    # temperature sharpens: at T=0.5 token 0 has prob 0.25/(0.25+0.09+0.0225+0.0025)
    ids2, _ = G.sample_next(logits, temperature=0.5, top_p=1.0, generator=g)
    want = 0.25 / (0.25 + 0.09 + 0.0225 + 0.0025)
    assert abs((ids2 == 0).float().mean() - want) < 0.015


def _biased_stop(model, tok, bias: float):
    """Raise ``<|im_end|>``'s logit so rows stop at scattered lengths (a random model rarely stops)."""
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    saved = model.get_output_embeddings().weight.data.clone()
    with torch.no_grad():
        model.get_output_embeddings().weight.data[im_end] += bias * model.model.norm.weight.sign()
    return saved


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.8, 0.9), (0.0, 1.0)])
def test_shared_prefix_and_dropped_rows_give_the_plain_loops_tokens(tok, model, temperature, top_p):
    # groups of repeated prompts, not consecutive, plus a prompt of its own: the GRPO and generate(n=) layout
    # and an arbitrary one. The plain loop prefills every row and keeps finished rows in the batch.
    prompts = G.chat_prompts(tok, QUESTIONS)
    rows = [prompts[0]] * 4 + [prompts[1]] * 4 + [prompts[2]] + [prompts[0]] * 3
    saved = _biased_stop(model, tok, 1.2)
    try:
        kw = dict(
            max_new_tokens=24, stop_ids=G.stop_token_ids(tok), pad_id=tok.pad_token_id, temperature=temperature,
            top_p=top_p, seed=5, return_logprobs=True, batch_size=8,  # two batches: the second has 4 rows
        )
        plain = G.sample(model, rows, share_prefix=False, drop_finished=False, **kw)
        variants = [G.sample(model, rows, share_prefix=s, drop_finished=d, **kw) for s, d in
                    [(True, True), (True, False), (False, True)]]
    finally:
        model.get_output_embeddings().weight.data.copy_(saved)
    lengths = [x.n_tokens for x in plain]
    if temperature > 0:  # the case must exercise rows leaving the batch while others run on
        assert any(x.finished for x in plain) and len(set(lengths)) > 2 and max(lengths) > min(lengths)
    for fast in variants:
        for a, b in zip(plain, fast):
            assert a.ids == b.ids and a.finished == b.finished and a.prompt_ids == b.prompt_ids
            # the same kernels on a different number of rows: equal up to float rounding of the batch blocking
            assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)


def test_forward_batches_shrink_to_distinct_prompts_and_running_rows(tok, model):
    prompts = G.chat_prompts(tok, QUESTIONS)
    rows = [p for p in prompts for _ in range(4)]
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: sizes.append(int(kw["input_ids"].shape[0])),
                                           with_kwargs=True)
    saved = _biased_stop(model, tok, 1.2)
    try:
        out = G.sample(model, rows, max_new_tokens=24, stop_ids=G.stop_token_ids(tok), pad_id=tok.pad_token_id,
                       seed=5)
    finally:
        hook.remove()
        model.get_output_embeddings().weight.data.copy_(saved)
    assert sizes[0] == 3  # one prefill row per distinct prompt
    # every decode forward carries the rows that have not stopped before it, and finished rows leave it once
    # they are a quarter of it
    batch = len(rows)
    for step, n in enumerate(sizes[1:], start=1):
        running = sum(1 for x in out if not (x.finished and x.n_tokens <= step))
        if 4 * running <= 3 * batch:
            batch = running
        assert n == batch
    assert sizes[-1] < len(rows)
    assert len(sizes) <= 24  # no forward after the last token a row can take
