"""Stage kind ``distill``: distil a teacher into a student at most half its size (``ops.posttrain.distill``).

Key design choice: the student comes from one of three places, chosen in the config: a random
``student`` architecture, a smaller pretrained model sharing the teacher's tokenizer (``student_init``),
or the teacher pruned by activation importance on the distillation data (``prune``, Minitron). Its size is
checked against the teacher's before any sampling or training, so an oversized student is a config error,
not a wasted run. Training is one ``train_distill`` call (logit KD with temperature, or SFT on teacher
samples); teacher and student are scored on the same held-out problems.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ops.train.optim import OptimConfig, Precision, optim_field, precision_field

from .architecture import arch_problems
from .posttrain import (
    MODEL,
    PostTrainError,
    accuracy,
    check_template,
    ckpt_every,
    eval_tasks,
    keep_last,
    keep_training_state,
    load_policy,
    params,
    training_examples,
    write_curve,
)
from .pretrain import ModelSpec
from .registry import (
    CheckOutcome,
    CheckSpec,
    StageConfig,
    StageKind,
    StageResult,
    StageRun,
    empty_ref_problems,
    ref,
    register,
)


class PruneConfig(BaseModel):
    """How the teacher is pruned into the student (``ops.posttrain.prune``); an axis left out is kept whole."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    layers: int | None = Field(None, ge=1, description="decoder layers kept (largest block influence)")
    d_model: int | None = Field(None, ge=1, description="residual channels kept (largest mean |RMSNorm(x)|)")
    ffn: int | None = Field(None, ge=1, description="MLP neurons kept per layer (largest mean activation)")
    calibration_batches: int = Field(8, ge=1, description="batches of the distillation data scored")


class DistillConfig(StageConfig):
    teacher: str = ref(*MODEL, description="the teacher model (its tokenizer is shared by the student)")
    data: list[str] = ref("tasks", "sft_data", "rollouts", many=True, description="examples to distil on")
    student: ModelSpec = Field(
        default_factory=lambda: ModelSpec(d_model=64, layers=2),
        description="random student architecture (pretrain's model block: arch, d_model, layers, heads, "
        "kv_heads, ...; d_model and layers required); not with student_init or prune",
    )
    student_init: str | None = ref(
        *MODEL,
        optional=True,
        description="start the student from this (smaller, pretrained) model instead of a random "
        "`student` architecture; it must use the teacher's tokenizer",
    )
    prune: PruneConfig | None = Field(
        None,
        description="start the student by pruning the teacher (Minitron): keep the most important "
        "layers / residual channels / MLP neurons by activations on the distillation data; "
        "instead of `student` or `student_init`",
    )
    mode: Literal["logit", "sequence"] = Field(
        "logit",
        description="'logit': KL to the teacher's softened "
        "distribution mixed with CE; 'sequence': SFT on teacher samples",
    )
    temperature: float = Field(2.0, gt=0, description="softening temperature T (loss scaled by T^2)")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the KD term; 1 - alpha on cross-entropy")
    steps: int = Field(300, ge=1, description="optimizer updates")
    lr: float = Field(2e-3, gt=0, description="peak learning rate")
    optim: OptimConfig = optim_field()
    precision: Precision = precision_field()
    batch_size: int = Field(32, ge=1, description="examples per update")
    seed: int = Field(0, description="student initialisation and order seed")
    eval_problems: int = Field(100, ge=0, description="held-out problems for teacher and student accuracy")
    max_new_tokens: int = Field(96, ge=1, description="generation budget (evaluation and teacher samples)")
    max_examples: int | None = Field(
        None,
        ge=1,
        description="distil on only the first N examples of `data`, in the order its stages are listed",
    )
    ckpt_every: int = ckpt_every(100)
    keep_last: int = keep_last()


def student_problems(cfg: DistillConfig) -> list[tuple[str, str]]:
    """A random ``student`` needs its size and a consistent architecture; beside ``student_init`` or ``prune``
    (which fix the student themselves) a non-default ``student`` would be ignored."""
    start = "student_init" if cfg.student_init else "prune" if cfg.prune is not None else None
    if start:
        default = DistillConfig.model_fields["student"].get_default(call_default_factory=True)
        if cfg.student == default:
            return []
        return [("student", f"not used with {start} (it fixes the student); remove it")]
    missing = [f for f in ("d_model", "layers") if getattr(cfg.student, f) is None]
    if missing:
        msg = f"required: a random student needs {' and '.join(missing)} (or use student_init or prune)"
        return [(f"student.{missing[0]}", msg)]
    return arch_problems(cfg.student, "student")


def validate(cfg, refs):
    errs = empty_ref_problems(cfg, "data") + student_problems(cfg)
    if cfg.prune is not None:
        if cfg.student_init:
            errs.append(
                ("prune", "give either prune (start from the pruned teacher) or student_init, not both")
            )
        if cfg.prune.layers is None and cfg.prune.d_model is None and cfg.prune.ffn is None:
            errs.append(("prune", "name at least one of layers, d_model, ffn to prune"))
    return errs


