"""Per-token log-probabilities straight from hidden states and the output head, a block of rows at a time.

Key design choice: the RL, DPO, SFT and pretraining losses need ``log softmax(h W^T / T)[y]``, one number per
token, but the plain path materialises the ``[tokens, vocabulary]`` logits and four more tensors of that size (the float copy,
``logsumexp``'s work, its backward's softmax and the logits' gradient). On a GRPO batch that is ~120 MB apiece:
each is mapped afresh by the allocator and faulted in page by page, and their passes cost more than the head's
matmul. :func:`head_logprobs` computes the same function in blocks of rows whose logits stay small, keeps only
the hidden states for the backward and recomputes a block's logits there (one more head matmul, far cheaper than
the passes it replaces). Values and gradients equal the plain path's up to float rounding (tested); blocks are
summed in a fixed order, so a run is repeatable bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch

# logits kept per block: rows x vocabulary floats (2 MiB), small enough to stay in the allocator's heap and cache
BLOCK_FLOATS = 1 << 19


def fused_ok(hidden: Any, head: Any) -> bool:
    """Whether :func:`head_logprobs` computes ``head``'s log-probabilities for ``hidden`` exactly: an fp32
    ``nn.Linear`` head without bias, outside autocast (anything else keeps the plain path)."""
    from ops.cpu_gemm import OneDNNLinear

    return (
        type(head) in (torch.nn.Linear, OneDNNLinear)
        and head.bias is None
        and hidden.dtype is torch.float32
        and head.weight.dtype is torch.float32
        and type(head.weight) in (torch.Tensor, torch.nn.Parameter)
        and not torch.is_autocast_enabled(hidden.device.type)
    )


def head_logprobs(hidden: Any, weight: Any, targets: Any, temperature: float = 1.0) -> Any:
    """``log softmax(hidden @ weight.T / temperature)[targets]`` for every row: ``hidden [M, d]``, ``weight [V,
    d]``, ``targets [M]`` (long) -> ``[M]``, differentiable in ``hidden`` and ``weight``."""
    return _HeadLogprobs.apply(hidden, weight, targets, 1.0 / temperature)


def _nt(a: Any, w: Any) -> Any:
    """``a @ w.T`` with the CPU GEMM the models' linear layers use (:mod:`ops.cpu_gemm`)."""
    from ops.cpu_gemm import _mm, gemm_backend

    if a.device.type == "cpu" and gemm_backend() == "onednn":
        return _mm(a, w)
    return a @ w.t()


def _blocks(m: int, vocab: int) -> list[tuple[int, int]]:
    rows = max(16, BLOCK_FLOATS // max(vocab, 1))
    return [(s, min(s + rows, m)) for s in range(0, m, rows)]


def _scaled_logits(h: Any, w: Any, inv_t: float) -> Any:
    z = _nt(h, w)
    return z.mul_(inv_t) if inv_t != 1.0 else z


class _HeadLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: Any, w: Any, y: Any, inv_t: float) -> Any:
        h = h.contiguous()
        out = h.new_empty(h.shape[0])
        for s, e in _blocks(h.shape[0], w.shape[0]):
            z = _scaled_logits(h[s:e], w, inv_t)
            out[s:e] = torch.log_softmax(z, -1).gather(1, y[s:e, None]).squeeze(1)
        ctx.save_for_backward(h, w, y)
        ctx.inv_t = inv_t
        return out

    @staticmethod
    def backward(ctx: Any, g: Any) -> Any:
        h, w, y = ctx.saved_tensors
        inv_t = ctx.inv_t
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gh = torch.empty_like(h) if need_h else None
        # the weight's gradient is summed transposed, [d, V]: that product is the faster one in oneDNN
        gw_t = w.new_zeros(w.shape[1], w.shape[0]) if need_w else None
        g = g.contiguous()
        for s, e in _blocks(h.shape[0], w.shape[0]):
            z = _scaled_logits(h[s:e], w, inv_t)
            gc = g[s:e, None]
            # d lp / d z = onehot(y) - softmax(z), times the incoming gradient (and 1/T for the scaling)
            gz = torch.softmax(z, -1).mul_(-gc)
            gz.scatter_add_(1, y[s:e, None], gc)
            if inv_t != 1.0:
                gz.mul_(inv_t)
            if need_h:
                gh[s:e] = _nt(gz, w.t())
            if need_w:
                gw_t += _nt(h[s:e].t(), gz.t())
        return gh, gw_t.t().contiguous() if need_w else None, None, None


def head_kd(hidden: Any, weight: Any, teacher: Any, targets: Any, temperature: float, alpha: float) -> tuple:
    """``ops.losses.kd_loss`` on the student's head computed in blocks of rows: ``alpha * T^2 * mean KL(p_T ||
    q_T) + (1 - alpha) * mean CE`` over the ``N`` rows of ``hidden [N, d]`` (every row a labelled position),
    with the teacher's logits ``teacher [N, V]`` and labels ``targets [N]``. Returns ``(loss, kl, ce)``, the
    last two detached; differentiable in ``hidden`` and ``weight``."""
    return _HeadKD.apply(hidden, weight, teacher, targets, float(temperature), float(alpha))


class _HeadKD(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: Any, w: Any, t: Any, y: Any, temp: float, alpha: float) -> Any:
        h = h.contiguous()
        n = max(h.shape[0], 1)
        kl = h.new_zeros(())
        ce = h.new_zeros(())
        for s, e in _blocks(h.shape[0], w.shape[0]):
            z = _nt(h[s:e], w)
            log_q = torch.log_softmax(z / temp, -1)
            log_p = torch.log_softmax(t[s:e].float() / temp, -1)
            kl += (log_p.exp() * (log_p - log_q)).sum()
            ce -= torch.log_softmax(z, -1).gather(1, y[s:e, None]).sum()
        kl, ce = kl / n, ce / n
        ctx.save_for_backward(h, w, t, y)
        ctx.temp, ctx.alpha = temp, alpha
        ctx.mark_non_differentiable(kl, ce)
        return alpha * temp**2 * kl + (1 - alpha) * ce, kl, ce

    @staticmethod
    def backward(ctx: Any, g: Any, _gkl: Any, _gce: Any) -> Any:
        h, w, t, y = ctx.saved_tensors
        temp, alpha = ctx.temp, ctx.alpha
        n = max(h.shape[0], 1)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gh = torch.empty_like(h) if need_h else None
        gw_t = w.new_zeros(w.shape[1], w.shape[0]) if need_w else None
        for s, e in _blocks(h.shape[0], w.shape[0]):
            z = _nt(h[s:e], w)
            # d/dz: alpha * T * (q_T - p_T) + (1 - alpha) * (softmax(z) - onehot(y)), over n rows, times g
            gz = torch.softmax(z / temp, -1).sub_(torch.softmax(t[s:e].float() / temp, -1)).mul_(alpha * temp)
            ce_part = torch.softmax(z, -1)
            ce_part.scatter_add_(1, y[s:e, None], ce_part.new_full((e - s, 1), -1.0))
            gz.add_(ce_part, alpha=1 - alpha).mul_(g / n)
            if need_h:
                gh[s:e] = _nt(gz, w.t())
            if need_w:
                gw_t += _nt(h[s:e].t(), gz.t())
        return gh, gw_t.t().contiguous() if need_w else None, None, None, None, None
