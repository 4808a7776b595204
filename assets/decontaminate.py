"""Stage kind ``decontaminate``: documents + task stages -> the documents sharing no word n-gram with an
eval item.

Key design choice: only the eval split of the named task stages is indexed (question, answer, solution;
fields shorter than the n-gram are matched whole), and every dropped document is written to
``dropped.parquet`` with the eval item, field and n-gram that matched, so each removal can be audited.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

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


class DecontaminateConfig(StageConfig):
    from_: str = ref("documents", alias="from", description="training documents")
    against: list[str] = ref(
        "tasks",
        many=True,
        description="task stages whose eval.parquet items must not appear in training data",
    )
    ngram: int = Field(
        13, ge=1, description="word n-gram length shared with an eval item that drops a document"
    )
    min_words: int = Field(
        8,
        ge=1,
        description="eval fields shorter than ngram but with at least this many "
        "words are matched whole; shorter fields are ignored",
    )


def _validate(c: DecontaminateConfig, refs: dict[str, str]) -> list[tuple[str, str]]:
    return empty_ref_problems(c, "against")


def _read_eval(path: Path, stage: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    f = path / "eval.parquet"
    if not f.is_file():
        raise ValueError(f"stage field 'against' ({stage!r}): {f} does not exist (not a tasks artifact)")
    t = pq.read_table(f)
    missing = [c for c in ("id", "question") if c not in t.column_names]
    if missing:
        raise ValueError(f"stage field 'against' ({stage!r}): {f} lacks column(s) {missing}")
    cols = [c for c in ("id", "question", "answer", "solution") if c in t.column_names]
    return t.select(cols).to_pylist()


def _run_decontaminate(run: StageRun) -> StageResult:
    c: DecontaminateConfig = run.config
    from ops.data.decontam import build_index, decontaminate
    from ops.data.schema import read_documents, write_documents

    src = run.input("from_")
    evals = [(a.stage, _read_eval(a.path, a.stage)) for a in run.inputs.get("against", [])]
    idx = build_index(evals, c.ngram, c.min_words)
    rows = read_documents(src.path).to_pylist()
    kept, dropped = decontaminate(rows, idx)
    n = write_documents(kept, run.out)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist(
            dropped,
            schema=pa.schema(
                [
                    ("id", pa.string()),
                    ("url", pa.string()),
                    ("eval_stage", pa.string()),
                    ("eval_item", pa.string()),
                    ("eval_field", pa.string()),
                    ("ngram", pa.string()),
                ]
            ),
        ),
        run.out / "dropped.parquet",
    )
    checks = [CheckOutcome("non_empty", n > 0, f"{n} of {len(rows)} documents kept")]
    md = {"dropped": Table(dropped[:50] or [{"id": "", "url": "", "eval_item": "", "ngram": ""}])}
    return StageResult(
        metrics={
            "documents_in": len(rows),
            "documents_out": n,
            "dropped": len(dropped),
            "eval_items": idx.items,
            "eval_ngrams": len(idx.grams),
        },
        metadata=md,
        checks=checks,
    )


register(
    StageKind(
        name="decontaminate",
        config=DecontaminateConfig,
        produces="documents",
        run=_run_decontaminate,
        description="Drop documents sharing a word n-gram with any eval item of the named task stages "
        "(dropped.parquet says which item and n-gram)",
        checks=(CheckSpec("non_empty", "some documents are left", blocking=True),),
        validate=_validate,
    )
)
