"""Stage kind ``rejection_sample``: k samples per prompt, kept when verified correct (or best-of-k by a
reward model, refused before sampling when its tokenizer differs from the policy's; or the shortest correct
one for a long-to-short SFT), de-duplicated and length-capped, into SFT data (``ops.posttrain.rejection``).

Key design choice: config -> one ``rejection_sample`` call -> an ``sft_data`` artifact that also keeps
every sample drawn (``rollouts.parquet``); each kept row names its rollout in ``parent_ids``, and blocking
checks re-verify every kept answer and its provenance.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .posttrain import (
    MODEL,
    AnswerFormatName,
    PostTrainError,
    PromptTemplate,
    answer_format_field,
    check_same_tokenizer,
    check_template,
    load_policy,
    params,
    prompt_template_field,
    train_tasks,
)
from .registry import (
    CheckOutcome,
    CheckSpec,
    StageConfig,
    StageKind,
    StageResult,
    StageRun,
    Table,
    empty_ref_problems,
    ref,
    register,
)


class RejectionConfig(StageConfig):
    model: str = ref(*MODEL, description="the model to sample from")
    prompts: list[str] = ref(
        "tasks", many=True, description="tasks whose training split provides the prompts"
    )
    reward_model: str | None = ref(*MODEL, optional=True, description="scores samples for keep=best_of_k")
    samples: int = Field(8, ge=1, description="samples per prompt (k)")
    keep: Literal["correct", "best_of_k", "shortest"] = Field(
        "correct",
        description="'correct': every verified-correct "
        "distinct sample (up to max_per_prompt); 'best_of_k': the verified "
        "sample the reward model scores highest; 'shortest': the shortest verified sample (Kimi k1.5's "
        "long-to-short rejection sampling)",
    )
    max_prompts: int = Field(1000, ge=1, description="prompts to sample (the first N of the training split)")
    max_per_prompt: int = Field(2, ge=1, description="kept responses per prompt after de-duplication")
    max_response_tokens: int = Field(96, ge=1, description="length cap: longer samples are rejected")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    answer_format: AnswerFormatName = answer_format_field()
    prompt_template: PromptTemplate = prompt_template_field()
    seed: int = Field(0, description="sampling seed")


def validate(c: RejectionConfig, refs: dict[str, str]) -> list[tuple[str, str]]:
    """``best_of_k`` needs a reward model; ``shortest`` selects by length alone, so a reward model there would
    be loaded and ignored; ``shortest`` keeps one sample per prompt, so a larger ``max_per_prompt`` is a
    mistake."""
    problems = []
    if c.keep == "best_of_k" and not c.reward_model:
        problems.append(("reward_model", "keep=best_of_k needs a reward_model"))
    if c.keep == "shortest" and c.reward_model:
        problems.append(("reward_model", "keep=shortest selects by length alone; remove the reward_model"))
    if c.keep == "shortest" and "max_per_prompt" in c.model_fields_set and c.max_per_prompt != 1:
        problems.append(
            ("max_per_prompt", f"keep=shortest keeps one sample per prompt; got max_per_prompt={c.max_per_prompt}")
        )
    return problems


def validate_spec(c: RejectionConfig, refs: dict[str, str]) -> list[tuple[str, str]]:
    """The compile-time checks: at least one prompt stage, then :func:`validate` (which the run repeats)."""
    return empty_ref_problems(c, "prompts") + validate(c, refs)


def run(run: StageRun) -> StageResult:
    from ops.posttrain.rejection import RejectionParams, rejection_sample, write_sft
    from ops.posttrain.rm import load_reward_model
    from ops.rl.common import write_rollouts
    from ops.tasks import is_correct

    c: RejectionConfig = run.config
    check_template(run, "model")
    for field, msg in validate(c, {}):
        raise PostTrainError(f"stage {run.stage!r}, field {field!r}: {msg}")
    check_same_tokenizer(run, "reward_model")
    tasks = train_tasks(run, "prompts")[: c.max_prompts]
    model, tok = load_policy(run, "model")
    rm = load_reward_model(run.input("reward_model").path) if run.inputs.get("reward_model") else None
    p = params(RejectionParams, c)
    sft, rollouts, stats = rejection_sample(model, tok, tasks, p, reward_model=rm, stage=run.stage)
    write_sft(sft, run.out / "sft.parquet")
    write_rollouts(rollouts, ["accuracy", "format", "model"], run.out / "rollouts.parquet")
    ids = {r["id"] for r in rollouts}
    fmt = {t.id: t.answer_format for t in tasks}
    verified = all(is_correct(r["response"], r["answer"], fmt[r["parent_ids"][1]]) for r in sft)
    linked = all(r["parent_ids"][0] in ids for r in sft)
    metrics = {
        **stats,
        "keep_rate": stats["kept"] / max(stats["sampled"], 1),
        "sample_accuracy": stats["correct"] / max(stats["sampled"], 1),
    }
    return StageResult(
        metrics=metrics,
        metadata={"kept": Table(sft[:10])},
        checks=[
            CheckOutcome("only_verified", verified, "every kept response passes ops.tasks.is_correct"),
            CheckOutcome("provenance", linked, "every kept row's parent id is a rollout in rollouts.parquet"),
            CheckOutcome("non_empty", len(sft) > 0, f"{len(sft)} examples kept"),
        ],
    )


REJECTION = register(
    StageKind(
        name="rejection_sample",
        config=RejectionConfig,
        produces="sft_data",
        run=run,
        validate=validate_spec,
        pool="gpu",
        description="k samples per prompt, verified (all, best-of-k by a reward model, or the shortest), "
        "de-duplicated -> SFT data",
        checks=(
            CheckSpec("only_verified", "only verified-correct answers are kept", blocking=True),
            CheckSpec("provenance", "kept rows point at their rollouts", blocking=True),
            CheckSpec("non_empty", "at least one example kept", blocking=True),
        ),
    )
)
