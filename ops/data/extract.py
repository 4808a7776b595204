"""HTML -> text: WARC records through trafilatura (datatrove's extractor) into the documents schema.

Key design choice: the pipeline is datatrove's own (reader -> ``Trafilatura`` -> ``ParquetWriter``) with
two additions that stay cheap next to trafilatura (~25 ms/doc): a tolerant WARC reader (damaged files are
counted, not fatal) and a step that gives each document its stable id, host, language (py3langid, which
ships its model) and source record. Trafilatura's cross-document ``deduplicate`` cache is turned off: it
makes output depend on document order and worker count; de-duplication is the dedupe stage's job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datatrove.pipeline.base import PipelineStep

from .pipeline import ExecutorSettings, fresh_dir, open_executor, step_counts
from .schema import doc_id, doc_to_row, documents_schema, host_of, write_documents

# What the steps import at their first document (trafilatura in the extractor's forked helper, py3langid for
# the language); a Ray actor loads them when it starts, so every rank it runs finds them loaded.
LAZY_IMPORTS = ("trafilatura", "py3langid")

_LID: Any = None


def language_of(text: str) -> tuple[str, float]:
    """``(iso code, probability)`` from py3langid's bundled model (normalised probabilities)."""
    global _LID
    if _LID is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _LID = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    lang, prob = _LID.classify(text[:20000])
    return str(lang), float(prob)


class FinalizeDocuments(PipelineStep):
    """Sets id = hash(url, text), host, language, source (artifact version) and parent_ids (WARC record)."""

    name = "🪪 finalize"
    type = "🔻 - FILTER"

    def __init__(self, source_version: str):
        super().__init__()
        self.source_version = source_version

    def run(self, data, rank: int = 0, world_size: int = 1):
        for doc in data:
            with self.track_time():
                m = doc.metadata
                record_id = doc.id
                m["parent_ids"] = [record_id] if record_id else []
                doc.id = doc_id(m.get("url"), doc.text)
                m["host"] = host_of(m.get("url"))
                m["language"], m["language_score"] = language_of(doc.text)
                m["source"] = self.source_version
                self.stat_update("finalized")
            yield doc


def extract_pipeline(
    warc_dir: Path,
    out_dir: Path,
    source_version: str,
    favour: str = "precision",
    timeout_s: float = 10.0,
    bare: bool = False,
) -> list[Any]:
    """The datatrove pipeline. ``bare=True`` is the reference used by the benchmark: datatrove's own
    WarcReader -> Trafilatura -> ParquetWriter with no lmforge step."""
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import ParquetWriter

    from .warc import TolerantWarcReader

    kw: dict[str, Any] = {
        "favour_precision": favour == "precision",
        "timeout": timeout_s,
        "deduplicate": False,
    }
    if favour == "recall":
        kw["favor_recall"] = True
    if bare:
        return [
            WarcReader(str(warc_dir), glob_pattern="*.warc.gz"),
            Trafilatura(**kw),
            ParquetWriter(str(out_dir), output_filename="${rank}.parquet"),
        ]
    return [
        TolerantWarcReader(str(warc_dir), glob_pattern="*.warc.gz"),
        Trafilatura(**kw),
        FinalizeDocuments(source_version),
        ParquetWriter(
            str(out_dir), output_filename="${rank}.parquet", adapter=doc_to_row, schema=documents_schema()
        ),
    ]


def merge_shards(shard_dir: Path, out: Path, sort_by: tuple[str, ...] = ("url", "id")) -> int:
    """Concatenate per-rank shards into ``out/documents.parquet`` sorted by ``sort_by`` (then ``id``).

    Extraction sorts by URL: a crawl writes records in the order its concurrent fetches finish, so record
    positions change from crawl to crawl while the pages do not; every later stage keeps this order.
    An empty ``sort_by`` keeps the shards' order (rank-numbered shards of consecutive input rows).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(shard_dir.glob("*.parquet"))
    tables = [pq.read_table(f, schema=documents_schema()) for f in files]
    table = pa.concat_tables(tables) if tables else documents_schema().empty_table()
    if table.num_rows and sort_by:
        keys = list(dict.fromkeys([*sort_by, "id"]))
        table = table.sort_by([(k, "ascending") for k in keys])
    return write_documents(table, out)


def extract(
    warc_dir: Path,
    out: Path,
    work: Path,
    source_version: str,
    *,
    favour: str = "precision",
    timeout_s: float = 10.0,
    tasks: int = 1,
    workers: int = 1,
    executor: ExecutorSettings | None = None,
) -> dict[str, Any]:
    """Run extraction; returns figures (records read, extracted, empty, timeouts, bad records...)."""
    files = sorted(warc_dir.glob("*.warc.gz"))
    tasks = max(1, min(tasks, len(files) or 1))
    shards = fresh_dir(work / "extract_shards")
    with open_executor(executor, workers=min(workers, tasks), warm=LAZY_IMPORTS) as runner:
        stats = runner.run(
            extract_pipeline(warc_dir, shards, source_version, favour, timeout_s),
            work / "extract_logs",
            tasks=tasks,
            workers=workers,
        )
    n = merge_shards(shards, out)
    steps = step_counts(stats)
    reader = steps[0] if steps else {}
    extractor = steps[1] if len(steps) > 1 else {}
    return {
        "warc_files": len(files),
        "html_records": reader.get("documents", 0),
        "bad_records": reader.get("bad_records", 0),
        "broken_encoding": reader.get("broken_encoding", 0),
        "non_html_records": reader.get("non_html", 0),
        "extracted": extractor.get("forwarded", 0),
        "empty_after_extraction": extractor.get("dropped", 0),
        "timeouts": extractor.get("timeout", 0),
        "extract_errors": extractor.get("clean_error", 0) + extractor.get("broken_process", 0),
        "documents": n,
        "steps": steps,
    }
