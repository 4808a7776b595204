"""Stage kind ``reasoning_tasks``: verifiable problems with exact answers (a "tasks" artifact).

Key design choice: either the procedural arithmetic generator (seeded, disjoint train/eval splits) or a user
Parquet with ``question``/``answer`` columns; a user file is checked (columns, types, every answer a number)
by ``validate`` before any compute, and its size/mtime/content hash is part of the stage version. The task
set records its prompt template and answer format (``task_set.json``), which consuming stages apply unless
they override them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from .posttrain import AnswerFormatName, PromptTemplate
from .registry import (
    CheckOutcome,
    CheckSpec,
    StageConfig,
    StageKind,
    StageResult,
    StageRun,
    Table,
    ref,
    register,
)


class ReasoningTasksConfig(StageConfig):
    generator: Literal["arithmetic", "parquet"] = Field(
        "arithmetic", description="'arithmetic': procedural multi-step word problems; 'parquet': user files"
    )
    train: int = Field(4000, ge=0, description="number of generated training problems")
    eval: int = Field(300, ge=0, description="number of generated held-out problems (disjoint from train)")
    difficulties: list[int] = Field(
        [2],
        description="difficulty levels to cycle through (1: +/- small numbers, "
        "2: 2-3 ops of + - * / up to 99, 3, 4: longer and larger)",
    )
    seed: int = Field(0, description="generator seed; train and eval use separate streams of it")
    solution_style: Literal["plain", "verify", "recheck", "review", "longhand"] = Field(
        "plain",
        description="how generated solutions are written: 'plain': the chain of equations; 'verify': each step "
        "followed by a check of it, and slipped steps corrected after ' Wait,'; 'recheck': the chain, with some "
        "steps followed by ' Wait,' and a re-check by smaller sub-steps that confirms or corrects them; 'review': "
        "the chain, in some traces followed by ' Wait,', the problem's operations re-read in order and the chain "
        "written again from them, confirming it or correcting a skipped or misread step; 'longhand': the chain, "
        "in some traces followed by ' Wait,' and every step worked again digit by digit (one-digit facts with "
        "carries), confirming it or correcting a slipped result (' Wait' is the text evaluate's wait_text must "
        "be to force the same tokens)",
    )
    correction_rate: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="solution_style=verify or recheck: probability that a step is first written with a slipped "
        "result, then corrected after ' Wait,'; review: probability that a trace's first chain has a skipped or "
        "misread step, corrected by the review after ' Wait,'; longhand: probability that a trace's first chain "
        "has a slipped result (the chain carried on from it), corrected by the long-hand pass after ' Wait,'",
    )
    confirm_rate: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="solution_style=recheck: probability that a correct step is followed by ' Wait,' and a "
        "re-check that confirms it; review: probability that a right chain (of the traces without an error) is "
        "reviewed and confirmed (so a Wait does not mean 'change the result'); longhand: likewise, worked again "
        "in long hand and confirmed",
    )
    path: str | None = Field(
        None, description="generator=parquet: training Parquet with question/answer columns"
    )
    eval_path: str | None = Field(None, description="generator=parquet: held-out Parquet (same columns)")
    answer_format: AnswerFormatName = Field(
        "think_answer",
        description="answer format of this task set's responses (think_answer, boxed, gsm8k, last_number, exact)",
    )
    prompt_template: PromptTemplate = Field(
        "{question}", description="how a question becomes the user turn ({question} placeholder)"
    )
    exclude: list[str] = ref(
        "tasks",
        many=True,
        optional=True,
        description="task stages whose questions (train and eval) this stage never contains: a prompt set for "
        "RL or distillation that stays disjoint from another stage's held-out problems and SFT data",
    )


def _validate(cfg: ReasoningTasksConfig, refs: dict[str, str]) -> list[tuple[str, str]]:
    from ops.solutions import check_solution_style
    from ops.tasks import DIFFICULTY, check_task_parquet

    errs: list[tuple[str, str]] = []
    if cfg.generator == "parquet":
        if not cfg.path:
            errs.append(
                ("path", "generator 'parquet' needs a path to a Parquet file with question/answer columns")
            )
        for fld in ("path", "eval_path"):
            v = getattr(cfg, fld)
            if v:
                errs += [(fld, msg) for msg in check_task_parquet(Path(v).expanduser())]
        if cfg.solution_style != "plain" or cfg.correction_rate or cfg.confirm_rate:
            errs.append(
                (
                    "solution_style",
                    "generator 'parquet' uses the file's own solutions; solution_style, correction_rate and "
                    "confirm_rate apply to the arithmetic generator only",
                )
            )
    else:
        try:
            check_solution_style(cfg.solution_style, cfg.correction_rate, cfg.confirm_rate)
        except ValueError as e:
            fld, msg = str(e).split(": ", 1)
            errs.append((fld, msg))
        bad = [d for d in cfg.difficulties if d not in DIFFICULTY]
        if bad or not cfg.difficulties:
            errs.append(
                ("difficulties", f"unknown difficulty level(s) {bad}; choose from {sorted(DIFFICULTY)}")
            )
    return errs


# Fields only one generator reads: the arithmetic generator ignores the files, a user Parquet is used whole
# (every row, in file order), so sizes, difficulties and the seed would be ignored.
_ARITHMETIC_ONLY = ("train", "eval", "difficulties", "seed")
_PARQUET_ONLY = ("path", "eval_path")


def _validate_spec(cfg: ReasoningTasksConfig, refs: dict[str, str]) -> list[tuple[str, str]]:
    """:func:`_validate` (which the run repeats for a user Parquet), an empty user file, and the fields the
    generator would ignore, when set to anything but their defaults."""
    from .loaders import holds_no_rows

    errs = _validate(cfg, refs)
    if cfg.generator == "parquet":
        errs += [
            (f, f"{Path(v).expanduser()}: the file is empty (no rows)")
            for f in _PARQUET_ONLY
            if (v := getattr(cfg, f)) and not any(e[0] == f for e in errs) and holds_no_rows(v)
        ]
        errs += [
            (f, "applies to the arithmetic generator only (generator 'parquet' uses every row of its files); "
             "remove it")
            for f in _ARITHMETIC_ONLY
            if getattr(cfg, f) != ReasoningTasksConfig.model_fields[f].default
        ]
    else:
        errs += [
            (f, "applies to generator 'parquet' only (generator is 'arithmetic'); set generator: parquet, or "
             "use a task_file stage")
            for f in _PARQUET_ONLY
            if getattr(cfg, f) is not None
        ]
    return errs


def _fingerprint(cfg: ReasoningTasksConfig):
    import hashlib

    out = {}
    for fld in ("path", "eval_path"):
        v = getattr(cfg, fld)
        if v and Path(v).expanduser().is_file():
            p = Path(v).expanduser()
            out[fld] = {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    return out


def _excluded_questions(run: StageRun) -> set[str]:
    from ops.tasks import TaskFileError, read_tasks

    out: set[str] = set()
    for a in run.inputs.get("exclude", []):
        for split in ("train", "eval"):
            p = a.path / f"{split}.parquet"
            try:
                out |= {t.question for t in read_tasks(p)}
            except Exception as e:  # noqa: BLE001
                raise TaskFileError(f"stage {run.stage!r}, field 'exclude': cannot read {p} ({e})") from e
    return out


def _non_empty(cfg: ReasoningTasksConfig, train: list, ev: list) -> tuple[bool, str]:
    """Every split the stage asks for holds a problem: the training split (always, from a user Parquet), the
    eval split when ``eval_path`` or ``eval`` > 0 asks for one; an eval-only set (``train: 0``) is a benchmark."""
    wants_train = cfg.generator == "parquet" or cfg.train > 0
    wants_eval = bool(cfg.eval_path) if cfg.generator == "parquet" else cfg.eval > 0
    empty = [name for name, want, rows in (("training", wants_train, train), ("eval", wants_eval, ev))
             if want and not rows]
    counts = f"{len(train)} training / {len(ev)} eval problems"
    return not empty and bool(train or ev), counts + (f" (empty: {', '.join(empty)})" if empty else "")


def _run(run: StageRun) -> StageResult:
    from ops.tasks import (
        TaskFileError,
        TaskSetFormat,
        load_task_parquet,
        make_splits,
        write_task_set_format,
        write_tasks,
    )

    cfg: ReasoningTasksConfig = run.config
    excluded = _excluded_questions(run)
    dropped = 0
    if cfg.generator == "parquet":
        errs = _validate(cfg, {})
        if errs:
            raise TaskFileError(f"stage {run.stage!r}: " + "; ".join(f"{f}: {m}" for f, m in errs))
        train = load_task_parquet(Path(cfg.path).expanduser())
        ev = load_task_parquet(Path(cfg.eval_path).expanduser()) if cfg.eval_path else []
        if not cfg.eval_path:
            run.log("no eval_path: the eval split is empty (evaluate refuses this stage's tasks)")
        n = len(train) + len(ev)
        train = [t for t in train if t.question not in excluded]
        ev = [t for t in ev if t.question not in excluded]
        dropped = n - len(train) - len(ev)
    else:
        train, ev = make_splits(
            cfg.train,
            cfg.eval,
            cfg.seed,
            cfg.difficulties,
            exclude=excluded,
            solution_style=cfg.solution_style,
            correction_rate=cfg.correction_rate,
            confirm_rate=cfg.confirm_rate,
        )
    if excluded:
        run.log(f"excluding {len(excluded)} questions of {run.config.exclude}; {dropped} user rows dropped")
    write_tasks(train, run.out / "train.parquet")
    write_tasks(ev, run.out / "eval.parquet")
    write_task_set_format(run.out, TaskSetFormat(cfg.answer_format, cfg.prompt_template))
    overlap = len({t.question for t in train} & {t.question for t in ev})
    run.log(f"{len(train)} train / {len(ev)} eval problems, overlap {overlap}")
    by_d: dict[int, int] = {}
    for t in train:
        by_d[t.difficulty] = by_d.get(t.difficulty, 0) + 1
    return StageResult(
        metrics={"train": len(train), "eval": len(ev), "overlap": overlap, "excluded_rows_dropped": dropped},
        metadata={
            "samples": Table(
                [
                    {
                        "id": t.id,
                        "question": t.question,
                        "solution": t.solution,
                        "answer": t.answer,
                        "difficulty": t.difficulty,
                    }
                    for t in (train or ev)[:10]
                ]
            ),
            "by_difficulty": Table([{"difficulty": k, "train": v} for k, v in sorted(by_d.items())]),
        },
        checks=[
            CheckOutcome("splits_disjoint", overlap == 0, f"{overlap} questions in both splits"),
            CheckOutcome("non_empty", *_non_empty(cfg, train, ev)),
        ],
    )


REASONING_TASKS = register(
    StageKind(
        name="reasoning_tasks",
        config=ReasoningTasksConfig,
        produces="tasks",
        run=_run,
        description="Verifiable reasoning problems (generated arithmetic or a user Parquet) with exact answers",
        checks=(
            CheckSpec("splits_disjoint", "no question is in both train and eval", blocking=True),
            CheckSpec("non_empty", "every split asked for holds a problem (train: 0 makes an eval-only set)", blocking=True),
        ),
        validate=_validate_spec,
        fingerprint=_fingerprint,
    )
)
