"""fp32 linear layers on the CPU through oneDNN where MKL's GEMM is slow.

PyTorch's CPU ``F.linear`` runs fp32 GEMMs in MKL, which picks its kernels by CPU vendor: on AMD CPUs it runs
the small decoders' matmuls at under half of oneDNN's speed on the same core (``experiments/LEDGER.md``, "fp32
GEMM on an AMD CPU"). :func:`fast_linear` switches a model's ``nn.Linear`` layers to :class:`OneDNNLinear`,
which computes the forward and both backward products with oneDNN's matmul (the weight gradient of a wide
output layer stays in MKL, where oneDNN is not faster). Parameters, ``state_dict`` and saved checkpoints are
unchanged; only the kernels differ, so results agree with MKL's to float rounding.

Which backend: ``LMFORGE_CPU_GEMM`` = ``auto`` (default: oneDNN on AMD CPUs, MKL elsewhere, where it was
measured as fast), ``onednn`` or ``mkl``. Any other input (bf16, autocast, a GPU, a distributed tensor, a
compiled graph) takes ``nn.Linear``'s own path.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

ENV = "LMFORGE_CPU_GEMM"
CHOICES = ("auto", "onednn", "mkl")
# weight gradients of outputs at least this wide stay in MKL: oneDNN was slower on the vocabulary head
_WIDE = 1024


def cpu_vendor() -> str:
    """The CPU's vendor string (``AuthenticAMD``, ``GenuineIntel``, ...), or '' where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def gemm_backend() -> str:
    """``onednn`` or ``mkl``: the fp32 CPU GEMM :func:`fast_linear` uses, from ``LMFORGE_CPU_GEMM``."""
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"environment variable {ENV}={choice!r}: expected one of {', '.join(CHOICES)}")
    return _resolve(choice)


@functools.cache
def _resolve(choice: str) -> str:
    if choice == "mkl" or not _onednn_available():
        return "mkl"
    if choice == "onednn":
        return "onednn"
    return "onednn" if cpu_vendor() == "AuthenticAMD" else "mkl"


def cpu_gemm_info() -> dict[str, str]:
    """What a report or benchmark records: the CPU vendor, the backend ``auto`` picks on it and the one in use."""
    return {"cpu_vendor": cpu_vendor(), "cpu_gemm_auto": _resolve("auto"), "cpu_gemm": gemm_backend()}


def _mm(a: Any, w: Any, bias: Any = None) -> Any:
    """``a @ w.T (+ bias)`` by oneDNN (``a``: rows x k, ``w``: n x k; either may be a strided view)."""
    return torch.ops.mkldnn._linear_pointwise(a, w, bias, "none", [], "")


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Any, weight: Any, bias: Any) -> Any:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _mm(x.reshape(-1, x.shape[-1]), weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, gy: Any) -> Any:
        x, weight = ctx.saved_tensors
        g2 = gy.reshape(-1, gy.shape[-1])
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _mm(g2, weight.t()).view(x.shape)
        if ctx.needs_input_grad[1]:
            x2 = x.reshape(-1, x.shape[-1])
            if weight.shape[0] >= _WIDE:
                gw = g2.t() @ x2
            elif weight.shape[0] > weight.shape[1]:
                # oneDNN copies its first operand to rows: transposing the product copies the narrower one
                gw = _mm(x2.t(), g2.t()).t().contiguous()
            else:
                gw = _mm(g2.t(), x2.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


class OneDNNLinear(torch.nn.Linear):
    """``nn.Linear`` whose fp32 CPU products run in oneDNN (see the module docstring); anything else falls back."""

    def forward(self, x: Any) -> Any:
        w = self.weight
        if (
            x.dtype is torch.float32
            and w.dtype is torch.float32
            and x.device.type == "cpu"
            and type(x) is torch.Tensor
            and type(w) in (torch.Tensor, torch.nn.Parameter)
            and x.numel() > 0
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()
        ):
            return _Linear.apply(x, w, self.bias)
        return super().forward(x)


def fast_linear(model: Any, backend: str | None = None) -> Any:
    """Switch ``model``'s plain ``nn.Linear`` layers to :class:`OneDNNLinear` when the backend is oneDNN
    (in place; idempotent; subclasses such as LoRA wrappers are left alone, their base layers are switched).
    Returns ``model``."""
    if (backend or gemm_backend()) != "onednn":
        return model
    for mod in model.modules():
        if type(mod) is torch.nn.Linear:
            mod.__class__ = OneDNNLinear
    return model
