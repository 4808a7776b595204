"""The fixed pyarrow schema of the ``documents`` artifact type and the helpers every data stage shares.

Key design choice: one schema, written by every stage that produces documents (extract, load_documents,
filter, dedupe, decontaminate), so a later stage or a DuckDB query never guesses column types. A document's
``id`` is a hash of its URL and text: the same page extracted twice gets the same id, so lineage and
caches agree across runs; ``parent_ids`` names the records it came from (the WARC record id for extracted
pages, the source row id for loaded documents). ``language`` and ``language_score`` are py3langid's answer,
computed once at extraction and reused by the language filter.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DOCUMENTS_FILE = "documents.parquet"
COLUMNS = ("id", "url", "host", "text", "language", "language_score", "source", "source_record", "parent_ids")


def documents_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("url", pa.string()),
            ("host", pa.string()),
            ("text", pa.string()),
            ("language", pa.string()),
            ("language_score", pa.float32()),
            ("source", pa.string()),
            ("source_record", pa.string()),
            ("parent_ids", pa.list_(pa.string())),
        ]
    )


def doc_id(url: str | None, text: str) -> str:
    """Stable id: sha256 of URL and text (first 32 hex digits)."""
    return hashlib.sha256(f"{url or ''}\n{text}".encode("utf-8", errors="surrogatepass")).hexdigest()[:32]


def host_of(url: str | None) -> str:
    if not url:
        return ""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def read_documents(path: Path, columns: list[str] | None = None):
    """The documents table of an artifact directory (or a documents.parquet path)."""
    import pyarrow.parquet as pq

    f = path / DOCUMENTS_FILE if path.is_dir() else path
    if not f.is_file():
        raise FileNotFoundError(f"{f}: documents artifact has no {DOCUMENTS_FILE}")
    return pq.read_table(f, columns=columns)


def write_documents(rows_or_table: Any, out_dir: Path) -> int:
    """Write ``documents.parquet`` (zstd) with the fixed schema; returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = documents_schema()
    if isinstance(rows_or_table, pa.Table):
        table = rows_or_table
        for f in schema:  # a table written before a column existed gets it as nulls
            if f.name not in table.column_names:
                table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
        table = table.select(list(COLUMNS)).cast(schema)
    else:
        table = pa.Table.from_pylist(list(rows_or_table), schema=schema)
    pq.write_table(table, out_dir / DOCUMENTS_FILE, compression="zstd")
    return table.num_rows


def doc_to_row(writer: Any, document: Any) -> dict[str, Any]:
    """datatrove writer adapter: a ``Document`` whose metadata holds our columns -> one schema row."""
    m = document.metadata
    return {
        "id": document.id,
        "url": m.get("url"),
        "host": m.get("host"),
        "text": document.text,
        "language": m.get("language"),
        "language_score": m.get("language_score"),
        "source": m.get("source"),
        "source_record": m.get("source_record"),
        "parent_ids": list(m.get("parent_ids") or []),
    }


def row_to_doc(reader: Any, data: dict, path: str, id_in_file: Any) -> dict[str, Any]:
    """datatrove reader adapter: one schema row -> ``Document`` fields (columns kept in metadata)."""
    text = data.pop("text", "") or ""
    return {"text": text, "id": data.pop("id"), "metadata": data}
