"""SFT with the slipped results of Wait-style traces left out of the loss: the spans are exactly the slips the
generator wrote, the masked tokens are exactly those spans' tokens, and every other label is SFT's own."""

from __future__ import annotations

import pytest
import torch

import ops.solutions as solutions
from ops.posttrain.common import Example, encode_all
from ops.posttrain.masked_sft import (
    masked_batch_fn,
    masked_token_positions,
    masked_units,
    train_sft_masked,
)
from ops.posttrain.sft import SFTParams, units_batch_fn
from ops.solutions import slipped_result_spans
from ops.tasks import generate_tasks
from tests import posttrain_helpers as H

pytestmark = pytest.mark.unit


def _tasks_with_recorded_slips(monkeypatch, style, **rates):
    """Tasks of ``style`` and, per task, the slipped values the generator wrote, in order."""
    slips: list[int] = []
    real = solutions._slip

    def recording(rng, value):
        slips.append(real(rng, value))
        return slips[-1]

    monkeypatch.setattr(solutions, "_slip", recording)
    out = []
    for i in range(60):
        before = len(slips)
        (t,) = generate_tasks(1, seed=100 + i, difficulties=(2, 3), solution_style=style, **rates)
        out.append((t, [str(v) for v in slips[before:]]))
    return out


@pytest.mark.parametrize(
    "style,rates",
    [
        ("recheck", {"correction_rate": 0.3, "confirm_rate": 0.3}),
        ("verify", {"correction_rate": 0.3}),
        ("recheck", {"correction_rate": 1.0, "confirm_rate": 0.0}),
    ],
)
def test_spans_are_exactly_the_slips_the_generator_wrote(monkeypatch, style, rates):
    tasks = _tasks_with_recorded_slips(monkeypatch, style, **rates)
    assert sum(len(s) for _, s in tasks) > 20
    for t, slips in tasks:
        spans = slipped_result_spans(t.response)
        assert [t.response[a:b] for a, b in spans] == slips
        for a, b in spans:  # the whole result: the characters around it are "=" and the full stop
            assert t.response[a - 1] == "=" and t.response[b] == "."


def test_no_spans_without_slips():
    for t in generate_tasks(40, seed=3, difficulties=(2, 3), solution_style="recheck", confirm_rate=0.5):
        assert slipped_result_spans(t.response) == []
    assert slipped_result_spans("17*3=41. Wait, 10*3=30, 7*3=21, 30+21=51, so 17*3=51.") == [(5, 7)]
    assert slipped_result_spans("8/0=1. 12-5=7. 120/4=30. 7+3=100.") == [(4, 5), (29, 32)]


def _examples(n=40):
    tasks = generate_tasks(n, seed=5, difficulties=(2, 3), solution_style="recheck", correction_rate=0.3)
    ex = [Example(t.id, t.question, t.response, t.answer) for t in tasks]
    return ex, [slipped_result_spans(e.response) for e in ex]


def test_masked_tokens_are_exactly_the_slipped_ones():
    tok = H.tokenizer()
    ex, spans = _examples()
    p = SFTParams(batch_size=8, max_len=400)
    units, masked, pad, stats = masked_units(tok, ex, spans, p)
    assert [u[0] for u in units] == encode_all(tok, ex, p.max_len)[0]  # SFT's own rows
    assert stats["masked_tokens"] == sum(len(m) for m in masked) > 0
    for e, sp, u, m in zip(ex, spans, units, masked):
        ids, n_prompt = u[0]
        # the masked tokens spell the slipped results, nothing more; the digit tokens of every slip are masked
        assert tok.decode([ids[i] for i in m]).replace(" ", "") == "".join(e.response[a:b] for a, b in sp)
        assert all(i >= n_prompt for i in m)
        r_ids, pos = masked_token_positions(tok, e.response, sp)
        assert r_ids == ids[n_prompt:] and [n_prompt + i for i in pos] == m


def test_batch_labels_differ_from_sft_only_on_the_masked_tokens():
    tok = H.tokenizer()
    ex, spans = _examples()
    p = SFTParams(batch_size=8, max_len=400, seed=3)
    units, masked, pad, _ = masked_units(tok, ex, spans, p)
    plain, fn = units_batch_fn(units, pad, p), masked_batch_fn(units, masked, pad, p)
    for step in range(6):
        a, b = plain(step, 0), fn(step, 0)
        assert a["index"] == b["index"] and torch.equal(a["input_ids"], b["input_ids"])
        diff = (a["labels"] != b["labels"]).nonzero().tolist()
        want = sorted([row, i] for row, k in enumerate(b["index"]) for i in masked[k])
        assert sorted(diff) == want and all(b["labels"][r, i] == -100 for r, i in diff)
        assert b["tokens"] == a["tokens"] - len(want)


def test_bad_inputs_are_refused():
    tok = H.tokenizer()
    ex, spans = _examples(4)
    p = SFTParams(max_len=400)
    with pytest.raises(ValueError, match="not inside the response"):
        masked_units(tok, ex, [[(0, len(e.response) + 1)] for e in ex], p)
    with pytest.raises(ValueError, match="spans: 3 span lists for 4 examples"):
        masked_units(tok, ex, spans[:3], p)
    with pytest.raises(ValueError, match="pack"):
        masked_units(tok, ex, spans, SFTParams(max_len=400, pack=True))


def test_train_sft_masked_lowers_the_loss_on_unmasked_tokens():
    tok = H.tokenizer()
    ex, spans = _examples(64)
    model = H.tiny_model(tok, seed=1)
    p = SFTParams(steps=12, lr=3e-3, batch_size=16, warmup_steps=2, max_len=400, ckpt_every=0)
    _, info = train_sft_masked(model, tok, ex, spans, p, log=lambda m: None)
    assert info["masked_tokens"] > 0 and len(info["losses"]) == 12
    assert sum(info["losses"][-3:]) < sum(info["losses"][:3])
