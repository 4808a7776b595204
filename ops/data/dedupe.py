"""Exact and near-duplicate removal: a normalised-text hash, then datatrove's four MinHash-LSH stages.

Key design choices:

* Exact duplicates go first (NFKC, lower case, whitespace collapsed, then SHA-1; the first document in
  input order is kept), so MinHash only has to find *near* duplicates and its clusters stay small.
* Near duplicates use datatrove's MinHash stages unchanged (signature -> buckets -> cluster -> filter) with
  word n-gram shingles; ``n_grams``, ``num_buckets`` and ``hashes_per_bucket`` come from the config. The
  LSH threshold is about ``(1/num_buckets) ** (1/hashes_per_bucket)`` in Jaccard similarity; a pair at
  Jaccard ``s`` becomes a candidate with probability ``1 - (1 - s**rows) ** bands``.
* The default 40 bands x 5 rows was chosen by measurement (``experiments/dedupe_recall.py``, figures in
  ``experiments/LEDGER.md``): it catches at least 95% of near copies in every 5-gram Jaccard bin down to 0.6
  and removed no distinct document, where datatrove's 14 x 8 missed 70% of copies at Jaccard 0.6-0.65.
* Every removal is explained: the kept document of its exact group or MinHash cluster is recorded, so the
  stage reports cluster sizes and removed/kept pairs (with their measured shingle Jaccard).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from pathlib import Path
from typing import Any

from datatrove.pipeline.base import PipelineStep

from .pipeline import ExecutorSettings, fresh_dir, open_executor, step_counts
from .schema import doc_to_row, documents_schema, read_documents, row_to_doc, write_documents

# What the MinHash steps import at their first document (spaCy, for the word tokenizer of the signatures); a
# Ray actor loads them when it starts, so every rank it runs finds them loaded.
LAZY_IMPORTS = ("datatrove.pipeline.dedup", "datatrove.utils.word_tokenizers", "spacy")

DEFAULT_NUM_BUCKETS = 40
DEFAULT_HASHES_PER_BUCKET = 5


def normalized_hash(text: str) -> str:
    t = unicodedata.normalize("NFKC", text).lower()
    t = re.sub(r"\s+", " ", t).strip()
    return hashlib.sha1(t.encode("utf-8", errors="surrogatepass")).hexdigest()


def shingles(text: str, n: int = 5) -> set[str]:
    w = re.findall(r"\w+", text.lower())
    return {" ".join(w[i : i + n]) for i in range(max(1, len(w) - n + 1))}


def jaccard(a: str, b: str, n: int = 5) -> float:
    sa, sb = shingles(a, n), shingles(b, n)
    return len(sa & sb) / max(1, len(sa | sb))


class ClusterTap(PipelineStep):
    """Records ``(id, minhash cluster)`` of kept documents that belong to a cluster (for the report)."""

    name = "🧷 cluster tap"
    type = "🫂 - DEDUP"

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def run(self, data, rank: int = 0, world_size: int = 1):
        with open(f"{self.path}.{rank:05d}.jsonl", "w", encoding="utf-8") as fh:
            for doc in data:
                c = doc.metadata.get("minhash_cluster_id", -1)
                if c is not None and c >= 0:
                    fh.write(json.dumps({"id": doc.id, "cluster": c}) + "\n")
                yield doc


def exact_dedupe(table) -> tuple[Any, list[tuple[int, int]]]:
    """``(deduplicated table, [(removed row, kept row)])`` keeping the first of each normalised text."""
    texts = table.column("text").to_pylist()
    first: dict[str, int] = {}
    keep, pairs = [], []
    for i, t in enumerate(texts):
        h = normalized_hash(t or "")
        if h in first:
            pairs.append((i, first[h]))
        else:
            first[h] = i
            keep.append(i)
    return table.take(keep), pairs


def minhash_pipelines(
    src_dir: Path,
    sig: Path,
    buckets: Path,
    clusters: Path,
    out_dir: Path,
    removed_dir: Path | None,
    tap: Path | None,
    n_grams: int,
    num_buckets: int,
    hashes_per_bucket: int,
    seed: int = 1,
    bare: bool = False,
) -> list[list[Any]]:
    """The four datatrove stages. ``bare=True``: datatrove's reader/writer, no lmforge steps (benchmark)."""
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import JsonlWriter, ParquetWriter
    from datatrove.utils.hashing import HashConfig

    cfg = MinhashConfig(
        hash_config=HashConfig(precision=64),
        n_grams=n_grams,
        num_buckets=num_buckets,
        hashes_per_bucket=hashes_per_bucket,
        seed=seed,
    )

    def reader() -> Any:
        if bare:
            return ParquetReader(str(src_dir), glob_pattern="documents.parquet")
        return ParquetReader(str(src_dir), glob_pattern="documents.parquet", adapter=row_to_doc)

    s1 = [reader(), MinhashDedupSignature(output_folder=str(sig), config=cfg)]
    s2 = [MinhashDedupBuckets(input_folder=str(sig), output_folder=str(buckets), config=cfg)]
    s3 = [
        MinhashDedupCluster(
            input_folder=str(buckets), output_folder=str(clusters), config=cfg, save_cluster_id=not bare
        )
    ]
    if bare:
        s4 = [
            reader(),
            MinhashDedupFilter(input_folder=str(clusters)),
            ParquetWriter(str(out_dir), output_filename="${rank}.parquet"),
        ]
    else:
        excl = JsonlWriter(str(removed_dir), output_filename="${rank}.jsonl", compression=None)
        s4 = [
            reader(),
            MinhashDedupFilter(input_folder=str(clusters), exclusion_writer=excl, load_cluster_ids=True),
            ClusterTap(str(tap)),
            ParquetWriter(
                str(out_dir), output_filename="${rank}.parquet", adapter=doc_to_row, schema=documents_schema()
            ),
        ]
    return [s1, s2, s3, s4]


