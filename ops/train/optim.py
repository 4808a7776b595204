"""The optimiser and learning-rate schedule of every training kind: one documented model, one mapping into
:class:`ops.train.core.TrainConfig`.

Key design choice: the knobs of AdamW and of the schedule (``schedule``, ``min_lr_ratio``, ``decay_frac``,
``weight_decay``, ``betas``, ``eps``, ``grad_clip``) live in :class:`OptimConfig`, a pydantic model that each
training kind's stage config embeds as its ``optim:`` block and passes unchanged to its ops parameters. Kinds
whose defaults differ subclass it with other defaults (pretraining decays weights; RL keeps the LR constant
after warm-up), so a partial block such as ``optim: {schedule: wsd}`` keeps the kind's own defaults for the
fields it leaves out. :func:`train_config` is the only place a ``TrainConfig`` is assembled from a kind's
parameters, so a knob cannot reach one kind and silently miss another.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .core import PRECISIONS, TrainConfig
from .schedule import SCHEDULES

_FIELDS: dict[str, dict[str, Any]] = {
    "schedule": {"description": "LR schedule after warm-up: cosine | wsd (warmup-stable-decay) | linear | constant"},
    "min_lr_ratio": {"ge": 0, "le": 1, "description": "final LR as a fraction of the peak (cosine, wsd, linear)"},
    "decay_frac": {"gt": 0, "le": 1, "description": "wsd: fraction of the steps spent decaying"},
    "weight_decay": {"ge": 0, "description": "AdamW weight decay (matrices only; norms and biases never decay)"},
    "betas": {"description": "AdamW betas (beta1, beta2), each in [0, 1)"},
    "eps": {"gt": 0, "description": "AdamW epsilon"},
    "grad_clip": {"ge": 0, "description": "global gradient-norm clip (0: off; the norm is still measured and guarded)"},
}


def _field(name: str, default: Any) -> Any:
    return Field(default, **_FIELDS[name])


class OptimConfig(BaseModel):
    """AdamW and LR schedule of a training run (the defaults of SFT, reward model, DPO and distillation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schedule: Literal["cosine", "wsd", "linear", "constant"] = _field("schedule", "cosine")
    min_lr_ratio: float = _field("min_lr_ratio", 0.1)
    decay_frac: float = _field("decay_frac", 0.2)
    weight_decay: float = _field("weight_decay", 0.0)
    betas: tuple[float, float] = _field("betas", (0.9, 0.95))
    eps: float = _field("eps", 1e-8)
    grad_clip: float = _field("grad_clip", 1.0)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        for i, b in enumerate(v):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"beta{i + 1} = {b} is outside [0, 1)")
        return v


class PretrainOptimConfig(OptimConfig):
    """The pretraining defaults: weight decay 0.1 on matrices."""

    weight_decay: float = _field("weight_decay", 0.1)


class RLOptimConfig(OptimConfig):
    """The defaults of GRPO and PPO: a constant LR after warm-up (each step's rollouts come from the policy
    of the step before, so a decaying LR would only slow the late steps)."""

    schedule: Literal["cosine", "wsd", "linear", "constant"] = _field("schedule", "constant")


OPTIM_FIELDS = tuple(OptimConfig.model_fields)
# the TrainConfig fields a kind's parameters may carry under their own name (everything but the optim block)
_LOOP_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name not in OPTIM_FIELDS)
assert set(OPTIM_FIELDS) <= {f.name for f in fields(TrainConfig)}
assert set(OptimConfig.model_fields["schedule"].annotation.__args__) == set(SCHEDULES)


def train_config(p: Any, **over: Any) -> TrainConfig:
    """The ``TrainConfig`` of a run of a kind with parameters ``p``: every ``TrainConfig`` loop field ``p``
    has under the same name (``steps``, ``lr``, ``warmup_steps``, ``seed``, ``ckpt_every``, ...), every
    field of ``p.optim``, then ``over`` (values the kind computes, e.g. ``log_every``)."""
    kw = {n: getattr(p, n) for n in _LOOP_FIELDS if hasattr(p, n)}
    kw.update(p.optim.model_dump())
    kw.update(over)
    return TrainConfig(**kw)


def optim_field(cls: type[OptimConfig] = OptimConfig) -> Any:
    """The ``optim`` field of a training kind's stage config, its description naming the kind's defaults."""
    d = cls()
    defaults = ", ".join(f"{n}: {_yaml(getattr(d, n))}" for n in OPTIM_FIELDS)
    return Field(
        default_factory=cls,
        description="optimiser (AdamW) and LR schedule, shared by every training kind: schedule (cosine | wsd | "
        "linear | constant), min_lr_ratio, decay_frac, weight_decay, betas, eps, grad_clip; a field left out "
        f"keeps this kind's default ({defaults})",
    )


Precision = Literal[PRECISIONS]  # the spec field's values are the core's


def precision_field() -> Any:
    """The ``precision`` field of a training kind's stage config (``TrainConfig.precision``)."""
    return Field(
        "auto",
        description="training arithmetic: auto (bf16 autocast on CUDA, fp32 on the CPU), bf16 (bf16 autocast; "
        "on the CPU the attention stays fp32, where bf16 is slower) or fp32; the weights and the optimizer "
        "state are fp32 either way",
    )


def _yaml(v: Any) -> str:
    return f"[{', '.join(map(str, v))}]" if isinstance(v, tuple) else str(v)
