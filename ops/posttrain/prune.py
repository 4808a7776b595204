"""Structured pruning of a dense decoder into a smaller student (Minitron-style: prune, then distil).

Key design choice: importance is measured from activations on a few calibration batches of the data the
student will be distilled on, never from weight magnitudes alone, and the pruned model is an ordinary
transformers checkpoint of the same architecture (smaller ``hidden_size``, ``intermediate_size``,
``num_hidden_layers``; ``head_dim`` kept explicit so attention heads stay whole), so it trains, saves and
loads like any other model. Three axes, each optional:

- depth: keep the ``layers`` decoder layers with the largest block influence, ``1 - cos(h_in, h_out)``
  averaged over tokens (a layer that barely changes the residual stream is the cheapest to drop);
- MLP width: keep, in every kept layer, the ``ffn`` intermediate neurons with the largest mean
  ``|act(gate(x)) * up(x)|`` (the input of ``down_proj``);
- embedding width: keep the ``d_model`` residual channels with the largest mean ``|RMSNorm(x)|`` summed over
  every norm in the model; the embedding, the (tied) head, every projection's input or output and every norm
  weight are sliced to the same channels.

Only dense Qwen2 / Llama decoders are supported (MoE experts and MLA's low-rank projections are not).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

SUPPORTED = ("qwen2", "llama")


def _check(model: Any) -> None:
    mt = getattr(model.config, "model_type", None)
    if mt not in SUPPORTED:
        raise ValueError(f"pruning supports dense {SUPPORTED} decoders, not {mt!r}")


def importance(model: Any, batches: Iterable[dict]) -> dict[str, Any]:
    """Activation statistics over ``batches`` (dicts with ``input_ids``, ``attention_mask``,
    optional ``position_ids``): ``channels`` [d_model], ``neurons`` (one [ffn] tensor per layer),
    ``block_influence`` (one float per layer), ``tokens`` counted."""
    import torch

    _check(model)
    inner = model.model
    layers = list(inner.layers)
    d = model.config.hidden_size
    channels = torch.zeros(d, dtype=torch.float64)
    neurons = [torch.zeros(layer.mlp.down_proj.in_features, dtype=torch.float64) for layer in layers]
    bi_sum = [0.0] * len(layers)
    state: dict[str, Any] = {"mask": None, "tokens": 0}  # the mask is set before every forward
    handles = []

    def masked(x):  # [B, T, C] -> [N, C] over the real (unpadded) tokens
        return x.reshape(-1, x.shape[-1])[state["mask"].reshape(-1)]

    def norm_hook(_mod, _inp, out):
        channels.add_(masked(out).abs().sum(0).double())

    for i, layer in enumerate(layers):

        def down_pre(_mod, args, i=i):
            neurons[i].add_(masked(args[0]).abs().sum(0).double())

        def layer_pre(_mod, args, kwargs, i=i):
            h = args[0] if args else kwargs["hidden_states"]
            state[f"in{i}"] = h.detach()

        def layer_post(_mod, _args, _kwargs, out, i=i):
            h_out = out[0] if isinstance(out, tuple) else out
            a, b = masked(state.pop(f"in{i}")), masked(h_out)
            bi_sum[i] += float((1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).sum())

        handles += [
            layer.mlp.down_proj.register_forward_pre_hook(down_pre),
            layer.register_forward_pre_hook(layer_pre, with_kwargs=True),
            layer.register_forward_hook(layer_post, with_kwargs=True),
            layer.input_layernorm.register_forward_hook(norm_hook),
            layer.post_attention_layernorm.register_forward_hook(norm_hook),
        ]
    handles.append(inner.norm.register_forward_hook(norm_hook))
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in batches:
                ids = b["input_ids"].to(dev)
                am = b.get("attention_mask")
                am = am.to(dev) if am is not None else torch.ones_like(ids)
                state["mask"] = am.bool()
                state["tokens"] += int(am.sum())
                kw = {"input_ids": ids, "attention_mask": am}
                if b.get("position_ids") is not None:
                    kw["position_ids"] = b["position_ids"].to(dev)
                model(**kw)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    n = max(state["tokens"], 1)
    return {
        "channels": channels / n,
        "neurons": [x / n for x in neurons],
        "block_influence": [x / n for x in bi_sum],
        "tokens": state["tokens"],
    }


def importance_on(model: Any, tok: Any, examples: list, params: Any, n_batches: int = 8) -> dict[str, Any]:
    """:func:`importance` over the first ``n_batches`` SFT batches of ``examples`` (``params``: the
    ``SFTParams`` the student is then trained with, so the calibration data are its first batches)."""
    from ops.posttrain.sft import make_batches

    batch_fn, _ = make_batches(tok, examples, params)
    return importance(model, (batch_fn(i, 0) for i in range(n_batches)))


def _top(scores: Any, k: int) -> Any:
    import torch

    return torch.sort(torch.topk(scores, k).indices).values


def _check_sizes(model: Any, layers: int | None, d_model: int | None, ffn: int | None) -> None:
    _check(model)
    cfg = model.config
    for name, v, hi in (
        ("layers", layers, cfg.num_hidden_layers),
        ("d_model", d_model, cfg.hidden_size),
        ("ffn", ffn, cfg.intermediate_size),
    ):
        if v is not None and not 1 <= v <= hi:
            raise ValueError(f"{name}: {v} is outside 1..{hi} (the model has {hi})")


def pruned_config(
    model: Any,
    *,
    layers: int | None = None,
    d_model: int | None = None,
    ffn: int | None = None,
    keep_layers: list[int] | None = None,
) -> Any:
    """The config of ``model`` pruned to the given sizes (``head_dim`` made explicit); raises ``ValueError``
    for an unsupported model or a size outside 1..current."""
    _check_sizes(model, layers, d_model, ffn)
    cfg = model.config
    n_layers, d, f = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
    keep = keep_layers if keep_layers is not None else list(range(layers or n_layers))
    new_cfg = copy.deepcopy(cfg)
    new_cfg.head_dim = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    new_cfg.num_hidden_layers = len(keep)
    new_cfg.hidden_size = d_model or d
    new_cfg.intermediate_size = ffn or f
    if getattr(new_cfg, "layer_types", None):
        new_cfg.layer_types = [cfg.layer_types[i] for i in keep]
    if getattr(new_cfg, "max_window_layers", None) is not None:
        new_cfg.max_window_layers = min(new_cfg.max_window_layers, len(keep))
    return new_cfg


def pruned_params(model: Any, **sizes: int | None) -> int:
    """Parameters of the pruned model (tied tensors once), counted on the meta device: nothing allocated."""
    import torch
    from transformers import AutoModelForCausalLM

    from ops.model import count_params

    with torch.device("meta"):
        return count_params(AutoModelForCausalLM.from_config(pruned_config(model, **sizes)))


def prune(
    model: Any,
    imp: dict[str, Any],
    *,
    layers: int | None = None,
    d_model: int | None = None,
    ffn: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """A new, smaller model from ``model`` keeping the most important layers / channels / neurons
    (``imp`` from :func:`importance`); ``None`` keeps an axis whole. Returns (model, what was kept)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ops.cpu_gemm import fast_linear

    cfg = model.config
    n_layers, d, f = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
    _check_sizes(model, layers, d_model, ffn)  # before topk, which fails on its own terms
    keep_layers = (
        sorted(torch.topk(torch.tensor(imp["block_influence"]), layers).indices.tolist())
        if layers is not None
        else list(range(n_layers))
    )
    new_cfg = pruned_config(model, layers=layers, d_model=d_model, ffn=ffn, keep_layers=keep_layers)
    ch = _top(imp["channels"], d_model) if d_model is not None else torch.arange(d)
    small = fast_linear(AutoModelForCausalLM.from_config(new_cfg, dtype=next(model.parameters()).dtype))
    src, dst = model.model, small.model
    kept_neurons = []
    with torch.no_grad():
        dst.embed_tokens.weight.copy_(src.embed_tokens.weight[:, ch])
        dst.norm.weight.copy_(src.norm.weight[ch])
        for j, i in enumerate(keep_layers):
            a, b = src.layers[i], dst.layers[j]
            nr = _top(imp["neurons"][i], ffn) if ffn is not None else torch.arange(f)
            kept_neurons.append(nr.tolist())
            b.input_layernorm.weight.copy_(a.input_layernorm.weight[ch])
            b.post_attention_layernorm.weight.copy_(a.post_attention_layernorm.weight[ch])
            for p in ("q_proj", "k_proj", "v_proj"):
                sa, sb = getattr(a.self_attn, p), getattr(b.self_attn, p)
                sb.weight.copy_(sa.weight[:, ch])
                if sa.bias is not None:
                    sb.bias.copy_(sa.bias)
            b.self_attn.o_proj.weight.copy_(a.self_attn.o_proj.weight[ch, :])
            if a.self_attn.o_proj.bias is not None:
                b.self_attn.o_proj.bias.copy_(a.self_attn.o_proj.bias[ch])
            b.mlp.gate_proj.weight.copy_(a.mlp.gate_proj.weight[nr][:, ch])
            b.mlp.up_proj.weight.copy_(a.mlp.up_proj.weight[nr][:, ch])
            b.mlp.down_proj.weight.copy_(a.mlp.down_proj.weight[ch][:, nr])
        if not cfg.tie_word_embeddings:
            small.lm_head.weight.copy_(model.lm_head.weight[:, ch])
    small.generation_config = copy.deepcopy(model.generation_config)
    return small, {"layers": keep_layers, "channels": ch.tolist(), "neurons": kept_neurons}
