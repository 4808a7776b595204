"""Stage kind ``dpo``: Direct Preference Optimization against a frozen reference (``ops.posttrain.dpo``).

Key design choice: config -> one ``train_dpo`` call -> a model artifact; pairs come from the same sources
as ``reward_model`` (pairs artifacts, samples paired correct-vs-incorrect, a user Parquet file), and the
held-out chosen-minus-rejected margin is measured before and after training.
"""

from __future__ import annotations

from pydantic import Field

from ops.train.optim import OptimConfig, optim_field

from .posttrain import (
    MODEL,
    PostTrainError,
    check_template,
    ckpt_every,
    collect_pairs,
    keep_last,
    keep_training_state,
    load_policy,
    pairs_path_fingerprint,
    pairs_path_problems,
    params,
    reference_policy,
    write_curve,
)
from .registry import CheckOutcome, CheckSpec, StageConfig, StageKind, StageResult, StageRun, ref, register


class DPOConfig(StageConfig):
    model: str = ref(
        *MODEL, description="policy to optimise (also the frozen reference unless `reference` is set)"
    )
    pairs: list[str] = ref(
        "pairs",
        "rollouts",
        "model",
        "sft_data",
        many=True,
        description="preference pairs or samples paired correct-vs-incorrect",
    )
    reference: str | None = ref(
        *MODEL, optional=True, description="frozen reference policy; default: `model`"
    )
    path: str | None = Field(None, description="optional user Parquet of pairs: prompt, chosen, rejected")
    beta: float = Field(0.1, gt=0, description="DPO temperature beta")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="conservative-DPO label smoothing")
    held_out: float = Field(0.2, gt=0, lt=1, description="share of prompts held out for margins")
    max_pairs_per_prompt: int = Field(4, ge=1, description="pairs built from each prompt's samples")
    steps: int = Field(100, ge=1, description="optimizer updates")
    lr: float = Field(5e-5, gt=0, description="peak learning rate")
    optim: OptimConfig = optim_field()
    batch_size: int = Field(16, ge=1, description="pairs per update")
    seed: int = Field(0, description="split and order seed")
    eval_problems: int = Field(100, ge=0, description="held-out task problems for greedy accuracy")
    ckpt_every: int = ckpt_every(100)
    keep_last: int = keep_last()


def validate(cfg, refs):
    return pairs_path_problems(cfg)


def run(run: StageRun) -> StageResult:
    from ops.model import save_model
    from ops.posttrain.dpo import DPOParams, pair_margins, train_dpo
    from ops.posttrain.rm import split_pairs

    c: DPOConfig = run.config
    check_template(run, "model")
    pairs = collect_pairs(run, "pairs", c.max_pairs_per_prompt, c.seed, c.path)
    train_p, held = split_pairs(pairs, c.held_out, c.seed)
    if not train_p:
        raise PostTrainError(f"stage {run.stage!r}, field 'pairs': no training pairs")
    policy, tok = load_policy(run, "model")
    reference = reference_policy(run)
    before = pair_margins(policy, reference, tok, held, c.beta)
    info = train_dpo(
        policy,
        reference,
        tok,
        train_p,
        params(DPOParams, c),
        work_dir=run.work,
        fingerprint={"stage_version": run.version},
        log=run.log,
    )
    after = pair_margins(policy, reference, tok, held, c.beta)
    save_model(policy, tok, run.out)
    keep_training_state(run)
    md = write_curve(run.out, info["curve"], ["loss", "margin", "accuracy"])
    metrics = {
        "train_pairs": info["pairs"],
        "held_out_pairs": after["pairs"],
        "held_out_margin_before": before["margin"],
        "held_out_margin_after": after["margin"],
        "held_out_accuracy_after": after["accuracy"],
        "final_loss": info["losses"][-1],
    }
    return StageResult(
        metrics=metrics,
        metadata=md,
        checks=[
            CheckOutcome(
                "margin_rises",
                after["margin"] > before["margin"],
                f"held-out chosen-minus-rejected margin {before['margin']:.3f} -> {after['margin']:.3f}",
            )
        ],
    )


DPO = register(
    StageKind(
        name="dpo",
        config=DPOConfig,
        produces="model",
        run=run,
        pool="gpu",
        description="Direct Preference Optimization against a frozen reference",
        checks=(CheckSpec("margin_rises", "held-out chosen-minus-rejected margin rises"),),
        validate=validate,
        fingerprint=pairs_path_fingerprint,
    )
)
