"""Logit distillation computes the frozen teacher's logits once per training row instead of once per visit,
and trains bit for bit as with the teacher run on every batch: same losses, same weights. The teacher still
runs on the first batch of each padded length, and a cache that differs from that forward is dropped (the
teacher then runs on every batch); a cache that would not fit, or would not be reused, is never built."""

from __future__ import annotations

import copy

import pytest
import torch

from ops.posttrain import distill as D
from ops.posttrain.common import Example, collate, labelled_logits
from ops.posttrain.sft import SFTParams, sft_units
from ops.tasks import make_splits
from tests import posttrain_helpers as H


def _same_length_examples() -> list[Example]:
    """40 sums of two-digit numbers with two-digit results: every row has the same number of tokens (the
    tokenizer splits digits), so every batch has one padded length."""
    pairs = [(a, b) for a in range(10, 50) for b in range(10, 50) if a + b < 100][::37][:40]
    return [
        Example(f"s{i}", f"What is {a}+{b}?", f"<think>{a}+{b}={a + b}</think> <answer>{a + b}</answer>")
        for i, (a, b) in enumerate(pairs)
    ]


def _task_examples() -> list[Example]:
    train, _ = make_splits(40, 0, seed=3, difficulties=(1,))
    return [Example(t.id, t.question, t.response, t.answer) for t in train]


@pytest.fixture(scope="module")
def models():
    tok = H.tokenizer()
    student = H.tiny_model(tok, seed=1, arch={**H.ARCH, "d_model": 64, "layers": 1})
    teacher = H.tiny_model(tok, seed=2)
    return tok, student, teacher


def _train(models, ex, steps: int = 12, logs: list | None = None, precision: str = "auto"):
    tok, student, teacher = models
    calls: list[int] = []
    # on the decoder: the KD loss runs decoder + head on the labelled positions, not the model's forward()
    h = teacher.get_decoder().register_forward_hook(lambda *a: calls.append(1))
    s = copy.deepcopy(student)
    p = D.DistillParams("logit", 2.0, 0.5, SFTParams(steps=steps, lr=1e-3, batch_size=8, seed=0, warmup_steps=0, precision=precision))
    try:
        info = D.train_distill(s, teacher, tok, ex, p, work_dir=None, log=(logs.append if logs is not None else (lambda s: None)))
    finally:
        h.remove()
    return info, s, len(calls)


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_cached_teacher_logits_train_bit_for_bit_like_the_teacher_on_every_batch(models, monkeypatch):
    ex = _same_length_examples()
    units, _, _ = sft_units(models[0], ex, SFTParams())
    assert len({len(u[0][0]) for u in units}) == 1
    cached, s_cached, n_cached = _train(models, ex)
    monkeypatch.setattr(D, "CACHE_MAX_BYTES", 0)  # too small for any cache: the teacher runs on every batch
    plain, s_plain, n_plain = _train(models, ex)
    assert cached["teacher_logits_cached"] and not plain["teacher_logits_cached"]
    assert cached["losses"] == plain["losses"]
    assert _same(s_cached, s_plain)
    # 40 rows in chunks of 8 (5 forwards) + the first batch of the one padded length, against one per step
    assert (n_cached, n_plain) == (6, 12)


def test_a_bf16_student_keeps_the_fp32_teacher_cache(models, monkeypatch):
    # the teacher's check forward runs outside the student's autocast, so it matches the fp32 cache
    ex = _same_length_examples()
    cached, s_cached, n_cached = _train(models, ex, precision="bf16")
    monkeypatch.setattr(D, "CACHE_MAX_BYTES", 0)
    plain, s_plain, _ = _train(models, ex, precision="bf16")
    assert cached["teacher_logits_cached"] and n_cached == 6
    assert cached["losses"] == plain["losses"] and _same(s_cached, s_plain)


def test_rows_of_different_lengths_train_bit_for_bit_with_or_without_the_cache(models, monkeypatch):
    ex = _task_examples()
    logs: list[str] = []
    cached, s_cached, n_cached = _train(models, ex, logs=logs)
    monkeypatch.setattr(D, "CACHE_MAX_BYTES", 0)
    plain, s_plain, _ = _train(models, ex)
    assert cached["losses"] == plain["losses"]
    assert _same(s_cached, s_plain)
    # kept, or dropped with a line saying so, whichever this machine's attention kernels allow
    assert cached["teacher_logits_cached"] != any("running the teacher on every batch" in x for x in logs)


def test_a_row_s_teacher_logits_do_not_depend_on_the_rows_batched_with_it(models):
    tok, _, teacher = models
    teacher = teacher.eval()
    units, pad, _ = sft_units(tok, _same_length_examples(), SFTParams(batch_size=8))
    cache = D.TeacherLogits(teacher, units, pad, 8)
    g = torch.Generator().manual_seed(0)
    for size in (1, 3, 8, 13):
        idx = torch.randperm(len(units), generator=g)[:size].tolist()
        with torch.no_grad():
            direct, _ = labelled_logits(teacher, collate([units[i] for i in idx], pad))
        assert torch.equal(cache.batch(idx), direct)
        assert cache.matches(idx, direct)


def test_a_cache_that_differs_from_the_teacher_is_dropped_and_training_is_unchanged(models, monkeypatch):
    ex = _same_length_examples()
    build = D.TeacherLogits.__init__

    def off_by_a_little(self, *a, **k):
        build(self, *a, **k)
        self.rows = [r + 1e-6 for r in self.rows]

    monkeypatch.setattr(D.TeacherLogits, "__init__", off_by_a_little)
    logs: list[str] = []
    dropped, s_dropped, n_dropped = _train(models, ex, logs=logs)
    monkeypatch.setattr(D, "CACHE_MAX_BYTES", 0)
    plain, s_plain, _ = _train(models, ex)
    assert not dropped["teacher_logits_cached"]
    assert any("running the teacher on every batch" in line for line in logs)
    assert dropped["losses"] == plain["losses"]
    assert _same(s_dropped, s_plain)
    assert n_dropped == 5 + 12  # the cache, then the teacher on every step


def test_no_cache_when_no_row_is_visited_twice(models):
    info, _, n = _train(models, _same_length_examples(), steps=5)  # 5 steps x 8 rows = the 40 rows once
    assert not info["teacher_logits_cached"] and n == 5


def test_the_fused_kd_loss_trains_like_the_plain_one(models, monkeypatch):
    calls = []
    real = D.head_kd
    monkeypatch.setattr(D, "head_kd", lambda *a: calls.append(1) or real(*a))
    info, fused, _ = _train(models, _task_examples(), steps=6)
    assert len(calls) == 6  # every step took the fused path
    monkeypatch.setattr(D, "fused_ok", lambda *a: False)
    ref_info, plain, _ = _train(models, _task_examples(), steps=6)
    torch.testing.assert_close(torch.tensor(info["losses"]), torch.tensor(ref_info["losses"]), rtol=1e-4, atol=1e-6)
    for x, y in zip(fused.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-3, atol=1e-5)
