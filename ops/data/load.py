"""Loading ready-made document sets (Parquet or JSONL with a text column) into the documents schema.

Key design choice: bytes that are not valid UTF-8 are a property of the data, not a crash: by default a
JSONL line is decoded with U+FFFD replacement characters and counted (``broken_encoding``); ``skip`` drops
such lines and ``fail`` raises an error naming the file and line. Lines that are not JSON objects or lack
the text column are always an error naming file and line, since they mean the wrong file or column.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from ops.loaders import read_rows

from .schema import doc_id, host_of, write_documents


def _rows_jsonl(path: Path, on_decode_error: str, counts: dict[str, int]):
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark is not text
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                if on_decode_error == "fail":
                    raise ValueError(f"{path}:{lineno}: not valid UTF-8 ({e})") from e
                counts["broken_encoding"] += 1
                if on_decode_error == "skip":
                    continue
                line = raw.decode("utf-8", errors="replace")
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON object ({e})") from e
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: not a JSON object")
            yield lineno, obj


def _json_array(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"[")


def load_documents(
    files: list[Path],
    out: Path,
    *,
    text_column: str = "text",
    id_column: str | None = None,
    url_column: str | None = None,
    on_decode_error: str = "replace",
    source: str = "",
) -> dict[str, Any]:
    import pyarrow.parquet as pq

    counts = {"broken_encoding": 0, "empty_text": 0, "not_text": 0}
    first_not_text = ""
    rows: list[dict[str, Any]] = []
    for f in files:
        if f.suffix == ".parquet":
            cols = [c for c in (text_column, id_column, url_column) if c]
            it = enumerate(pq.read_table(f, columns=cols).to_pylist(), 1)
        elif f.suffix == ".json" and _json_array(f):  # a .json file is an array of objects or JSON lines
            it = enumerate(read_rows(f), 1)
        else:
            it = _rows_jsonl(f, on_decode_error, counts)
        for n, obj in it:
            if text_column not in obj:
                raise ValueError(f"{f}:{n}: no column {text_column!r}")
            text = obj[text_column]
            if text is not None and not isinstance(text, str):  # a number, list or mapping: not a document
                counts["not_text"] += 1
                first_not_text = first_not_text or f"{f}:{n}: {text_column!r} is {type(text).__name__}"
                continue
            if text is None or not text.strip():
                counts["empty_text"] += 1
                continue
            url = str(obj[url_column]) if url_column and obj.get(url_column) is not None else None
            parent = str(obj[id_column]) if id_column and obj.get(id_column) is not None else f"{f.name}:{n}"
            rows.append(
                {
                    "id": doc_id(url, text),
                    "url": url,
                    "host": host_of(url),
                    "text": text,
                    "language": None,
                    "language_score": None,
                    "source": source,
                    "source_record": f"{f.name}:{n}",
                    "parent_ids": [parent],
                }
            )
    n = write_documents(rows, out)
    return {"files": len(files), "documents": n, **counts, "first_not_text": first_not_text}