def dedupe(
    src_dir: Path,
    out: Path,
    work: Path,
    *,
    exact: bool = True,
    near: bool = True,
    n_grams: int = 5,
    num_buckets: int = DEFAULT_NUM_BUCKETS,
    hashes_per_bucket: int = DEFAULT_HASHES_PER_BUCKET,
    seed: int = 1,
    workers: int = 1,
    examples: int = 5,
    executor: ExecutorSettings | None = None,
) -> dict[str, Any]:
    """De-duplicate ``src_dir/documents.parquet`` into ``out/documents.parquet``; returns the report."""
    import pyarrow.parquet as pq

    table = read_documents(src_dir)
    n_in = table.num_rows
    exact_pairs: list[tuple[int, int]] = []
    if exact:
        deduped, exact_pairs = exact_dedupe(table)
    else:
        deduped = table
    ids = table.column("id").to_pylist()
    urls = table.column("url").to_pylist()
    texts = table.column("text").to_pylist()
    by_id = {i: (u, t) for i, u, t in zip(ids, urls, texts)}
    pairs = [
        {
            "method": "exact",
            "removed_id": ids[r],
            "removed_url": urls[r],
            "kept_id": ids[k],
            "kept_url": urls[k],
            "jaccard": 1.0,
        }
        for r, k in exact_pairs
    ]
    stage = fresh_dir(work / "dedupe")
    near_removed = 0
    clusters: dict[int, list[str]] = {}
    steps: list[dict[str, Any]] = []
    if near and deduped.num_rows > 1:
        src = fresh_dir(stage / "exact")
        write_documents(deduped, src)
        kept_dir, removed_dir = stage / "kept", stage / "removed"
        pipes = minhash_pipelines(
            src,
            stage / "sig",
            stage / "buckets",
            stage / "clusters",
            kept_dir,
            removed_dir,
            stage / "tap",
            n_grams,
            num_buckets,
            hashes_per_bucket,
            seed,
        )
        with open_executor(executor, workers=min(workers, num_buckets), warm=LAZY_IMPORTS) as runner:
            for i, (p, tasks) in enumerate(zip(pipes, (1, num_buckets, 1, 1))):
                steps += step_counts(runner.run(p, stage / f"logs{i + 1}", tasks=tasks, workers=workers))
        tables = [pq.read_table(f, schema=documents_schema()) for f in sorted(kept_dir.glob("*.parquet"))]
        import pyarrow as pa

        result = pa.concat_tables(tables) if tables else documents_schema().empty_table()
        kept_of: dict[int, str] = {}
        for f in sorted(stage.glob("tap.*.jsonl")):
            for line in f.read_text().splitlines():
                d = json.loads(line)
                kept_of[d["cluster"]] = d["id"]
                clusters.setdefault(d["cluster"], []).append(d["id"])
        for f in sorted(removed_dir.glob("*.jsonl")):
            for line in f.read_text().splitlines():
                d = json.loads(line)
                c = (d.get("metadata") or {}).get("minhash_cluster_id", -1)
                near_removed += 1
                clusters.setdefault(c, []).append(d["id"])
                k = kept_of.get(c)
                pairs.append(
                    {
                        "method": "minhash",
                        "removed_id": d["id"],
                        "removed_url": (d.get("metadata") or {}).get("url"),
                        "kept_id": k,
                        "kept_url": by_id.get(k, (None, ""))[0],
                        "jaccard": None,
                        "_text": d["text"],
                    }
                )
    else:
        result = deduped
    # Keep input order in the output (datatrove preserves it within the single task; re-sort to be sure).
    order = {i: n for n, i in enumerate(ids)}
    rows = sorted(result.to_pylist(), key=lambda r: order.get(r["id"], len(order)))
    n_out = write_documents(rows, out)
    out_hashes = [normalized_hash(r["text"] or "") for r in rows]
    for p in pairs:
        if p["method"] == "minhash" and p["kept_id"] in by_id:
            p["jaccard"] = round(jaccard(p.pop("_text"), by_id[p["kept_id"]][1], n_grams), 3)
        p.pop("_text", None)
    sizes = sorted((len(v) for v in clusters.values()), reverse=True)
    return {
        "documents_in": n_in,
        "documents_out": n_out,
        "exact_removed": len(exact_pairs),
        "near_removed": near_removed,
        "clusters": len(clusters),
        "cluster_sizes": sizes[:50],
        "largest_cluster": sizes[0] if sizes else 1,
        "exact_duplicates_left": len(out_hashes) - len(set(out_hashes)),
        "pairs": pairs,
        "examples": pairs[:examples],
        "steps": steps,
        "lsh_threshold": round((1 / num_buckets) ** (1 / hashes_per_bucket), 3),
    }
