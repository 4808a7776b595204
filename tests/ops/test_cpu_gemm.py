"""oneDNN linear layers: the same outputs and gradients as ``nn.Linear`` to float rounding, every other input on
``nn.Linear``'s own path, the backend chosen by ``LMFORGE_CPU_GEMM`` (a bad value is one clear error), models
switched in place without touching their parameters or checkpoints, and training on it repeatable bit for bit."""

from __future__ import annotations

import copy
from unittest import mock

import pytest
import torch

from ops import cpu_gemm
from ops.cpu_gemm import ENV, OneDNNLinear, fast_linear, gemm_backend

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not cpu_gemm._onednn_available(), reason="this torch build has no oneDNN"),
]

ARCH = {"arch": "qwen2", "d_model": 64, "layers": 2, "heads": 4, "kv_heads": 2, "max_seq_len": 64}


def _pair(k: int, n: int, bias: bool, seed: int = 0):
    torch.manual_seed(seed)
    ref = torch.nn.Linear(k, n, bias=bias)
    fast = copy.deepcopy(ref)
    fast.__class__ = OneDNNLinear
    return ref, fast


@pytest.mark.parametrize(
    "shape,k,n,bias",
    [((3, 7, 48), 48, 40, True), ((33, 24), 24, 16, False), ((4, 9, 24), 24, 88, True),
     ((2, 5, 32), 32, 1100, False)],
    ids=["3d-bias", "2d", "wider-than-input", "wide-output"],
)
def test_outputs_and_gradients_match_nn_linear(shape, k, n, bias):
    ref, fast = _pair(k, n, bias)
    x = torch.randn(*shape)
    xr, xf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    gy = torch.randn(*shape[:-1], n)
    yr, yf = ref(xr), fast(xf)
    assert yf.shape == yr.shape
    torch.testing.assert_close(yf, yr, rtol=1e-5, atol=1e-5)
    yr.backward(gy)
    yf.backward(gy)
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-4)
    if bias:
        torch.testing.assert_close(fast.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-4)


def test_frozen_weight_and_input_without_grad():
    ref, fast = _pair(16, 8, True)
    fast.weight.requires_grad_(False)
    x = torch.randn(4, 16, requires_grad=True)
    fast(x).sum().backward()
    assert fast.weight.grad is None and fast.bias.grad is not None and x.grad is not None
    fast.weight.requires_grad_(True)
    fast(torch.randn(4, 16)).sum().backward()  # the input needs no gradient, the weight does
    assert fast.weight.grad is not None


def test_other_inputs_take_nn_linear_path():
    ref, fast = _pair(16, 8, True)
    with mock.patch.object(cpu_gemm._Linear, "apply", side_effect=AssertionError("oneDNN path taken")):
        fast16 = copy.deepcopy(fast).to(torch.bfloat16)
        torch.testing.assert_close(
            fast16(torch.ones(2, 16, dtype=torch.bfloat16)),
            ref.to(torch.bfloat16)(torch.ones(2, 16, dtype=torch.bfloat16)),
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert fast(torch.randn(2, 16)).dtype == torch.bfloat16
        assert fast(torch.randn(0, 16)).shape == (0, 8)


def test_backend_from_environment(monkeypatch):
    cpu_gemm._resolve.cache_clear()
    monkeypatch.setenv(ENV, "mkl")
    assert gemm_backend() == "mkl"
    monkeypatch.setenv(ENV, "oneDNN")
    assert gemm_backend() == "onednn"
    monkeypatch.setenv(ENV, "auto")
    for vendor, want in (("AuthenticAMD", "onednn"), ("GenuineIntel", "mkl"), ("", "mkl")):
        cpu_gemm._resolve.cache_clear()
        with mock.patch.object(cpu_gemm, "cpu_vendor", return_value=vendor):
            assert gemm_backend() == want
    cpu_gemm._resolve.cache_clear()
    monkeypatch.setenv(ENV, "blas")
    with pytest.raises(ValueError, match=r"LMFORGE_CPU_GEMM='blas': expected one of auto, onednn, mkl"):
        gemm_backend()


def test_bad_backend_fails_loading_a_model_with_one_error(monkeypatch, tmp_path):
    from ops.model import build_model

    monkeypatch.setenv(ENV, "fast")
    with pytest.raises(ValueError, match="LMFORGE_CPU_GEMM"):
        build_model(ARCH, 300, seed=0)


def _model(monkeypatch, backend: str):
    from ops.model import build_model

    monkeypatch.setenv(ENV, backend)
    return build_model(ARCH, 300, seed=0)


def test_models_are_switched_in_place_and_checkpoints_unchanged(monkeypatch, tmp_path):
    from ops.model import load_model, save_model
    from ops.tokenizer import to_transformers, train_bpe

    plain = _model(monkeypatch, "mkl")
    fast = _model(monkeypatch, "onednn")
    assert {type(m) for m in plain.modules()} & {OneDNNLinear} == set()
    linears = [m for m in fast.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is OneDNNLinear for m in linears)
    assert fast_linear(fast, "onednn") is fast and all(type(m) is OneDNNLinear for m in linears)  # idempotent
    assert all(
        type(m) is OneDNNLinear for m in copy.deepcopy(fast).modules() if isinstance(m, torch.nn.Linear)
    )
    sd_plain, sd_fast = plain.state_dict(), fast.state_dict()
    assert list(sd_plain) == list(sd_fast) and all(torch.equal(sd_plain[k], sd_fast[k]) for k in sd_plain)

    ids = torch.randint(2, 100, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(
            fast(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=1e-4, atol=1e-5
        )
    tok = to_transformers(train_bpe(["a b c d e f g"] * 20, 300))
    save_model(fast, tok, tmp_path / "m")
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"), local_files_only=True)
    assert all(type(m) is not OneDNNLinear for m in back.modules())
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in sd_fast.items())
    assert any(type(m) is OneDNNLinear for m in load_model(tmp_path / "m").modules())


def test_lora_wraps_switched_layers(monkeypatch):
    peft = pytest.importorskip("peft")
    model = _model(monkeypatch, "onednn")
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(2, 100, (2, 8))
    lora(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in lora.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads)


def _train(model, steps: int = 4) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(2, 100, (4, 16), generator=torch.Generator().manual_seed(2))
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def test_training_is_repeatable_and_agrees_with_mkl(monkeypatch):
    a, b = _model(monkeypatch, "onednn"), _model(monkeypatch, "onednn")
    la, lb = _train(a), _train(b)
    assert la == lb
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    ref = _model(monkeypatch, "mkl")
    lr = _train(ref)
    assert la[-1] < la[0] - 0.1  # it learns
    assert max(abs(x - y) for x, y in zip(la, lr)) < 1e-3
