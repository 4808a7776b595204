"""Stage kind ``evaluate``: score model stages on reasoning tasks (greedy, pass@k, maj@k, budget forcing,
Wait extension), bits per byte on held-out text, and a decontamination audit along each model's lineage.

Key design choice: the kind is partitioned by model (``partition_field="models"``): the factory runs it once
per referenced model stage with only that model as input, so a partition's version depends on that model,
the tasks and this config only -- adding a model to the list computes one new partition and reuses the rest.
Compute lives in ``ops/eval``; this module resolves inputs and lineage and writes the artifact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from ops.eval.budget import check_sweep

from .posttrain import AnswerFormatName, PromptTemplate, answer_format_field, prompt_template_field
from .registry import (
    CheckOutcome,
    CheckSpec,
    Image,
    InputArtifact,
    Json,
    Markdown,
    StageConfig,
    StageKind,
    StageResult,
    StageRun,
    Table,
    empty_ref_problems,
    ref,
    register,
)

# artifact types whose rows a model may have been trained on, and the Parquet files holding them
TRAINING_FILES = {
    "documents": ("documents.parquet",),
    "tasks": ("train.parquet",),
    "sft_data": ("sft.parquet",),
    "rollouts": ("rollouts.parquet",),
    "pairs": ("pairs.parquet",),
}


class EvaluateConfig(StageConfig):
    """Evaluate every model stage in ``models`` (one partition each) on the eval split of ``tasks``."""

    models: list[str] = ref(
        "model",
        many=True,
        description="Model stages to evaluate; one Dagster partition "
        "per model, so adding one computes only the new partition.",
    )
    tasks: list[str] = ref(
        "tasks",
        many=True,
        description="Task stages whose eval.parquet (id, question, "
        "answer) is scored; answers are parsed by ops.tasks.",
    )
    corpus: str | None = ref(
        "documents",
        optional=True,
        description="Optional documents stage for bits per "
        "byte; point it at text the models did not train on (e.g. a held-out crawl).",
    )
    max_items: int | None = Field(
        100, ge=1, description="At most this many eval items per task (file order); null for all."
    )
    samples: int = Field(
        4, ge=0, description="Sampled completions per item (k of pass@k and maj@k); 0 skips sampling."
    )
    temperature: float = Field(
        0.8, gt=0, description="Sampling temperature of the k samples (greedy runs use argmax)."
    )
    budgets: list[int] = Field(
        default_factory=list,
        description="Budget-forcing sweep: greedy runs with "
        "thinking capped at each number of tokens, then </think><answer> is forced.",
    )
    wait_extensions: list[int] = Field(
        default_factory=list,
        description="Wait sweep: greedy runs where a "
        "self-emitted </think> is replaced by wait_text up to N times.",
    )
    wait_text: str = Field(
        "Wait", min_length=1, description="Text appended instead of </think> by Wait extension (s1)."
    )
    max_think_tokens: int = Field(
        96,
        ge=1,
        description="Thinking cap for unbudgeted and Wait runs (budgets above it are clipped to it).",
    )
    max_answer_tokens: int = Field(
        16, ge=1, description="Tokens allowed after </think> before the answer is cut off."
    )
    batch_size: int = Field(64, ge=1, description="Prompts decoded together (KV-cached batch).")
    bpb_docs: int = Field(
        64,
        ge=1,
        description="Documents of the corpus scored for bits per byte (a deterministic sample by id).",
    )
    bpb_max_tokens: int = Field(256, ge=8, description="Tokens scored per document (from its start).")
    audit_ngram: int = Field(
        13, ge=3, description="Word n-gram size of the decontamination audit (GPT-3 used 13)."
    )
    audit_threshold: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Flag an eval item when at least this share "
        "of its n-grams occurs in one upstream training dataset.",
    )
    language: str = Field(
        "en",
        description="Target language of language consistency (script share of "
        "reasoning words, as the R1 language reward).",
    )
    seed: int = Field(0, description="Seed of sampling and of the bpb document sample.")
    answer_format: AnswerFormatName = answer_format_field()
    prompt_template: PromptTemplate = prompt_template_field()

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v: list[int]) -> list[int]:
        return check_sweep("budgets", v, 0, "thinking tokens")

    @field_validator("wait_extensions")
    @classmethod
    def _waits(cls, v: list[int]) -> list[int]:
        return check_sweep("wait_extensions", v, 1, "(0 is the plain greedy run)")


# ---- validation -------------------------------------------------------------------------------------------
_SWEEP_NEEDS_TAGS = (
    "budget forcing and Wait extension act on <think>...</think>, so they need the think_answer answer "
    "format; drop the sweep or evaluate a think_answer task set"
)


def _answerless_reason(kind_name: str, cfg: Any) -> str | None:
    """Why a task stage's config yields tasks without answers, or None. Knows the conventions of task kinds:
    an answer-column setting explicitly emptied, or a user Parquet lacking the answer column."""
    if cfg is None:
        return None
    data = cfg.model_dump() if hasattr(cfg, "model_dump") else dict(cfg)
    for key in ("answer_column", "answer_field", "answers"):
        if key in data and data[key] in (None, "", False):
            return f"stage uses {kind_name} with {key}={data[key]!r}: its tasks have no answers to score"
    col = data.get("answer_column") or "answer"
    for key in ("path", "parquet", "file", "source_path", "eval_path"):
        p = data.get(key)
        if isinstance(p, str) and p.endswith(".parquet") and Path(p).is_file():
            import pyarrow.parquet as pq

            names = pq.read_schema(p).names
            if col not in names:
                return f"{p}: user task file has no answer column {col!r} (has {names})"
    return None


def _task_set_format(cfg: Any) -> str:
    """The answer format a task stage's config gives its task set (``think_answer`` when unknown; the run
    checks the recorded format again)."""
    resolved = getattr(cfg, "resolved_format", None)
    return resolved() if callable(resolved) else (getattr(cfg, "answer_format", None) or "think_answer")


def validate(
    config: EvaluateConfig, kinds: dict[str, str], configs: dict[str, Any] | None = None
) -> list[tuple[str, str]]:
    """Refuse an empty ``models``, non-task stages in ``tasks``, task stages known to carry no answers and an
    unknown ``language``.

    ``kinds`` maps each referenced stage to its kind name; ``configs`` (when the compiler passes it) maps
    each to its config so answerless task sources are refused before anything runs.
    """
    from ops.rewards import check_language

    from .registry import load_kinds

    known = load_kinds()
    problems = empty_ref_problems(config, "models")
    for name in config.models:
        k = known.get(kinds.get(name, ""))
        if k is not None and k.produces != "model":
            problems.append(
                ("models", f"stage {name!r} is a {k.name!r} stage producing {k.produces!r}, not a model")
            )
    for name in config.tasks:
        k = known.get(kinds.get(name, ""))
        if k is not None and k.produces != "tasks":
            problems.append(
                ("tasks", f"stage {name!r} is a {k.name!r} stage producing {k.produces!r}, not tasks")
            )
            continue
        why = _answerless_reason(kinds.get(name, "?"), (configs or {}).get(name))
        if why:
            problems.append(("tasks", f"task stage {name!r} cannot be evaluated: {why}"))
    fmts = {config.answer_format} if config.answer_format else {
        _task_set_format((configs or {}).get(n)) for n in config.tasks
    }
    if (config.budgets or config.wait_extensions) and fmts - {"think_answer"}:
        problems.append(("budgets" if config.budgets else "wait_extensions", _SWEEP_NEEDS_TAGS))
    if not config.tasks and config.corpus is None:
        problems.append(("tasks", "nothing to evaluate: give tasks and/or a corpus"))
    try:
        check_language(config.language)
    except ValueError as e:
        problems.append(("language", str(e)))
    return problems


# ---- inputs ---------------------------------------------------------------------------------------------------
def _read_eval_items(run: StageRun, art: InputArtifact, max_items: int | None):
    import pyarrow.parquet as pq

    from ops.eval.evaluate import EvalItem

    f = art.path / "eval.parquet"
    where = f"stage {run.stage!r}, field 'tasks' ({art.stage!r})"
    if not f.is_file():
        raise ValueError(f"{where}: {f} is missing; a tasks artifact has train.parquet + eval.parquet")
    t = pq.read_table(f)
    for col in ("id", "question", "answer"):
        if col not in t.column_names:
            raise ValueError(
                f"{where}: {f} has no {col!r} column (has {t.column_names}); evaluation needs "
                "id, question and answer"
            )
    rows = t.select(["id", "question", "answer"]).to_pylist()
    if not rows:
        # an evaluation over zero items would store empty metrics that read like a result
        raise ValueError(
            f"{where}: {f} has no items; the task stage has an empty held-out split "
            "(a user Parquet task stage takes its held-out problems from eval_path)"
        )
    if max_items is not None:
        rows = rows[:max_items]
    bad = [r["id"] for r in rows if r["answer"] is None or not str(r["answer"]).strip()]
    if bad:
        raise ValueError(
            f"{where}: {f} has {len(bad)} item(s) without an answer (e.g. {bad[:3]}); "
            "tasks without answers cannot be scored"
        )
    from ops.answers import render_prompt
    from ops.tasks import read_task_set_format

    fmt = read_task_set_format(art.path).override(run.config.answer_format, run.config.prompt_template)
    if fmt.answer_format != "think_answer" and (run.config.budgets or run.config.wait_extensions):
        raise ValueError(f"{where}: {_SWEEP_NEEDS_TAGS} (this task set is scored as {fmt.answer_format!r})")
    return [
        EvalItem(
            art.stage,
            str(r["id"]),
            str(r["question"]),
            str(r["answer"]),
            render_prompt(fmt.prompt_template, str(r["question"])),
            fmt.answer_format,
        )
        for r in rows
    ]


def _corpus_docs(run: StageRun, cfg: EvaluateConfig) -> tuple[str | None, list[tuple[str, str]]]:
    arts = run.inputs.get("corpus") or []
    if not arts:
        return None, []
    import pyarrow.parquet as pq

    from ops.fingerprint import stable_hash

    art = arts[0]
    f = art.path / "documents.parquet"
    if not f.is_file():
        raise ValueError(f"stage {run.stage!r}, field 'corpus' ({art.stage!r}): {f} is missing")
    t = pq.read_table(f, columns=["id", "text"])
    rows = [(str(i), s) for i, s in zip(t.column("id").to_pylist(), t.column("text").to_pylist()) if s]
    rows.sort(key=lambda r: stable_hash([cfg.seed, r[0]]))  # deterministic sample, independent of file order
    return art.stage, rows[: cfg.bpb_docs]


def training_sources(run: StageRun, model: InputArtifact):
    """Every training dataset in the lineage of ``model``: its manifests' ``inputs``, transitively, resolved
    through ``run.upstream`` (the whole lineage, filled by the factory and by ``run_kind``)."""
    from ops.eval.audit import TrainingSource

    by_version = {a.version: a for a in run.upstream.values()}
    seen: set[str] = set()
    sources = []
    stack = [model.manifest]
    while stack:
        m = stack.pop()
        for arts in (m.get("inputs") or {}).values():
            for ref_ in arts:
                v = ref_.get("version")
                if not v or v in seen:
                    continue
                seen.add(v)
                up = by_version.get(v)
                if up is None:
                    run.log(f"audit: lineage artifact {ref_} not in the store; skipped")
                    continue
                path, manifest = up.path, up.manifest
                produces = manifest.get("produces", "")
                files = tuple(path / n for n in TRAINING_FILES.get(produces, ()) if (path / n).is_file())
                if files:
                    sources.append(TrainingSource(f"{ref_.get('stage')}@{v[:8]}", files))
                stack.append(manifest)
    return sources


# ---- run ----------------------------------------------------------------------------------------------------
def run(r: StageRun) -> StageResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ops.eval import evaluate as E
    from ops.eval.budget import NO_THINK_TOKENS, has_think_tokens
    from ops.model import load_model
    from ops.tokenizer import load_tokenizer

    cfg: EvaluateConfig = r.config
    model_art = r.input("models")
    s = E.EvalSettings(
        samples=cfg.samples,
        temperature=cfg.temperature,
        budgets=list(cfg.budgets),
        wait_extensions=list(cfg.wait_extensions),
        max_think_tokens=cfg.max_think_tokens,
        max_answer_tokens=cfg.max_answer_tokens,
        wait_text=cfg.wait_text,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        language=cfg.language,
        bpb_max_tokens=cfg.bpb_max_tokens,
    )
    items = [it for art in r.inputs.get("tasks") or [] for it in _read_eval_items(r, art, cfg.max_items)]
    corpus_stage, docs = _corpus_docs(r, cfg)

    tok = load_tokenizer(model_art.path)
    sweep = "budgets" if cfg.budgets else "wait_extensions" if cfg.wait_extensions else None
    if sweep and not has_think_tokens(tok):  # refused before any generation
        raise ValueError(f"stage {r.stage!r}, field {sweep!r}: model {model_art.stage!r} {NO_THINK_TOKENS}")
    model = load_model(model_art.path)
    records = (
        E.generate_records(
            model, tok, items, s, model_stage=model_art.stage, model_version=model_art.version, log=r.log
        )
        if items
        else []
    )
    summary = E.summarize(records, s) if records else {"overall": {}, "tasks": {}}
    summary.update(
        {
            "model_stage": model_art.stage,
            "model_version": model_art.version,
            "samples": cfg.samples,
            "n_items": len(items),
        }
    )
    if docs:
        bpb, bpb_rows = E.bits_per_byte(model, tok, docs, s)
        bpb["corpus_stage"] = corpus_stage
        summary["bits_per_byte"] = bpb
        pq.write_table(pa.Table.from_pylist(bpb_rows), r.out / "bpb.parquet", compression="zstd")

    summary["audit"], flagged = _audit(r, model_art, items, records)
    pq.write_table(
        pa.Table.from_pylist(records, schema=E.record_schema()), r.out / "records.parquet", compression="zstd"
    )
    (r.out / "metrics.json").write_text(json.dumps(summary, indent=1, default=str))
    metadata = _metadata(r, model_art, summary, records)
    return StageResult(
        metrics=E.flat_metrics(summary),
        metadata=metadata,
        checks=_checks(records, items, flagged),
        tokens=sum(x["response_tokens"] for x in records),
    )


def _audit(r: StageRun, model_art: InputArtifact, items, records) -> tuple[dict[str, Any], list[dict]]:
    """The decontamination audit along the model's lineage (written to ``audit.parquet``): its summary
    section and the flagged items."""
    from ops.eval import evaluate as E
    from ops.eval.audit import AuditItem, audit, write_hits

    cfg: EvaluateConfig = r.config
    sources = training_sources(r, model_art)
    hits = (
        audit(
            [AuditItem(it.task, it.id, it.question) for it in items],
            sources,
            n=cfg.audit_ngram,
            threshold=cfg.audit_threshold,
        )
        if items
        else []
    )
    flagged = [
        {"task": h.task, "item_id": h.item_id, "overlap": round(h.overlap, 4), "matched": list(h.matched)}
        for h in hits
        if h.flagged
    ]
    section = {
        "ngram": cfg.audit_ngram,
        "threshold": cfg.audit_threshold,
        "datasets": [src.stage for src in sources],
        "n_items": len(hits),
        "n_flagged": len(flagged),
        "flagged": flagged,
        "by_contamination": E.accuracy_by_contamination(
            records, {(f["task"], f["item_id"]) for f in flagged}, cfg.samples
        ),
    }
    write_hits(hits, r.out / "audit.parquet")
    return section, flagged


def _metadata(r: StageRun, model_art: InputArtifact, summary: dict[str, Any], records) -> dict[str, Any]:
    from ops.eval import evaluate as E

    metadata: dict[str, Any] = {"summary": Markdown(E.summary_markdown(summary)), "metrics": Json(summary)}
    if summary.get("budget_curve") or summary.get("wait_curve") or summary.get("unbudgeted"):
        E.budget_curve_png(
            summary, f"{model_art.stage}: accuracy vs thinking tokens", r.out / "budget_curve.png"
        )
        metadata["budget_curve"] = Image("budget_curve.png")
    greedy = [x for x in records if x["mode"] == "greedy"][:8]
    if greedy:
        metadata["samples"] = Table(
            [
                {
                    "item": x["item_id"],
                    "completion": x["completion"][:200],
                    "answer": x["extracted_answer"],
                    "gold": x["gold_answer"],
                    "correct": x["correct"],
                }
                for x in greedy
            ]
        )
    return metadata


def _checks(records: list[dict[str, Any]], items, flagged: list[dict[str, Any]]) -> list[CheckOutcome]:
    greedy_ids = {(x["task"], x["item_id"]) for x in records if x["mode"] == "greedy"}
    missing = [f"{it.task}/{it.id}" for it in items if (it.task, it.id) not in greedy_ids]
    over = [
        (x["item_id"], x["budget"], x["thinking_tokens"])
        for x in records
        if x["budget"] is not None and x["thinking_tokens"] > x["budget"]
    ]
    return [
        CheckOutcome(
            "records_complete",
            not missing,
            "every eval item has a greedy record",
            {"missing": len(missing), "examples": missing[:5]},
        ),
        CheckOutcome(
            "budget_respected",
            not over,
            "no budget-forced record thinks longer than its budget",
            {"violations": len(over), "examples": [list(o) for o in over[:5]]},
        ),
        CheckOutcome(
            "no_contamination",
            not flagged,
            "no eval item overlaps an upstream training dataset",
            {"flagged": len(flagged), "examples": [f"{f['task']}/{f['item_id']}" for f in flagged[:5]]},
        ),
    ]


EVALUATE = register(
    StageKind(
        name="evaluate",
        config=EvaluateConfig,
        produces="eval",
        run=run,
        description="Score models on reasoning tasks (greedy, pass@k, maj@k, budget forcing, Wait) and bits per "
        "byte, with 95% intervals and a lineage decontamination audit; one partition per model.",
        checks=(
            CheckSpec("records_complete", "every eval item has a greedy record", blocking=True),
            CheckSpec(
                "budget_respected", "budget forcing never lets thinking exceed the budget", blocking=True
            ),
            CheckSpec(
                "no_contamination", "no eval item overlaps an upstream training dataset (n-gram audit)"
            ),
        ),
        pool="gpu",
        partition_field="models",
        validate=validate,
    )
)
