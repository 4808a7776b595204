"""Weight-space merging of same-architecture checkpoints: linear averaging and task arithmetic (Kimi k1.5's
long-to-short merge is a linear merge of a long-CoT and a short-CoT model).

Key design choice: merging works on safetensors state dicts and refuses anything that is not the same
architecture (config fields that shape the weights, identical tensor names and shapes) with an error naming
the first difference, instead of silently averaging mismatched tensors.

* ``linear``:  ``theta = sum_i w_i theta_i``  (weights normalised to sum to 1)
* ``task_arithmetic``: ``theta = theta_base + sum_i w_i (theta_i - theta_base)`` (Ilharco et al. 2023)
"""

from __future__ import annotations

from typing import Any

_SHAPE_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
    "tie_word_embeddings",
)


def check_compatible(models: list[Any], names: list[str]) -> None:
    c0 = models[0].config
    sd0 = models[0].state_dict()
    for m, n in zip(models[1:], names[1:]):
        for k in _SHAPE_KEYS:
            if getattr(m.config, k, None) != getattr(c0, k, None):
                raise ValueError(
                    f"cannot merge {n!r} with {names[0]!r}: config {k} differs "
                    f"({getattr(m.config, k, None)} vs {getattr(c0, k, None)})"
                )
        sd = m.state_dict()
        if set(sd) != set(sd0):
            raise ValueError(
                f"cannot merge {n!r} with {names[0]!r}: tensor names differ "
                f"({sorted(set(sd) ^ set(sd0))[:3]})"
            )
        for k in sd0:
            if sd[k].shape != sd0[k].shape:
                raise ValueError(
                    f"cannot merge {n!r}: tensor {k} has shape {tuple(sd[k].shape)} vs {tuple(sd0[k].shape)}"
                )


def merge_state(
    states: list[dict], weights: list[float], method: str = "linear", base: dict | None = None
) -> dict:
    """Merged state dict (see the module docstring for the formulas)."""
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} models but {len(weights)} weights")
    if method == "linear":
        tot = sum(weights)
        if tot <= 0:
            raise ValueError("linear merge weights must sum to a positive number")
        w = [x / tot for x in weights]
        return {
            k: sum(wi * s[k].float() for wi, s in zip(w, states)).to(states[0][k].dtype) for k in states[0]
        }
    if method == "task_arithmetic":
        if base is None:
            raise ValueError("task_arithmetic needs a base model")
        return {
            k: (
                base[k].float() + sum(wi * (s[k].float() - base[k].float()) for wi, s in zip(weights, states))
            ).to(base[k].dtype)
            for k in base
        }
    raise ValueError(f"unknown merge method {method!r}; use 'linear' or 'task_arithmetic'")


def merge_models(
    models: list[Any], names: list[str], weights: list[float], method: str = "linear", base: Any = None
) -> Any:
    """Merge into a copy of the first model (tied embeddings stay tied) and return it."""
    import copy

    check_compatible(
        models + ([base] if base is not None else []), names + (["base"] if base is not None else [])
    )
    merged = merge_state(
        [m.state_dict() for m in models], weights, method, base.state_dict() if base is not None else None
    )
    out = copy.deepcopy(models[0])
    out.load_state_dict(merged)
    return out
