"""Stage kind ``load_documents``: ready-made text (Parquet/JSONL files with a text column) -> ``documents``.

Key design choice: text that needs no HTML extraction skips ``crawl`` and ``extract`` and lands directly in
the one documents schema of ``ops/data/schema.py``. The files are checked (readable, columns present) when
the spec is compiled and again when the run starts, and their identity (path, size, mtime, sha256) is part
of the version, so changing a byte re-versions every stage downstream.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .data import file_identity, glob_paths
from .registry import (
    CheckOutcome,
    CheckSpec,
    Json,
    StageConfig,
    StageKind,
    StageResult,
    StageRun,
    register,
)


class LoadDocumentsConfig(StageConfig):
    paths: list[str] = Field(description="Parquet, JSONL(.gz) or JSON (array or lines) files or globs holding one document per row")
    text_column: str = Field("text", description="column holding the document text")
    id_column: str | None = Field(None, description="column with the source's own id (kept in parent_ids)")
    url_column: str | None = Field(None, description="column with the document URL, if any")
    on_decode_error: Literal["replace", "skip", "fail"] = Field(
        "replace", description="JSONL lines that are not valid UTF-8: decode with U+FFFD, skip, or fail"
    )


def _validate_load(c: LoadDocumentsConfig, refs: dict[str, str]) -> list[tuple[str, str]]:
    try:
        files = glob_paths(c.paths)
    except FileNotFoundError as e:
        return [("paths", str(e))]
    if not files:
        return [("paths", "the globs match no files")]
    errs = []
    for f in files:
        if f.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                names = pq.read_schema(f).names
            except Exception as e:  # noqa: BLE001 - reported with the file named
                errs.append(("paths", f"{f}: not a readable Parquet file: {e}"))
                continue
            for field, col in (
                ("text_column", c.text_column),
                ("id_column", c.id_column),
                ("url_column", c.url_column),
            ):
                if col and col not in names:
                    errs.append((field, f"{f} has no column {col!r} (columns: {names})"))
        elif not (f.name.endswith(".jsonl") or f.name.endswith(".jsonl.gz") or f.name.endswith(".json")):
            errs.append(("paths", f"{f}: unsupported file type (use .parquet, .jsonl, .jsonl.gz or .json)"))
    return errs


def _is_text(t) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return _is_text(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _validate_spec(c: LoadDocumentsConfig, refs: dict[str, str]) -> list[tuple[str, str]]:
    """:func:`_validate_load` (which the run repeats) and the type of each Parquet file's text column: the
    loader takes a non-string value for an empty text, so a column of numbers would load no document."""
    errs = _validate_load(c, refs)
    if errs:
        return errs
    import pyarrow.parquet as pq

    for f in glob_paths(c.paths):
        if f.suffix == ".parquet":
            t = pq.read_schema(f).field(c.text_column).type
            if not _is_text(t):
                errs.append(("text_column", f"{f}: column {c.text_column!r} holds {t}, not text (string)"))
    return errs


def _run_load(run: StageRun) -> StageResult:
    c: LoadDocumentsConfig = run.config
    from ops.data.load import load_documents

    errs = _validate_load(c, {})
    if errs:
        raise ValueError(f"stage {run.stage!r}, field {errs[0][0]!r}: {errs[0][1]}")
    summary = load_documents(
        glob_paths(c.paths),
        run.out,
        text_column=c.text_column,
        id_column=c.id_column,
        url_column=c.url_column,
        on_decode_error=c.on_decode_error,
        source=run.version,
    )
    n = summary["documents"]
    skipped = f"; skipped {summary['empty_text']} rows with empty text" if summary["empty_text"] else ""
    if summary["not_text"]:
        skipped += f"; skipped {summary['not_text']} rows whose text is not text ({summary['first_not_text']}, ...)"
    checks = [CheckOutcome("non_empty", n > 0, f"{n} documents loaded{skipped}")]
    return StageResult(
        metrics={k: v for k, v in summary.items() if isinstance(v, int | float)},
        metadata={"summary": Json(summary)},
        checks=checks,
    )


register(
    StageKind(
        name="load_documents",
        config=LoadDocumentsConfig,
        produces="documents",
        run=_run_load,
        description="Parquet/JSONL document sets with a text column -> documents.parquet",
        checks=(CheckSpec("non_empty", "at least one document was loaded", blocking=True),),
        validate=_validate_spec,
        fingerprint=lambda c: file_identity(glob_paths(c.paths)),
    )
)
