"""The fused head + log-softmax: the plain path's values and gradients to float rounding on either CPU GEMM
backend and across block boundaries, bit-for-bit repeatable, taken only where it is exact, and the RL and SFT
losses built on it equal to their unfused forms with gradients."""

from __future__ import annotations

import pytest
import torch

from ops import cpu_gemm, fused_head
from ops.fused_head import fused_ok, head_logprobs
from ops.losses import token_logprobs

pytestmark = pytest.mark.unit

BACKENDS = ["mkl"] + (["onednn"] if cpu_gemm._onednn_available() else [])


def _inputs(m: int, d: int = 24, v: int = 300, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(m, d, generator=g)
    w = torch.randn(v, d, generator=g) * 0.3
    y = torch.randint(0, v, (m,), generator=g)
    gy = torch.randn(m, generator=g)
    return h, w, y, gy


def _grads(fn, h, w, y, gy, temperature):
    h, w = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    lp = fn(h, w, y, temperature)
    (lp * gy).sum().backward()
    return lp.detach(), h.grad, w.grad


def _plain(h, w, y, temperature):
    return token_logprobs(h @ w.t() / temperature, y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_match_the_plain_path_across_blocks(monkeypatch, backend, temperature):
    monkeypatch.setenv(cpu_gemm.ENV, backend)
    monkeypatch.setattr(fused_head, "BLOCK_FLOATS", 300 * 16)  # 16 rows a block: 7 blocks, the last one short
    h, w, y, gy = _inputs(101)
    lp, gh, gw = _grads(head_logprobs, h, w, y, gy, temperature)
    lp_ref, gh_ref, gw_ref = _grads(_plain, h, w, y, gy, temperature)
    torch.testing.assert_close(lp, lp_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh, gh_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-5, atol=1e-5)
    assert gw.is_contiguous() and gw.shape == w.shape


def test_repeatable_bit_for_bit_and_one_grad_alone():
    h, w, y, gy = _inputs(700, v=2000)
    a, b = _grads(head_logprobs, h, w, y, gy, 1.0), _grads(head_logprobs, h, w, y, gy, 1.0)
    assert all(torch.equal(x, z) for x, z in zip(a, b, strict=True))
    hh = h.clone().requires_grad_(True)
    (head_logprobs(hh, w, y) * gy).sum().backward()  # the weight frozen
    torch.testing.assert_close(hh.grad, a[1], rtol=0, atol=0)
    ww = w.clone().requires_grad_(True)
    (head_logprobs(h, ww, y) * gy).sum().backward()  # the hidden states need no gradient
    torch.testing.assert_close(ww.grad, a[2], rtol=0, atol=0)


def test_no_rows_gives_an_empty_result_and_a_zero_weight_gradient():
    w = torch.randn(50, 8, requires_grad=True)
    lp = head_logprobs(torch.zeros(0, 8, requires_grad=True), w, torch.zeros(0, dtype=torch.long))
    assert lp.shape == (0,)
    lp.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_taken_only_for_an_fp32_plain_head_outside_autocast():
    head = torch.nn.Linear(8, 50, bias=False)
    h = torch.randn(3, 8)
    assert fused_ok(h, head)
    assert fused_ok(h, cpu_gemm.fast_linear(torch.nn.Sequential(torch.nn.Linear(8, 50, bias=False)), "onednn")[0])
    assert not fused_ok(h, torch.nn.Linear(8, 50, bias=True))  # a bias the fused path does not add
    assert not fused_ok(h.bfloat16(), head)
    assert not fused_ok(h, torch.nn.Linear(8, 50, bias=False).bfloat16())

    class Scaled(torch.nn.Linear):  # a subclass may change what the head computes
        def forward(self, x):
            return super().forward(x) * 2

    assert not fused_ok(h, Scaled(8, 50, bias=False))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fused_ok(h, head)


def _model():
    from ops.model import build_model

    arch = {"arch": "qwen2", "d_model": 32, "layers": 2, "heads": 4, "kv_heads": 2, "max_seq_len": 32}
    return build_model(arch, 97, seed=0, pad_token_id=1, eos_token_id=0)


def _spy(monkeypatch):
    calls = []

    def counted(*a, **k):
        calls.append(1)
        return head_logprobs(*a, **k)

    monkeypatch.setattr(fused_head, "head_logprobs", counted)
    return calls


def _param_grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


def test_completion_logprobs_and_their_gradients_equal_the_unfused_path(monkeypatch):
    from ops.rl import common as rl_common

    model = _model()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(2, 97, (4, 14), generator=g)
    att = torch.ones_like(ids)
    att[3, 10:] = 0
    comp = ids[:, 6:14].clone()
    cmask = torch.ones(comp.shape)
    cmask[3, 4:] = 0
    t = {"input_ids": ids, "attention_mask": att, "comp_ids": comp, "comp_mask": cmask,
         "start": torch.full((4,), 6)}  # fmt: skip
    calls = _spy(monkeypatch)
    lp = rl_common.completion_logprobs(model, t, temperature=0.8)
    fused = _param_grads(model, (lp * torch.linspace(-1, 1, lp.numel()).view_as(lp)).sum())
    monkeypatch.setattr(fused_head, "fused_ok", lambda *a: False)
    lp_ref = rl_common.completion_logprobs(model, t, temperature=0.8)
    assert len(calls) == 1  # the first call took the fused path, the second the plain one
    plain = _param_grads(model, (lp_ref * torch.linspace(-1, 1, lp.numel()).view_as(lp)).sum())
    torch.testing.assert_close(lp, lp_ref, rtol=1e-5, atol=1e-6)
    assert bool((lp[3, 4:] == 0).all())
    _assert_same(fused, plain)


def test_sft_loss_equals_the_cross_entropy_on_full_logits_with_gradients(monkeypatch):
    from ops.losses import sft_loss
    from ops.posttrain.sft import sft_loss_fn

    model = _model()
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(2, 97, (3, 12), generator=g)
    labels = ids.clone()
    labels[:, :5] = -100
    labels[1, 9:] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    calls = _spy(monkeypatch)
    loss, stats = sft_loss_fn(model, batch)
    assert calls
    fused = _param_grads(model, loss)
    ref, ref_stats = sft_loss(model(input_ids=ids).logits, labels)
    plain = _param_grads(model, ref)
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-5, atol=1e-6)
    assert stats == ref_stats
    _assert_same(fused, plain)


def test_pretraining_loss_equals_the_models_own_cross_entropy_with_gradients(monkeypatch):
    import torch.nn.functional as F

    from ops.train.lm import lm_loss

    model = _model()
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(2, 97, (3, 10), generator=g)
    labels = torch.randint(2, 97, (3, 10), generator=g)
    labels[0, :3] = -100
    batch = {"input_ids": ids, "labels": labels}
    calls = _spy(monkeypatch)
    loss, stats = lm_loss(model, batch)
    assert calls and stats == {"tokens": 30}
    fused = _param_grads(model, loss)
    logits = model(input_ids=ids).logits
    ref = F.cross_entropy(logits.reshape(-1, 97), labels.reshape(-1))
    plain = _param_grads(model, ref)
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-5, atol=1e-6)
    _assert_same(fused, plain)


