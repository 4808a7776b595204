"""Decontamination audit: word n-gram overlap between each eval item and every training dataset upstream of
the evaluated model.

Key design choice: the audit reads what the model was actually trained on, found by following lineage (the
caller resolves the model's ancestors and hands over their Parquet files), instead of trusting that a
``decontaminate`` stage ran. Every string column of every training Parquet is scanned, so the audit does not
depend on one artifact schema. An item is flagged when at least ``threshold`` of its word n-grams occur in
one training dataset (GPT-3's 13-gram test, with a fraction so that shared templates do not flag items);
items shorter than ``n`` words are matched whole.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (punctuation and whitespace differences never hide a copy)."""
    return _WORD.findall(text.lower())


def ngram_hashes(ws: list[str], n: int) -> set[int]:
    if len(ws) < n:
        return set()
    return {hash(tuple(ws[i : i + n])) for i in range(len(ws) - n + 1)}


@dataclass(frozen=True)
class TrainingSource:
    """One training dataset: a stage name and the Parquet files holding its text."""

    stage: str
    files: tuple[Path, ...]


@dataclass(frozen=True)
class AuditItem:
    task: str
    item_id: str
    text: str


@dataclass(frozen=True)
class AuditHit:
    task: str
    item_id: str
    overlap: float  # share of the item's n-grams found in the most-overlapping dataset
    matched: tuple[str, ...]  # training stages with overlap >= threshold
    flagged: bool


def iter_texts(files: Iterable[Path], batch_rows: int = 4096) -> Iterable[str]:
    """Every non-empty string cell of every string column, row group by row group (bounded memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for f in files:
        pf = pq.ParquetFile(f)
        cols = [
            fld.name
            for fld in pf.schema_arrow
            if pa.types.is_string(fld.type) or pa.types.is_large_string(fld.type)
        ]
        if not cols:
            continue
        for batch in pf.iter_batches(batch_size=batch_rows, columns=cols):
            for col in batch.columns:
                for v in col.to_pylist():
                    if v:
                        yield v


def audit(
    items: list[AuditItem], sources: list[TrainingSource], *, n: int = 13, threshold: float = 0.5
) -> list[AuditHit]:
    """Overlap of each item with each training source; one :class:`AuditHit` per item, in order."""
    if n < 1:
        raise ValueError(f"audit n-gram size must be >= 1, got {n}")
    if not 0 < threshold <= 1:
        raise ValueError(f"audit threshold must be in (0, 1], got {threshold}")
    item_words = [words(it.text) for it in items]
    # items shorter than n are matched whole: n-gram sizes needed on the training side
    sizes = sorted({min(n, len(w)) for w in item_words if w})
    item_grams = [ngram_hashes(w, min(n, len(w))) if w else set() for w in item_words]
    wanted: set[int] = set().union(*item_grams) if item_grams else set()
    best = [0.0] * len(items)
    matched: list[list[str]] = [[] for _ in items]
    key = (tuple(sizes), frozenset(wanted))
    for src in sources:
        found = set().union(*(_found_in(f, key) for f in src.files))
        for i, grams in enumerate(item_grams):
            if not grams:
                continue
            ov = len(grams & found) / len(grams)
            best[i] = max(best[i], ov)
            if ov >= threshold:
                matched[i].append(src.stage)
    return [
        AuditHit(it.task, it.item_id, best[i], tuple(matched[i]), bool(matched[i]))
        for i, it in enumerate(items)
    ]


# The n-grams of the eval items found in each training file, per process (file, size, mtime, n-gram sizes,
# items' n-grams): the partitions of one evaluate stage audit the same items against mostly the same upstream
# files, which are scanned once. A rewritten file has another size or mtime and is scanned again.
_FOUND: OrderedDict[tuple, frozenset[int]] = OrderedDict()
_FOUND_MAX = 256


def _found_in(f: Path, key: tuple) -> frozenset[int]:
    sizes, wanted = key
    st = Path(f).stat()
    k = (str(Path(f).resolve()), st.st_size, st.st_mtime_ns, *key)
    if k in _FOUND:
        _FOUND.move_to_end(k)
        return _FOUND[k]
    found: set[int] = set()  # only n-grams some item has: memory stays bounded by the eval set
    for text in iter_texts([f]):
        ws = words(text)
        for size in sizes:
            found |= ngram_hashes(ws, size) & wanted
    _FOUND[k] = frozenset(found)
    if len(_FOUND) > _FOUND_MAX:
        _FOUND.popitem(last=False)
    return _FOUND[k]


def write_hits(hits: list[AuditHit], path: Path) -> None:
    """The audit result as Parquet: one row per item (task, item_id, overlap, flagged, matched n-grams)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"task": h.task, "item_id": h.item_id, "overlap": h.overlap, "flagged": h.flagged, "matched": list(h.matched)}
        for h in hits
    ]
    schema = pa.schema(
        [
            ("task", pa.string()),
            ("item_id", pa.string()),
            ("overlap", pa.float64()),
            ("flagged", pa.bool_()),
            ("matched", pa.list_(pa.string())),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, compression="zstd")
