"""The vocabulary head on labelled positions only (SFT, KD) and on completion positions only (RL) computes
the same losses, gradients and log-probabilities as the full forward it replaces."""

from __future__ import annotations

import pytest
import torch

from ops.losses import kd_loss, sft_loss
from ops.model import build_model
from ops.posttrain import common
from ops.posttrain.common import collate, head_on_subset_ok, labelled_logits

V = 64
ARCH = {"arch": "qwen2", "d_model": 32, "layers": 2, "heads": 4, "kv_heads": 2}


def _model(seed: int = 0, arch: dict | None = None):
    return build_model(arch or ARCH, V, seed=seed, pad_token_id=1, eos_token_id=0)


def _rows(packed: bool) -> list:
    g = torch.Generator().manual_seed(0)
    segs = [
        (torch.randint(2, V, (n,), generator=g).tolist(), p) for n, p in [(9, 4), (14, 6), (5, 2), (11, 7)]
    ]
    return [segs[:2], segs[2:]] if packed else [[s] for s in segs]


def _full_sft(model, b):
    kw = {k: b[k] for k in ("input_ids", "attention_mask", "position_ids")}
    return sft_loss(model(**kw).logits, b["labels"])[0]


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("packed", [False, True])
def test_sft_loss_and_gradients_match_the_full_forward(packed):
    model = _model()
    b = collate(_rows(packed), pad_id=1)
    assert head_on_subset_ok(model)
    ref = _full_sft(model, b)
    g_ref = _grads(model, ref)
    logits, labels = labelled_logits(model, b)
    assert logits.shape == (1, b["tokens"] + 1, V)
    fast = sft_loss(logits, labels)[0]
    g_fast = _grads(model, fast)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    assert g_fast.keys() == g_ref.keys()
    for n in g_ref:
        torch.testing.assert_close(g_fast[n], g_ref[n], rtol=1e-4, atol=1e-6, msg=n)


def test_kd_loss_matches_the_full_forward_and_the_fallback_path(monkeypatch):
    student, teacher = _model(0), _model(1, {**ARCH, "d_model": 48})
    b = collate(_rows(False), pad_id=1)
    kw = {k: b[k] for k in ("input_ids", "attention_mask", "position_ids")}
    ref = kd_loss(student(**kw).logits, teacher(**kw).logits, b["labels"], temperature=2.0, alpha=0.5)[0]
    s, lab = labelled_logits(student, b)
    t, lab_t = labelled_logits(teacher, b)
    assert torch.equal(lab, lab_t)
    torch.testing.assert_close(kd_loss(s, t, lab, temperature=2.0, alpha=0.5)[0], ref, rtol=1e-5, atol=1e-6)
    # a model whose head is not known to be plain takes the full forward and the same selection
    monkeypatch.setattr(common, "head_on_subset_ok", lambda m: False)
    s2, lab2 = labelled_logits(student, b)
    assert torch.equal(lab2, lab)
    torch.testing.assert_close(s2, s, rtol=1e-5, atol=1e-6)


def test_lora_model_takes_the_fast_path_through_its_adapter():
    from ops.posttrain.sft import SFTParams, add_lora

    model = _model()
    peft_model = add_lora(model, SFTParams(lora_r=4))
    for n, p in peft_model.named_parameters():  # a non-zero adapter, so its path is visible in the loss
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.5)
    b = collate(_rows(False), pad_id=1)
    assert head_on_subset_ok(peft_model)
    ref = _full_sft(peft_model, b)
    fast = sft_loss(*labelled_logits(peft_model, b))[0]
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    with peft_model.disable_adapter():
        off = sft_loss(*labelled_logits(peft_model, b))[0]
    assert abs(float(off) - float(fast)) > 1e-4  # the adapter is in the computation


def test_heads_that_scale_their_logits_are_not_run_on_a_subset():
    class Scaled(torch.nn.Module):
        config = type("C", (), {"model_type": "granite"})()

        def get_decoder(self):  # pragma: no cover - never called
            raise AssertionError

        def get_output_embeddings(self):  # pragma: no cover - never called
            raise AssertionError

    assert not head_on_subset_ok(Scaled())


def test_completion_logprobs_match_the_full_forward(monkeypatch):
    from ops.rl import common as rl_common

    model = _model()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(2, V, (3, 12), generator=g)
    att = torch.ones_like(ids)
    att[2, 9:] = 0
    comp = ids[:, 5:12].clone()
    cmask = torch.ones_like(comp)
    cmask[2, 4:] = 0
    t = {"input_ids": ids, "attention_mask": att, "comp_ids": comp, "comp_mask": cmask,
         "start": torch.tensor([5, 5, 5])}  # fmt: skip
    lp, h = rl_common.completion_logprobs(model, t, temperature=0.7, with_hidden=True)
    monkeypatch.setattr(common, "head_on_subset_ok", lambda m: False)
    lp_ref, h_ref = rl_common.completion_logprobs(model, t, temperature=0.7, with_hidden=True)
    torch.testing.assert_close(lp, lp_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)
    assert lp.shape == comp.shape and bool((lp[2, 4:] == 0).all())