def test_a_wrapped_model_keeps_its_own_forward(monkeypatch):
    from ops.train.lm import lm_loss

    class Wrapper(torch.nn.Module):  # DDP's shape: the model under .module, hooks on the wrapper's forward
        def __init__(self, m):
            super().__init__()
            self.module = m

        def forward(self, **kw):
            return self.module(**kw)

    model = _model()
    calls = _spy(monkeypatch)
    ids = torch.randint(2, 97, (2, 8))
    loss, _ = lm_loss(Wrapper(model), {"input_ids": ids, "labels": ids})
    assert not calls and loss.requires_grad


@pytest.mark.parametrize("alpha,temperature", [(0.5, 2.0), (1.0, 1.0), (0.2, 0.7)])
def test_kd_loss_and_gradients_match_the_plain_kd_loss(monkeypatch, alpha, temperature):
    from ops.fused_head import head_kd
    from ops.losses import kd_loss

    monkeypatch.setattr(fused_head, "BLOCK_FLOATS", 300 * 16)
    h, w, y, _ = _inputs(53)
    t = torch.randn(53, 300, generator=torch.Generator().manual_seed(9)) * 2
    hf, wf = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    loss, kl, ce = head_kd(hf, wf, t, y, temperature, alpha)
    loss.backward()
    hp, wp = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    zeros = torch.zeros(1, 300)
    ref, st = kd_loss(torch.cat([hp @ wp.t(), zeros])[None], torch.cat([t, zeros])[None],
                      torch.cat([torch.tensor([-100]), y])[None], temperature=temperature, alpha=alpha)  # fmt: skip
    ref.backward()
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-5, atol=1e-6)
    assert abs(float(kl) - st["kl"]) < 1e-5 and abs(float(ce) - st["ce"]) < 1e-5
    torch.testing.assert_close(hf.grad, hp.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(wf.grad, wp.grad, rtol=1e-4, atol=1e-6)
