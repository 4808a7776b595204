"""Stage kind ``filter``: documents -> the documents that pass a chain of quality filters.

Key design choice: the chain is data (names or ``{name: parameters}``, normalised and checked by
``ops/data/filter_spec.py`` before anything runs), applied in order after an optional URL block list. The
stage reports a funnel (in, dropped and kept per filter, with reasons and dropped examples); when nothing
survives, its blocking check names the filter that removed the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from .data import DataExecutor, executor_field, file_identity, funnel_markdown
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


def _filter_entry(v: Any) -> Any:
    # one error naming the entry, instead of one per shape pydantic tried
    if isinstance(v, str) or (isinstance(v, dict) and len(v) == 1):
        return v
    raise PydanticCustomError(
        "filter_entry",
        "a filter is a name or a one-key mapping {name: parameters} (c4, {c4: {min_num_sentences: 3}}, "
        "{language: [en]})",
    )


class FilterConfig(StageConfig):
    from_: str = ref("documents", alias="from", description="documents to filter")
    filters: list[Annotated[Any, AfterValidator(_filter_entry)]] = Field(
        default_factory=lambda: ["language", "gopher_repetition", "gopher_quality", "c4", "fineweb"],
        description="filters in order: names or {name: parameters}; names: language (py3langid; "
        "{language: [en]} or {language: {languages: [en], min_score: 0.65}}), gopher_repetition, "
        "gopher_quality, c4, fineweb (parameters are datatrove's)",
    )
    blocklist: str | None = Field(
        None,
        description="a text file of blocked domains (with subdomains) or URL "
        "prefixes, one per line; applied first",
    )
    min_keep_rate: float = Field(0.02, ge=0, le=1, description="keep-rate check: lower bound")
    max_keep_rate: float = Field(1.0, ge=0, le=1, description="keep-rate check: upper bound")
    tasks: int = Field(1, ge=1, description="datatrove tasks")
    workers: int = Field(1, ge=1, description="datatrove worker processes (1: in-process)")
    executor: DataExecutor = executor_field()
    examples_per_filter: int = Field(3, ge=0, description="dropped documents shown per filter")


def _validate_filter(c: FilterConfig, refs: dict[str, str]) -> list[tuple[str, str]]:
    from ops.data.filter_spec import normalize_chain

    errs = []
    try:
        normalize_chain(c.filters)
    except ValueError as e:
        errs.append(("filters", str(e)))
    if c.blocklist and not Path(c.blocklist).expanduser().is_file():
        errs.append(("blocklist", f"{c.blocklist} does not exist"))
    if c.min_keep_rate > c.max_keep_rate:
        errs.append(("min_keep_rate", "is above max_keep_rate"))
    return errs


def _run_filter(run: StageRun) -> StageResult:
    c: FilterConfig = run.config
    errs = _validate_filter(c, {})
    if errs:
        raise ValueError(f"stage {run.stage!r}, field {errs[0][0]!r}: {errs[0][1]}")
    from ops.data.filter_spec import normalize_chain
    from ops.data.filters import first_emptying_filter, load_blocklist, run_filters

    src = run.input("from_")
    block = load_blocklist(Path(c.blocklist).expanduser()) if c.blocklist else None
    r = run_filters(
        src.path,
        run.out,
        run.work,
        normalize_chain(c.filters),
        block,
        tasks=c.tasks,
        workers=c.workers,
        examples_per_filter=c.examples_per_filter,
        executor=c.executor.settings(run.stage),
    )
    n = r["documents_out"]
    if n > 0:
        ne = CheckOutcome("non_empty", True, f"{n} of {r['documents_in']} documents kept")
    else:
        culprit = first_emptying_filter(r["funnel"])
        why = (
            f"filter {culprit!r} removed every remaining document"
            if culprit
            else "the input had no documents"
        )
        ne = CheckOutcome("non_empty", False, f"empty output: {why}", {"filter": culprit or ""})
    rate = r["keep_rate"]
    kr = CheckOutcome(
        "keep_rate_in_bounds",
        c.min_keep_rate <= rate <= c.max_keep_rate,
        f"keep rate {rate:.3f} (bounds {c.min_keep_rate}..{c.max_keep_rate})",
    )
    funnel_rows = [
        {
            "filter": f["filter"],
            "in": f["in"],
            "dropped": f["dropped"],
            "kept": f["kept"],
            "reasons": ", ".join(f"{k}: {v}" for k, v in sorted(f["reasons"].items())),
        }
        for f in r["funnel"]
    ]
    metrics: dict[str, Any] = {"documents_in": r["documents_in"], "documents_out": n, "keep_rate": rate}
    for f in r["funnel"]:
        metrics[f"dropped_{f['filter']}"] = f["dropped"]
    md = {
        "funnel": funnel_markdown(funnel_rows, ["filter", "in", "dropped", "kept", "reasons"]),
        "dropped_examples": Table(r["examples"] or [{"filter": "", "reason": "", "url": "", "text": ""}]),
    }
    return StageResult(metrics=metrics, metadata=md, checks=[ne, kr])


def _fingerprint_filter(c: FilterConfig) -> Any:
    return file_identity([Path(c.blocklist).expanduser()]) if c.blocklist else None


register(
    StageKind(
        name="filter",
        config=FilterConfig,
        produces="documents",
        run=_run_filter,
        description="Quality filters (datatrove Gopher, C4, FineWeb), offline language ID, URL block list",
        checks=(
            CheckSpec(
                "non_empty",
                "some documents survive; if not, names the filter that removed the rest",
                blocking=True,
            ),
            CheckSpec("keep_rate_in_bounds", "the share of kept documents is within the configured bounds"),
        ),
        validate=_validate_filter,
        fingerprint=_fingerprint_filter,
    )
)
