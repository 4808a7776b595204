"""Decoder models from transformers config classes: dense Qwen2 (or Llama), Qwen2-MoE, DeepSeek-V3 (MLA+MoE) and
MiniMax-01 (lightning linear attention with a softmax-attention layer every k layers, MoE in every layer).

Key design choice: lmforge never defines its own architecture. ``build_model`` maps a small, spec-friendly
dict (``d_model``, ``layers``, ``heads``, ...) onto a transformers config class, so every checkpoint is a plain
``save_pretrained`` directory that ``AutoModelForCausalLM.from_pretrained`` loads without ``trust_remote_code``.
The vocabulary size always comes from the tokenizer (an argument here, never a config field).

Architecture dict keys (all optional except ``d_model`` and ``layers``):
``arch`` qwen2 | llama | qwen2_moe | deepseek_v3 | minimax; ``heads``, ``kv_heads`` (GQA), ``ffn`` (SwiGLU width),
``max_seq_len``, ``rope_theta``, ``rope_scaling`` ({type: yarn, factor, original_max_position_embeddings}),
``qkv_bias`` (qwen2 always has it; llama/deepseek: attention_bias), ``tie_embeddings``, ``dropout``,
``init_std``; MoE: ``experts``, ``top_k``, ``expert_ffn``, ``shared_expert_ffn``, ``shared_experts``,
``dense_layers`` (DeepSeek: first k layers dense), ``router_aux_loss_coef``; MLA: ``kv_lora_rank``,
``q_lora_rank``, ``qk_rope_head_dim``, ``qk_nope_head_dim``, ``v_head_dim``; MiniMax: ``full_attention_every``
(k: one softmax-attention layer then k-1 lightning-attention layers, MiniMax-01 uses 8) or ``layer_pattern`` (one
period of ``full_attention`` / ``linear_attention`` starting with a softmax layer, repeated over the layers),
``block_size`` (lightning
attention's block length), MoE keys as above (no shared expert, no dense MLP: ``expert_ffn`` is each expert's
width). ``kv_heads`` applies to the softmax layers; the lightning layers use every head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARCHS = ("qwen2", "llama", "qwen2_moe", "deepseek_v3", "minimax")
MINIMAX_LAYER_TYPES = ("linear_attention", "full_attention")
# keys of a MiniMax arch dict that other architectures do not take, and keys MiniMax does not take
MINIMAX_ONLY = ("full_attention_every", "layer_pattern", "block_size")
NOT_MINIMAX = (
    "ffn",
    "shared_expert_ffn",
    "shared_experts",
    "dense_layers",
    "kv_lora_rank",
    "q_lora_rank",
    "qk_rope_head_dim",
    "qk_nope_head_dim",
    "v_head_dim",
)


def minimax_pattern_problems(
    layers: int | None, full_attention_every: int | None, layer_pattern: list[str] | None
) -> list[tuple[str, str]]:
    """``(field, message)`` for every way a MiniMax layer pattern is inconsistent; ``layers`` None (the
    planner chooses the depth) checks the pattern alone. The pattern is one period: ``full_attention_every``
    k means one ``full_attention`` layer then k-1 ``linear_attention`` layers, and the period repeats over the
    layers, so it must divide the layer count and hold both kinds of layer (all-softmax is not a hybrid).

    The first layer must be softmax attention. MiniMax-01 puts the softmax layer last in each group of 8, but
    transformers' ``MiniMaxCache`` takes the cached length (and the padding mask's width) from layer 0, which a
    lightning layer leaves empty: cached decoding of a left-padded batch then lets the softmax layers attend to
    the padding, and a forward without explicit positions restarts them at 0."""
    if full_attention_every is None and layer_pattern is None:
        return [
            (
                "model.full_attention_every",
                "arch 'minimax' needs its layer pattern: full_attention_every k (one softmax-attention layer, then "
                "k-1 lightning-attention layers; MiniMax-01 uses 8) or layer_pattern",
            )
        ]
    if full_attention_every is not None and layer_pattern is not None:
        return [("model.layer_pattern", "give full_attention_every or layer_pattern, not both")]
    if full_attention_every is not None:
        field, k = "model.full_attention_every", int(full_attention_every)
        if k < 2:
            return [(field, f"{k} leaves no lightning-attention layer; it must be at least 2")]
        period = k
    else:
        field = "model.layer_pattern"
        pattern = list(layer_pattern or [])
        if not pattern:
            return [(field, "is empty; list one period of linear_attention / full_attention layers")]
        unknown = sorted({str(t) for t in pattern if t not in MINIMAX_LAYER_TYPES})
        if unknown:
            return [(field, f"unknown layer type(s) {unknown}; expected {' or '.join(MINIMAX_LAYER_TYPES)}")]
        missing = [t for t in MINIMAX_LAYER_TYPES if t not in pattern]
        if missing:
            return [(field, f"has no {missing[0]} layer; a MiniMax period holds both kinds of layer")]
        if pattern[0] != "full_attention":
            return [
                (
                    field,
                    f"starts with {pattern[0]}; the first layer must be full_attention (transformers' MiniMax "
                    "cache reads the cached length from layer 0, which a lightning layer leaves empty)",
                )
            ]
        period = len(pattern)
    if layers is not None and int(layers) % period:
        return [(field, f"a period of {period} layers does not divide layers {layers}")]
    return []


def minimax_layer_types(
    layers: int, full_attention_every: int | None = None, layer_pattern: list[str] | None = None
) -> list[str]:
    """The per-layer ``layer_types`` of a MiniMax model (raises ``ValueError`` naming the field when the
    pattern is inconsistent, see :func:`minimax_pattern_problems`)."""
    problems = minimax_pattern_problems(layers, full_attention_every, layer_pattern)
    if problems:
        field, msg = problems[0]
        raise ValueError(f"{field}: {msg}")
    if full_attention_every is not None:
        k = int(full_attention_every)
        period = ["full_attention"] + ["linear_attention"] * (k - 1)
    else:
        period = list(layer_pattern or [])
    return period * (int(layers) // len(period))


def minimax_period(arch_cfg: dict[str, Any]) -> int:
    """Layers in one period of a MiniMax pattern (1 for any other architecture or an incomplete pattern)."""
    if arch_cfg.get("arch") != "minimax":
        return 1
    if arch_cfg.get("full_attention_every"):
        return max(1, int(arch_cfg["full_attention_every"]))
    return max(1, len(arch_cfg.get("layer_pattern") or []))


def _ffn(d: int) -> int:
    """SwiGLU width ~ 8/3 d rounded up to a multiple of 32 (LLaMA's rule)."""
    return int(32 * -(-(8 * d // 3) // 32))


def make_config(
    arch_cfg: dict[str, Any],
    vocab_size: int,
    *,
    pad_token_id: int | None = None,
    eos_token_id: int | list[int] | None = None,
    bos_token_id: int | None = None,
) -> Any:
    """The transformers ``PretrainedConfig`` for ``arch_cfg`` (see the module docstring for the keys)."""
    a = dict(arch_cfg)
    arch = a.pop("arch", "qwen2")
    if arch not in ARCHS:
        raise ValueError(f"model.arch: unknown {arch!r}; expected one of {ARCHS}")
    d, n_layers = int(a.pop("d_model")), int(a.pop("layers"))
    heads = int(a.pop("heads", max(1, d // 64)))
    kv_heads = int(a.pop("kv_heads", heads))
    if d % heads:
        raise ValueError(f"model.heads: d_model {d} is not divisible by heads {heads}")
    if heads % kv_heads:
        raise ValueError(f"model.kv_heads: heads {heads} is not divisible by kv_heads {kv_heads}")
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(a.pop("rope_theta", 10000.0))}
    scaling = a.pop("rope_scaling", None)
    if scaling:
        scaling = dict(scaling)
        rtype = scaling.pop("type", scaling.pop("rope_type", "yarn"))
        rope.update({"rope_type": rtype, **scaling})
    common = dict(
        vocab_size=int(vocab_size),
        hidden_size=d,
        num_hidden_layers=n_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=int(a.pop("ffn", _ffn(d))),
        max_position_embeddings=int(a.pop("max_seq_len", 2048)),
        rope_parameters=rope,
        tie_word_embeddings=bool(a.pop("tie_embeddings", True)),
        attention_dropout=float(a.pop("dropout", 0.0)),
        initializer_range=float(a.pop("init_std", 0.02)),
        rms_norm_eps=float(a.pop("rms_norm_eps", 1e-6)),
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=bos_token_id,
        use_cache=True,
    )
    qkv_bias = a.pop("qkv_bias", None)
    if arch != "minimax":
        given = [k for k in MINIMAX_ONLY if k in a]
        if given:
            raise ValueError(f"model.{given[0]}: only for arch 'minimax', not {arch!r}")
    if arch == "minimax":
        from transformers import MiniMaxConfig

        given = [k for k in NOT_MINIMAX if k in arch_cfg]
        if given:
            raise ValueError(
                f"model.{given[0]}: not a MiniMax setting (no dense MLP, no shared expert, no latent attention; "
                "each expert's width is expert_ffn)"
            )
        if qkv_bias:
            raise ValueError("model.qkv_bias: MiniMax's projections have no bias")
        common.pop("intermediate_size")
        layer_types = minimax_layer_types(n_layers, a.pop("full_attention_every", None), a.pop("layer_pattern", None))
        experts, top_k = int(a.pop("experts", 8)), int(a.pop("top_k", 2))
        if top_k > experts:
            raise ValueError(f"model.top_k: {top_k} > experts {experts}")
        cfg = MiniMaxConfig(
            **common,
            # top_k experts of this width are about one SwiGLU MLP of the default width
            intermediate_size=int(a.pop("expert_ffn", max(32, _ffn(d) // top_k))),
            head_dim=d // heads,
            layer_types=layer_types,
            block_size=int(a.pop("block_size", 256)),
            num_local_experts=experts,
            num_experts_per_tok=top_k,
            router_aux_loss_coef=float(a.pop("router_aux_loss_coef", 0.001)),
            output_router_logits=True,
        )
    elif arch == "qwen2":
        from transformers import Qwen2Config

        if qkv_bias is False:
            raise ValueError("model.qkv_bias: Qwen2 always has a QKV bias; use arch 'llama' for none")
        cfg = Qwen2Config(**common)
    elif arch == "llama":
        from transformers import LlamaConfig

        cfg = LlamaConfig(**common, attention_bias=bool(qkv_bias), mlp_bias=False)
    elif arch == "qwen2_moe":
        from transformers import Qwen2MoeConfig

        experts = int(a.pop("experts", 8))
        cfg = Qwen2MoeConfig(
            **common,
            num_experts=experts,
            num_experts_per_tok=int(a.pop("top_k", 2)),
            moe_intermediate_size=int(a.pop("expert_ffn", max(32, common["intermediate_size"] // 4))),
            shared_expert_intermediate_size=int(a.pop("shared_expert_ffn", common["intermediate_size"])),
            qkv_bias=True if qkv_bias is None else bool(qkv_bias),
            norm_topk_prob=True,
            router_aux_loss_coef=float(a.pop("router_aux_loss_coef", 0.001)),
            output_router_logits=True,
        )
    else:
        from transformers import DeepseekV3Config

        rope_dim = int(a.pop("qk_rope_head_dim", max(8, d // heads // 2)))
        experts = int(a.pop("experts", 8))
        common["rope_parameters"] = rope
        cfg = DeepseekV3Config(
            **common,
            n_routed_experts=experts,
            num_experts_per_tok=int(a.pop("top_k", 2)),
            moe_intermediate_size=int(a.pop("expert_ffn", max(32, common["intermediate_size"] // 4))),
            n_shared_experts=int(a.pop("shared_experts", 1)),
            n_group=1,
            topk_group=1,
            first_k_dense_replace=int(a.pop("dense_layers", 1)),
            kv_lora_rank=int(a.pop("kv_lora_rank", max(16, d // 4))),
            q_lora_rank=a.pop("q_lora_rank", None),
            qk_rope_head_dim=rope_dim,
            qk_nope_head_dim=int(a.pop("qk_nope_head_dim", d // heads)),
            v_head_dim=int(a.pop("v_head_dim", d // heads)),
            attention_bias=bool(qkv_bias),
            routed_scaling_factor=1.0,
            num_mtp_layers=0,
        )
    if a:
        raise ValueError(f"model: unknown key(s) {sorted(a)} for arch {arch!r}")
    return cfg


def build_model(
    arch_cfg: dict[str, Any],
    vocab_size: int,
    *,
    seed: int = 0,
    pad_token_id: int | None = None,
    eos_token_id: int | list[int] | None = None,
    bos_token_id: int | None = None,
    device: str | None = None,
    dtype: Any = None,
) -> Any:
    """A freshly initialised ``*ForCausalLM`` (deterministic for a given ``seed``)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ops.cpu_gemm import fast_linear

    cfg = make_config(
        arch_cfg, vocab_size, pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=bos_token_id
    )
    cfg._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype or torch.float32)
    if device:
        model.to(device)
    return fast_linear(model)


def load_model(path: Path | str, *, device: str | None = None, dtype: Any = None) -> Any:
    """Load a model artifact directory (local files only, no remote code), in float32 unless ``dtype`` says
    otherwise: an imported checkpoint is usually stored in bfloat16, and training bfloat16 weights directly
    loses every update smaller than their rounding step (a few 1e-3 relative), so the weights the
    optimiser updates are always full precision (autocast runs the matmuls in bfloat16 on a GPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ops.cpu_gemm import fast_linear

    model = AutoModelForCausalLM.from_pretrained(
        str(path), local_files_only=True, trust_remote_code=False, dtype=dtype or torch.float32
    )
    if device:
        model.to(device)
    return fast_linear(model)


def save_model(model: Any, tokenizer: Any, out_dir: Path | str) -> None:
    """``save_pretrained`` (safetensors) + the tokenizer with its chat template + a generation config that
    stops where lmforge's sampler does (:func:`ops.generate.stop_token_ids`: the template's turn end,
    ``<|im_end|>``, ``<|endoftext|>``, eos)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # DDP
    model = getattr(model, "_orig_mod", model)  # torch.compile
    if tokenizer is not None:
        from ops.generate import pad_token_id, stop_token_ids

        stop = sorted(stop_token_ids(tokenizer))
        gc = model.generation_config
        gc.eos_token_id = stop or gc.eos_token_id
        gc.pad_token_id = pad_token_id(tokenizer)
        gc.bos_token_id = None
    model.save_pretrained(str(out), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out), save_jinja_files=False)


def count_params(model: Any, *, exclude_embeddings: bool = False) -> int:
    """Parameter count (tied tensors once). ``exclude_embeddings`` drops the input embedding (and an
    untied output head) — the N of ``6N`` FLOP rules counts the head, so use the default for FLOPs."""
    seen, n = set(), 0
    emb = model.get_input_embeddings().weight if exclude_embeddings else None
    for p in model.parameters():
        if id(p) in seen or (emb is not None and p is emb):
            continue
        seen.add(id(p))
        n += p.numel()
    return n


def active_params(model: Any) -> int:
    """Parameters touched per token: for MoE, only ``top_k`` of the routed experts (shared experts count).

    Counted on the model itself, not on a formula, so it stays right across transformers versions."""
    cfg = model.config
    total = count_params(model)
    n_exp = getattr(cfg, "num_experts", None) or getattr(cfg, "n_routed_experts", None)
    k = getattr(cfg, "num_experts_per_tok", None)
    if not n_exp or not k:
        return total
    routed = 0
    for name, p in model.named_parameters():
        if (
            ".experts." in name
            or name.endswith(".experts.gate_up_proj")
            or name.endswith(".experts.down_proj")
        ):
            routed += p.numel()
    return total - routed + routed * k // n_exp


def add_special_tokens(model: Any, tokenizer: Any, tokens: list[str]) -> list[str]:
    """Add ``tokens`` the tokenizer lacks as special tokens and grow the embeddings to match; returns the
    tokens added. Each new row (input embedding and, when untied, output head) is the mean of the existing
    rows, so a new token starts as an "average" token instead of a random direction; tied embeddings stay
    tied (one matrix grows)."""
    import torch

    new = [t for t in tokens if t not in tokenizer.get_vocab()]
    if not new:
        return []
    tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    old = model.get_input_embeddings().weight.shape[0]
    size = max(len(tokenizer), old)
    tied = model.get_output_embeddings() is not None and (
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    )
    model.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        mats = [model.get_input_embeddings().weight]
        if not tied and model.get_output_embeddings() is not None:
            mats.append(model.get_output_embeddings().weight)
        for w in mats:
            w[old:] = w[:old].mean(0, keepdim=True)
    model.config.vocab_size = size
    return new
