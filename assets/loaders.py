"""Stage kinds ``task_file``, ``chat_file`` and ``preference_file``: a user's Parquet/JSONL data imported as a
versioned artifact (``tasks``, ``sft_data``, ``pairs``) with row-level provenance (``ops.loaders``).

Key design choice: the version is the file's content, not its path. ``path``/``eval_path`` are left out of
the version (run options) and the sha256 of each file's bytes goes in instead (the kind's fingerprint), so
moving a file reuses its artifact and changing one byte re-versions it and everything downstream. A missing
file or column is a compile-time error naming the file, stage and field; bad rows (missing role, empty
content, unparsable answer, missing value) are counted, shown in the metadata, and the stage refuses the
file -- naming file, row and column -- when their share exceeds ``max_bad_fraction``. Every output row
keeps ``source_file`` and ``source_row``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from .posttrain import AnswerFormatName, PromptTemplate
from .registry import (
    CheckOutcome,
    CheckSpec,
    Json,
    StageConfig,
    StageKind,
    StageResult,
    StageRun,
    Table,
    register,
    run_option,
)


def _path_field(required: bool, what: str):
    return run_option(
        ... if required else None,
        description=f"{what}: a .parquet, .jsonl or .json file (JSON may be .gz), identified by its content "
        "(moving it changes nothing; changing it re-versions this stage and its descendants)",
    )


def _bad_fraction_field():
    return Field(
        0.01, ge=0, le=1, description="refuse the file when more than this share of its rows is bad"
    )


class _FileConfig(StageConfig):
    path: str = _path_field(True, "the data file")
    id_column: str | None = Field(None, description="column of stable row ids; default: <file stem>-<row>")
    max_bad_fraction: float = _bad_fraction_field()


class TaskFileConfig(_FileConfig):
    eval_path: str | None = _path_field(False, "the held-out split, same columns (default: none)")
    question_column: str = Field("question", description="column of the question (MATH: problem)")
    answer_column: str = Field(
        "answer", description="column of the answer, or of the worked solution holding it (see answer_from)"
    )
    solution_column: str | None = Field(
        None, description="answer_from=column: optional column of worked solutions"
    )
    answer_from: Literal["gsm8k", "boxed", "column"] = Field(
        "column",
        description="gsm8k: the answer column is 'worked solution #### n' (split into solution and answer); "
        "boxed: it is a worked solution whose last \\boxed{} is the answer (MATH's solution column); "
        "column: it is the final answer itself",
    )
    answer_format: AnswerFormatName = Field(
        None,
        description="answer format responses to these tasks are scored in; default: gsm8k for answer_from "
        "gsm8k, boxed for boxed, think_answer for column",
    )
    prompt_template: PromptTemplate = Field(
        None, description="how a question becomes the user turn ({question} placeholder); default: as is"
    )

    def resolved_format(self) -> str:
        return self.answer_format or {"gsm8k": "gsm8k", "boxed": "boxed"}.get(self.answer_from, "think_answer")

    def columns(self) -> dict[str, str | None]:
        return {"question_column": self.question_column, "answer_column": self.answer_column,
                "solution_column": self.solution_column, "id_column": self.id_column}


class ChatFileConfig(_FileConfig):
    messages_column: str | None = Field(
        None, description="column of chat message lists ({role, content}, or ShareGPT's {from, value}); "
        "default 'messages' unless prompt/response columns are given"
    )
    prompt_column: str | None = Field(None, description="column of user prompts (with response_column)")
    response_column: str | None = Field(None, description="column of assistant responses (with prompt_column)")
    system_column: str | None = Field(None, description="optional column of system prompts (with prompt_column)")
    turns: Literal["all", "last"] = Field(
        "all", description="all: every assistant turn answering a user turn is an example; last: the final one"
    )

    def messages(self) -> str | None:
        return self.messages_column or (None if (self.prompt_column or self.response_column) else "messages")

    def columns(self) -> dict[str, str | None]:
        return {"messages_column": self.messages(), "prompt_column": self.prompt_column,
                "response_column": self.response_column, "system_column": self.system_column,
                "id_column": self.id_column}


class PreferenceFileConfig(_FileConfig):
    prompt_column: str | None = Field(
        "prompt", description="column of prompts; null: the user turn of the chosen/rejected message lists"
    )
    chosen_column: str = Field("chosen", description="column of preferred responses (text or message list)")
    rejected_column: str = Field(
        "rejected", description="column of dispreferred responses (text or message list)"
    )

    def columns(self) -> dict[str, str | None]:
        return {"prompt_column": self.prompt_column, "chosen_column": self.chosen_column,
                "rejected_column": self.rejected_column, "id_column": self.id_column}


# ---- validation and identity ----------------------------------------------------------------------------
def _files(cfg) -> list[tuple[str, str]]:
    return [(f, getattr(cfg, f)) for f in ("path", "eval_path") if getattr(cfg, f, None)]


# what a missing default column usually means: the file is in another common layout
_HINTS = {
    (PreferenceFileConfig, "prompt_column"): "; prompt_column: null takes the prompt from the chosen/rejected "
    "message lists' user turn (UltraFeedback's layout)",
    (ChatFileConfig, "messages_column"): "; ShareGPT files: messages_column: conversations; or give "
    "prompt_column and response_column",
}


def validate(cfg, refs=None) -> list[tuple[str, str]]:
    """Missing or unreadable files and missing columns, per field; the chat column modes."""
    from ops.loaders import MissingInput, file_problems

    errs: list[tuple[str, str]] = []
    if isinstance(cfg, ChatFileConfig):
        if cfg.messages_column and (cfg.prompt_column or cfg.response_column):
            errs.append(("messages_column", "give either a messages column or prompt/response columns"))
        if bool(cfg.prompt_column) != bool(cfg.response_column):
            fld = "response_column" if cfg.prompt_column else "prompt_column"
            errs.append((fld, "prompt_column and response_column go together"))
        if cfg.system_column and not cfg.prompt_column:
            errs.append(("system_column", "a system column goes with prompt/response columns"))
    cols = {k: v for k, v in cfg.columns().items() if v}
    for fld, path in _files(cfg):
        for problem in file_problems(path, cols):
            where, msg = problem
            at = fld if where == "path" else where
            msg += _HINTS.get((type(cfg), at), "")
            errs.append(MissingInput(at, msg) if isinstance(problem, MissingInput) else (at, msg))
    return errs


def holds_no_rows(path: str) -> bool:
    """Whether a data file that can be read holds no row: a Parquet footer's count, a JSON-lines file with no
    line but blanks (read up to its first row only); False for a missing or unreadable file."""
    from ops.loaders import file_kind, open_bytes, read_rows

    p = Path(path).expanduser()
    try:
        kind = file_kind(p)
        if kind == "parquet":
            import pyarrow.parquet as pq

            return pq.read_metadata(p).num_rows == 0
        if kind == "json":
            return not read_rows(p)
        with open_bytes(p) as fh:
            return not any(line.strip() for line in fh)
    except Exception:  # noqa: BLE001 - a missing or unreadable file is validate's to report
        return False


def validate_spec(cfg, refs=None) -> list[tuple[str, str]]:
    """:func:`validate` (which the run repeats), with an empty file reported once, as empty, instead of as
    each mapped column missing from it."""
    empty = [(fld, path) for fld, path in _files(cfg) if holds_no_rows(path)]
    rest = cfg.model_copy(update={fld: None for fld, _ in empty})
    errs = [(fld, f"{Path(p).expanduser()}: the file is empty (no rows)") for fld, p in empty]
    return errs + validate(rest)


def fingerprint(cfg):
    """The content of each file (sha256 and size), never its path."""
    from ops.loaders import file_digest

    out = {}
    for fld, path in _files(cfg):
        p = Path(path).expanduser()
        out[fld] = {"sha256": file_digest(p), "size": p.stat().st_size} if p.is_file() else "missing"
    return out


def _refuse_bad_input(run: StageRun) -> None:
    from ops.loaders import LoaderError

    errs = validate(run.config)
    if errs:
        raise LoaderError("; ".join(f"stage {run.stage!r}, field {f!r}: {m}" for f, m in errs))


def _load(run: StageRun, path: str, convert) -> tuple[list[dict], list, int]:
    """``(rows, bad rows, rows read)`` of one file through ``convert(rows, file name)``, refused when too many
    rows are bad."""
    from ops.loaders import check_bad_share, read_rows

    p = Path(path).expanduser()
    raw = read_rows(p)
    rows, bad = convert(raw, p.name)
    where = f"stage {run.stage!r}, field 'path' ({p})"
    check_bad_share(len(raw), bad, run.config.max_bad_fraction, where)
    run.log(f"{p.name}: {len(raw)} rows, {len(bad)} bad, {len(rows)} kept")
    return rows, bad, len(raw)


def _result(run: StageRun, kept: int, read: int, bad: list, samples: list[dict], extra=None) -> StageResult:
    ident = fingerprint(run.config)
    source = {f: {"file": Path(p).name, **ident[f]} for f, p in _files(run.config)}
    return StageResult(
        metrics={"rows": read, "kept": kept, "bad_rows": len(bad), "bad_fraction": len(bad) / max(read, 1),
                 **(extra or {})},
        metadata={
            "source": Json(source),
            "bad_rows": Table([b.record() for b in bad[:20]]),
            "samples": Table([{k: str(v)[:300] for k, v in r.items()} for r in samples[:5]]),
        },
        checks=[CheckOutcome("non_empty", kept > 0, f"{kept} rows kept of {read}")],
    )


NON_EMPTY = (CheckSpec("non_empty", "at least one usable row", blocking=True),)


# ---- task_file ---------------------------------------------------------------------------------------------
def run_task_file(run: StageRun) -> StageResult:
    from ops.loaders import task_rows, write_rows
    from ops.tasks import TASK_SCHEMA, TaskSetFormat, write_task_set_format

    c: TaskFileConfig = run.config
    _refuse_bad_input(run)
    fmt = c.resolved_format()

    def convert(split):
        return lambda raw, name: task_rows(
            raw, name, question=c.question_column, answer=c.answer_column, solution=c.solution_column,
            id_column=c.id_column,
            answer_from=c.answer_from, require_number=c.answer_from == "gsm8k" or fmt == "last_number",
            normalise=fmt != "exact", prefix=f"{split}-{Path(name).stem}",
        )

    train, bad, read = _load(run, c.path, convert("train"))
    ev, ev_bad, ev_read = _load(run, c.eval_path, convert("eval")) if c.eval_path else ([], [], 0)
    write_rows(train, run.out / "train.parquet", TASK_SCHEMA)
    write_rows(ev, run.out / "eval.parquet", TASK_SCHEMA)
    write_task_set_format(run.out, TaskSetFormat(fmt, c.prompt_template or "{question}"))
    overlap = len({t["question"] for t in train} & {t["question"] for t in ev})
    res = _result(run, len(train) + len(ev), read + ev_read, bad + ev_bad, train,
                  {"train": len(train), "eval": len(ev), "overlap": overlap, "answer_format": fmt})
    res.checks.append(CheckOutcome("splits_disjoint", overlap == 0, f"{overlap} questions in both splits"))
    return res


TASK_FILE = register(
    StageKind(
        name="task_file",
        config=TaskFileConfig,
        produces="tasks",
        run=run_task_file,
        description="Tasks from a user Parquet/JSONL (GSM8K, MATH or plain answers) with row provenance",
        checks=(*NON_EMPTY, CheckSpec("splits_disjoint", "no question in both train and eval")),
        validate=validate_spec,
        fingerprint=fingerprint,
    )
)


# ---- chat_file ---------------------------------------------------------------------------------------------
def run_chat_file(run: StageRun) -> StageResult:
    from ops.loaders import chat_rows, sft_schema, write_rows

    c: ChatFileConfig = run.config
    _refuse_bad_input(run)
    rows, bad, read = _load(
        run,
        c.path,
        lambda raw, name: chat_rows(
            raw, name, messages=c.messages(), prompt=c.prompt_column, response=c.response_column,
            system=c.system_column,
            id_column=c.id_column, turns=c.turns, prefix=Path(name).stem,
        ),
    )
    write_rows(rows, run.out / "sft.parquet", sft_schema())
    multi = sum(1 for r in rows if r["context"] != "[]")
    return _result(run, len(rows), read, bad, rows, {"examples": len(rows), "with_context": multi})


CHAT_FILE = register(
    StageKind(
        name="chat_file",
        config=ChatFileConfig,
        produces="sft_data",
        run=run_chat_file,
        description="Chat SFT data from a user Parquet/JSONL (messages lists or prompt/response) with provenance",
        checks=NON_EMPTY,
        validate=validate_spec,
        fingerprint=fingerprint,
    )
)


# ---- preference_file ---------------------------------------------------------------------------------------
def run_preference_file(run: StageRun) -> StageResult:
    from ops.loaders import pair_rows, pairs_schema, write_rows

    c: PreferenceFileConfig = run.config
    _refuse_bad_input(run)
    rows, bad, read = _load(
        run,
        c.path,
        lambda raw, name: pair_rows(
            raw, name, prompt=c.prompt_column, chosen=c.chosen_column, rejected=c.rejected_column,
            id_column=c.id_column,
            prefix=Path(name).stem,
        ),
    )
    write_rows(rows, run.out / "pairs.parquet", pairs_schema())
    return _result(run, len(rows), read, bad, rows, {"pairs": len(rows)})


PREFERENCE_FILE = register(
    StageKind(
        name="preference_file",
        config=PreferenceFileConfig,
        produces="pairs",
        run=run_preference_file,
        description="Preference pairs from a user Parquet/JSONL (text or UltraFeedback-style message lists)",
        checks=NON_EMPTY,
        validate=validate_spec,
        fingerprint=fingerprint,
    )
)
