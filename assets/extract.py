"""Stage kind ``extract``: a ``warc`` artifact -> ``documents`` (HTML to text with trafilatura, in datatrove).

Key design choice: every document keeps a stable id, its URL, host, language and the WARC record it came
from, so lineage runs from a crawled page to a training row. Extraction runs as datatrove tasks (each
document in a sandbox process with a timeout) on the stage's ``executor`` (``assets/data.py``), a run
option outside the version: the same tasks write the same shards wherever they run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .data import DataExecutor, executor_field
from .registry import (
    CheckOutcome,
    CheckSpec,
    Json,
    StageConfig,
    StageKind,
    StageResult,
    StageRun,
    ref,
    register,
)


class ExtractConfig(StageConfig):
    from_: str = ref("warc", alias="from", description="the crawl (warc artifact) to extract text from")
    favour: Literal["precision", "balanced", "recall"] = Field(
        "precision", description="trafilatura's trade-off between clean text and complete text"
    )
    timeout_s: float = Field(
        10.0, gt=0, description="per-document extraction timeout (trafilatura runs in a sandbox process)"
    )
    tasks: int = Field(1, ge=1, description="datatrove tasks (at most one per WARC file)")
    workers: int = Field(1, ge=1, description="datatrove worker processes (1: in-process)")
    executor: DataExecutor = executor_field()


def _run_extract(run: StageRun) -> StageResult:
    c: ExtractConfig = run.config
    from ops.data.extract import extract

    src = run.input("from_")
    warc_dir = src.path / "warc"
    if not warc_dir.is_dir():
        raise ValueError(
            f"stage {run.stage!r}, field 'from': {warc_dir} does not exist (not a warc artifact)"
        )
    r = extract(
        warc_dir,
        run.out,
        run.work,
        src.version,
        favour=c.favour,
        timeout_s=c.timeout_s,
        tasks=c.tasks,
        workers=c.workers,
        executor=c.executor.settings(run.stage),
    )
    n = r["documents"]
    checks = [
        CheckOutcome("non_empty", n > 0, f"{n} documents extracted from {r['html_records']} HTML records"),
        CheckOutcome(
            "no_bad_records", r["bad_records"] == 0, f"{r['bad_records']} damaged WARC record(s) skipped"
        ),
    ]
    metrics = {k: v for k, v in r.items() if isinstance(v, int | float)}
    return StageResult(metrics=metrics, checks=checks, metadata={"steps": Json(r["steps"])})


register(
    StageKind(
        name="extract",
        config=ExtractConfig,
        produces="documents",
        run=_run_extract,
        description="HTML -> text with trafilatura through datatrove; stable ids, host, language, source record",
        checks=(
            CheckSpec("non_empty", "at least one document was extracted", blocking=True),
            CheckSpec("no_bad_records", "every WARC record was readable"),
        ),
    )
)