def initial_student(run: StageRun, teacher, tok) -> tuple[Any, int]:
    """The student before training and its parameter count, refused when it is more than half the
    teacher's size. A pruned student is built later (importance is measured on the data): ``None`` here."""
    from ops.model import build_model, count_params

    c: DistillConfig = run.config
    s_field = "student_init" if c.student_init else "prune" if c.prune else "student"
    student = None
    if c.prune:
        from ops.posttrain.prune import pruned_params

        try:
            n_s = pruned_params(teacher, **c.prune.model_dump(exclude={"calibration_batches"}))
        except ValueError as e:
            raise PostTrainError(f"stage {run.stage!r}, field 'prune': {e}") from None
    elif c.student_init:
        student, s_tok = load_policy(run, "student_init")
        if s_tok.get_vocab() != tok.get_vocab():
            raise PostTrainError(
                f"stage {run.stage!r}, field 'student_init': {run.input('student_init').path} uses a different "
                f"tokenizer than the teacher {run.input('teacher').path}; distillation needs a shared vocabulary"
            )
        n_s = count_params(student)
    else:
        try:
            arch = c.student.model_dump(mode="json", exclude_none=True)  # unset keys: build_model's defaults
            student = build_model(
                arch, len(tok), seed=c.seed, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
            )
        except ValueError as e:
            raise PostTrainError(f"stage {run.stage!r}, field 'student': {e}") from None
        n_s = count_params(student)
    n_t = count_params(teacher)
    if n_s * 2 > n_t:
        raise PostTrainError(
            f"stage {run.stage!r}, field {s_field!r}: {n_s:,} parameters is more than half the teacher's "
            f"{n_t:,} (limit {n_t // 2:,}); make d_model/layers{'/ffn' if c.prune else ''} smaller"
        )
    return student, n_s


def pruned_student(run: StageRun, teacher, tok, examples, sp, ev) -> tuple[Any, dict, dict]:
    """The teacher pruned by importance on the teacher's activations over the distillation data; returns
    the student, what was kept (``pruning.json``) and the pruning metrics."""
    from ops.posttrain.prune import importance_on, prune

    c: DistillConfig = run.config
    sizes = c.prune.model_dump(exclude={"calibration_batches"})
    imp = importance_on(teacher, tok, examples, sp, c.prune.calibration_batches)
    student, kept = prune(teacher, imp, **sizes)
    pruning = {"sizes": sizes, **kept, "block_influence": imp["block_influence"]}
    metrics = {
        "pruned_layers_kept": json.dumps(kept["layers"]),
        "block_influence": json.dumps([round(x, 4) for x in imp["block_influence"]]),
        "calibration_tokens": imp["tokens"],
        "accuracy_after_pruning": accuracy(student, tok, ev, 0, c.max_new_tokens).get("eval_accuracy"),
    }
    return student, pruning, metrics


def run(run: StageRun) -> StageResult:
    from ops.model import count_params, save_model
    from ops.posttrain.distill import DistillParams, teacher_samples, train_distill
    from ops.posttrain.sft import SFTParams

    c: DistillConfig = run.config
    check_template(run, "teacher")
    teacher, tok = load_policy(run, "teacher")
    student, n_s = initial_student(run, teacher, tok)
    n_t = count_params(teacher)
    examples = training_examples(run)[: c.max_examples]
    if c.mode == "sequence":
        examples = teacher_samples(
            teacher, tok, sorted({e.question for e in examples}), max_new_tokens=c.max_new_tokens
        )
    if not examples:
        raise PostTrainError(f"stage {run.stage!r}, field 'data': no examples")
    ev = eval_tasks(run, ("data",), c.eval_problems)
    sp = params(SFTParams, c)
    prune_md: dict[str, Any] = {}
    if c.prune:
        student, pruning, prune_md = pruned_student(run, teacher, tok, examples, sp, ev)
    dp = DistillParams(c.mode, c.temperature, c.alpha, sp)
    info = train_distill(
        student, teacher, tok, examples, dp, work_dir=run.work, fingerprint={"stage_version": run.version},
        log=run.log,
    )
    save_model(student, tok, run.out)
    if c.prune:  # which layers, channels and neurons of the teacher the student started from
        (run.out / "pruning.json").write_text(json.dumps(pruning))
    keep_training_state(run)
    t_acc = accuracy(teacher, tok, ev, 0, c.max_new_tokens)
    s_acc = accuracy(student, tok, ev, 0, c.max_new_tokens)
    # The share of the teacher's accuracy the student keeps is undefined when the teacher scores 0: reported
    # as missing (None) and the check fails, rather than a huge ratio.
    t_a = t_acc.get("eval_accuracy") or 0.0
    keep = s_acc.get("eval_accuracy", 0.0) / t_a if ev and t_a > 0 else None
    metrics = {
        "student_params": n_s,
        "teacher_params": n_t,
        "param_ratio": n_s / n_t,
        "teacher_accuracy": t_acc.get("eval_accuracy"),
        "student_accuracy": s_acc.get("eval_accuracy"),
        "accuracy_kept": keep,
        "final_loss": info["losses"][-1],
        "examples": info["examples"],
        "teacher_logits_cached": info["teacher_logits_cached"],
        **prune_md,
    }
    md = write_curve(run.out, info["curve"], ["loss", "kl", "ce"])
    return StageResult(metrics=metrics, metadata=md, checks=checks(n_s, n_t, keep))


def checks(n_s: int, n_t: int, keep: float | None) -> list[CheckOutcome]:
    return [
        CheckOutcome("student_smaller", n_s * 2 <= n_t, f"student {n_s} params vs teacher {n_t}"),
        CheckOutcome(
            "keeps_accuracy",
            keep is not None and keep >= 0.8,
            f"student keeps {keep:.2f} of the teacher's accuracy"
            if keep is not None
            else "undefined: the teacher scored 0 on the held-out problems",
        ),
    ]


DISTILL = register(
    StageKind(
        name="distill",
        config=DistillConfig,
        produces="model",
        run=run,
        validate=validate,
        pool="gpu",
        description="Distil a teacher into a smaller student (logit KD with temperature, or SFT on teacher samples)",
        checks=(
            CheckSpec("student_smaller", "student has at most half the teacher's parameters"),
            CheckSpec("keeps_accuracy", "student keeps >= 80% of the teacher's accuracy"),
        ),
    )
)