def test_sequence_logprobs_match_the_full_forward():
    from ops.losses import sequence_logprobs
    from ops.posttrain.common import labelled_sequence_logprobs

    model = _model()
    b = collate(_rows(False), pad_id=1)
    ref = sequence_logprobs(
        model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"]
    )
    fast = labelled_sequence_logprobs(model, b)
    assert fast.shape == (4,)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def _varied_rows(n: int, seed: int = 5) -> list:
    """``n`` unpacked rows of 6-30 tokens (prompt about half), shuffled so the lengths are not sorted."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(6, 31, (1,), generator=g))
        rows.append([(torch.randint(2, V, (length,), generator=g).tolist(), length // 2)])
    return rows


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_length_groups_give_the_padded_forwards_logits_loss_and_gradients(groups):
    """Rows sorted by length into groups, each cut to its own longest row and run without the padding
    mask, give every labelled position the logits of the one padded forward, in the same order."""
    model = _model()
    b = collate(_varied_rows(48), pad_id=1)
    ref_logits, ref_labels = labelled_logits(model, b)
    ref = sft_loss(ref_logits, ref_labels)[0]
    g_ref = _grads(model, ref)
    logits, labels = labelled_logits(model, b, length_groups=groups)
    assert torch.equal(labels, ref_labels)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)  # a wrong row order fails here
    fast = sft_loss(logits, labels)[0]
    g_fast = _grads(model, fast)
    torch.testing.assert_close(fast, ref, rtol=1e-6, atol=1e-6)
    assert g_fast.keys() == g_ref.keys()
    for n in g_ref:
        torch.testing.assert_close(g_fast[n], g_ref[n], rtol=1e-4, atol=1e-6, msg=n)


def test_length_groups_cut_the_padding_from_the_decoders_work():
    model = _model()
    rows = _varied_rows(48)
    b = collate(rows, pad_id=1)
    seen: list[tuple[int, ...]] = []
    hook = model.get_decoder().register_forward_pre_hook(
        lambda m, args, kw: seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        labelled_logits(model, b, length_groups=3)
    finally:
        hook.remove()
    assert len(seen) == 3  # 48 rows: three groups of 16
    assert sum(r for r, _ in seen) == 48
    real = sum(len(r[0][0]) for r in rows)
    padded = b["input_ids"].numel()
    assert sum(r * t for r, t in seen) < padded
    assert sum(r * t for r, t in seen) - real < (padded - real) / 2  # most of the padding is gone


def test_length_groups_leave_packed_rows_and_small_batches_to_the_padded_forward():
    model = _model()
    packed = collate(_rows(True), pad_id=1)
    a, la = labelled_logits(model, packed)
    b, lb = labelled_logits(model, packed, length_groups=3)
    assert torch.equal(a, b) and torch.equal(la, lb)  # the block-diagonal mask is kept: same forward
    # fewer rows than two groups' worth: one group, still cut to its longest row
    small = collate(_varied_rows(8), pad_id=1)
    seen: list[tuple[int, ...]] = []
    hook = model.get_decoder().register_forward_pre_hook(
        lambda m, args, kw: seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        s, ls = labelled_logits(model, small, length_groups=3)
    finally:
        hook.remove()
    assert len(seen) == 1
    r, lr = labelled_logits(model, small)
    assert torch.equal(ls, lr)
    torch.testing.assert_close(s, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "arch",
    [
        {"arch": "llama", "d_model": 32, "layers": 2, "heads": 4, "kv_heads": 2},
        {"arch": "qwen2_moe", "d_model": 32, "layers": 2, "heads": 4, "kv_heads": 2, "experts": 4, "top_k": 2},
        {"arch": "minimax", "d_model": 32, "layers": 2, "heads": 4, "kv_heads": 2, "full_attention_every": 2,
         "experts": 4, "top_k": 2, "block_size": 16},
    ],
    ids=lambda a: a["arch"],
)
def test_length_groups_hold_for_every_architecture_with_a_plain_head(arch):
    """Linear-attention layers (MiniMax) and routed experts see a right-padded row's real tokens the same
    way with or without its padding, so the groups give the padded forward's logits there too."""
    model = _model(arch=arch)
    b = collate(_varied_rows(32), pad_id=1)
    ref, lab_ref = labelled_logits(model, b)
    got, lab = labelled_logits(model, b, length_groups=2)
    assert torch.equal(lab, lab_ref)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
