"""Conversion of stage metadata (Markdown, Image, Table, Json, plain values) to storable JSON and to Dagster
metadata. Stored in ``metadata.json`` inside the artifact so a cache hit shows the same metadata."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from .registry import Image, Json, Markdown, Table


def to_storable(md: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in md.items():
        if isinstance(v, Markdown):
            out[k] = {"type": "md", "value": v.text}
        elif isinstance(v, Image):
            out[k] = {"type": "image", "value": v.path}
        elif isinstance(v, Table):
            out[k] = {"type": "table", "value": v.records}
        elif isinstance(v, Json):
            out[k] = {"type": "json", "value": v.value}
        elif isinstance(v, bool | int | float | str) or v is None:
            out[k] = {"type": "value", "value": v}
        else:
            out[k] = {"type": "json", "value": v}
    return out


def to_dagster(stored: dict[str, Any], artifact_dir: Path) -> dict[str, Any]:
    """Stored metadata -> Dagster ``MetadataValue``s (images inlined as base64 PNG in Markdown)."""
    import dagster as dg

    out: dict[str, Any] = {}
    for k, item in stored.items():
        t, v = item.get("type"), item.get("value")
        if t == "md":
            out[k] = dg.MetadataValue.md(v)
        elif t == "image":
            p = artifact_dir / v
            if p.is_file():
                b64 = base64.b64encode(p.read_bytes()).decode()
                out[k] = dg.MetadataValue.md(f"![{k}](data:image/png;base64,{b64})")
        elif t == "table":
            recs = v or []
            if recs:
                cols = list(recs[0].keys())
                safe = [dg.TableRecord({c: _cell(r.get(c)) for c in cols}) for r in recs[:200]]
                schema = dg.TableSchema(columns=[dg.TableColumn(c, _coltype(recs, c)) for c in cols])
                out[k] = dg.MetadataValue.table(records=safe, schema=schema)
        elif t == "json":
            out[k] = dg.MetadataValue.json(v if isinstance(v, dict | list) else {"value": v})
        else:
            if isinstance(v, bool):
                out[k] = dg.MetadataValue.bool(v)
            elif isinstance(v, int):
                out[k] = dg.MetadataValue.int(v)
            elif isinstance(v, float):
                out[k] = dg.MetadataValue.float(v)
            elif v is not None:
                out[k] = dg.MetadataValue.text(str(v))
    return out


def _cell(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)


def _coltype(recs: list[dict[str, Any]], c: str) -> str:
    vals = [r.get(c) for r in recs if r.get(c) is not None]
    if vals and all(isinstance(x, bool) for x in vals):
        return "bool"
    if vals and all(isinstance(x, int) and not isinstance(x, bool) for x in vals):
        return "int"
    if vals and all(isinstance(x, int | float) and not isinstance(x, bool) for x in vals):
        return "float"
    return "string"
