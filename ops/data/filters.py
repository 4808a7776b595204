"""Quality filtering of documents with datatrove's filters, plus offline language ID and a URL block list.

Key design choices:

* The chain is datatrove's (Gopher repetition and quality, C4 quality, FineWeb quality) in the order the
  user lists; each filter gets an exclusion writer, so every dropped document is kept (in the work
  directory) with its filter and reason, and kept/dropped counts come from datatrove's own stats.
* Language ID uses py3langid, whose model ships inside the wheel (datatrove's LanguageFilter downloads
  fastText lid.176 at run time). The URL block list is a small lmforge filter over a user file instead of
  datatrove's ``URLFilter``, which loads 4.5 M bundled domains (+0.6 GiB per task) even for a 3-line list.
* lmforge's defaults differ from datatrove's in three places, all to keep the prose of technical pages:
  C4's ``filter_curly_bracket`` (drops any page with a ``{``) and ``filter_no_terminal_punct`` (deletes
  lines without final punctuation) are off, and Gopher's share of words with a letter
  (``max_non_alpha_words_ratio``) is 0.6 instead of 0.8: spaCy counts every bracket and comma of a code
  sample as a word, and at 0.8 only 6 of the 185 default pages survived (at 0.6: see the kind's docs).
  Everything is overridable per filter.
* A filter that edits text (C4 removes short lines and citations) gives the document a new id
  (hash of url and new text) with the old id in ``parent_ids``, so ids always identify content.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

from .extract import language_of, merge_shards
from .filter_spec import DEFAULT_CHAIN, FILTER_PARAMS, LMFORGE_DEFAULTS, normalize_chain  # noqa: F401
from .pipeline import ExecutorSettings, fresh_dir, open_executor, step_counts
from .schema import doc_id, doc_to_row, documents_schema, row_to_doc

# What the filters import at their first document (spaCy, for the word tokenizer of the quality filters); a
# Ray actor loads them when it starts, so every rank it runs finds them loaded.
LAZY_IMPORTS = ("datatrove.pipeline.filters", "datatrove.utils.word_tokenizers", "spacy")


def load_blocklist(path: Path) -> list[str]:
    """One domain (``example.com``: the domain and its subdomains) or URL prefix (``http...``) per line;
    ``#`` starts a comment."""
    entries = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip().lower()
        if line:
            entries.append(line)
    return entries


class LanguageFilter(BaseFilter):
    """Keeps documents whose py3langid language is in ``languages`` with probability >= ``min_score``.

    With ``reuse=True`` a document that already carries ``language`` and ``language_score`` (set by extract)
    is not classified again, provided its text is the one they were computed on: the id is a hash of URL and
    text, so a text an earlier filter edited no longer matches its id and is classified afresh.
    """

    name = "🌍 language (py3langid)"

    def __init__(self, languages: list[str], min_score: float = 0.65, exclusion_writer=None, reuse=True):
        super().__init__(exclusion_writer)
        self.languages = set(languages)
        self.min_score = min_score
        self.reuse = reuse

    def filter(self, doc):
        m = doc.metadata
        if (
            self.reuse
            and m.get("language")
            and m.get("language_score") is not None
            and doc.id == doc_id(m.get("url"), doc.text)
        ):
            lang, score = m["language"], float(m["language_score"])
            self.stat_update("language_reused")
        else:
            lang, score = language_of(doc.text)
        m["language"], m["language_score"] = lang, score
        if lang not in self.languages:
            return False, f"language_{lang}"
        if score < self.min_score:
            return False, "language_low_score"
        return True


class DroppedSampler:
    """A filter's exclusion writer that keeps only the first ``k`` dropped documents of each rank (as JSON
    lines in ``folder/<rank>.jsonl``). The stage shows a few examples per filter; writing every dropped
    document (gzipped, into the work directory, which is not kept) was work nobody read."""

    def __init__(self, folder: Path, k: int):
        self.folder, self.k = Path(folder), k
        self._fh: Any = None
        self._n = 0

    def __enter__(self):
        return self

    def write(self, doc: Any, rank: int = 0) -> None:
        if self._n >= self.k:
            return
        if self._fh is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.folder / f"{rank:05d}.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self._fh.write(json.dumps({"text": doc.text, "metadata": dict(doc.metadata)}, default=str) + "\n")
        self._n += 1

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class BlocklistFilter(BaseFilter):
    name = "⛔ url block list"

    def __init__(self, entries: list[str], exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.prefixes = tuple(e for e in entries if "://" in e)
        self.domains = {e for e in entries if "://" not in e}

    def filter(self, doc):
        url = (doc.metadata.get("url") or "").lower()
        if self.prefixes and url.startswith(self.prefixes):
            return False, "url_prefix"
        host = (doc.metadata.get("host") or "").lower()
        parts = host.split(".")
        if any(".".join(parts[i:]) in self.domains for i in range(len(parts))):
            return False, "domain"
        return True


class ReidentifyEdited(PipelineStep):
    """Gives a document whose text a filter edited a new id, with the previous id as its parent."""

    name = "🪪 re-identify edited"
    type = "🔻 - FILTER"

    def run(self, data, rank: int = 0, world_size: int = 1):
        for doc in data:
            new = doc_id(doc.metadata.get("url"), doc.text)
            if new != doc.id:
                doc.metadata["parent_ids"] = [doc.id]
                doc.id = new
                self.stat_update("edited")
            yield doc


def _make_filter(name: str, params: dict[str, Any], exclusion_writer: Any, bare: bool = False) -> Any:
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    p = dict(params)
    for k in ("top_n_grams", "dup_n_grams"):
        if k in p:
            p[k] = tuple(tuple(x) for x in p[k])
    if "stop_chars" in p and p["stop_chars"] is not None:
        p["stop_chars"] = tuple(p["stop_chars"])
    cls = {
        "gopher_repetition": GopherRepetitionFilter,
        "gopher_quality": GopherQualityFilter,
        "c4": C4QualityFilter,
        "fineweb": FineWebQualityFilter,
    }.get(name)
    if name == "language":
        return LanguageFilter(exclusion_writer=exclusion_writer, reuse=not bare, **p)
    assert cls is not None
    return cls(exclusion_writer=exclusion_writer, **p)


def filter_pipeline(
    src_dir: Path,
    out_dir: Path,
    dropped_dir: Path | None,
    chain: list[tuple[str, dict[str, Any]]],
    blocklist: list[str] | None = None,
    bare: bool = False,
    glob_pattern: str = "documents.parquet",
    examples_per_filter: int = 3,
) -> tuple[list[Any], list[str]]:
    """``(pipeline, names of the filter steps in order)``. ``bare=True``: the same datatrove filters
    between datatrove's own ParquetReader and ParquetWriter (the benchmark's reference)."""
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter

    def excl(name: str) -> Any:
        if dropped_dir is None:
            return None
        return DroppedSampler(dropped_dir / name, examples_per_filter)

    steps: list[Any] = []
    names: list[str] = []
    if blocklist:
        steps.append(BlocklistFilter(blocklist, exclusion_writer=excl("url_blocklist")))
        names.append("url_blocklist")
    for name, params in chain:
        steps.append(_make_filter(name, params, excl(name), bare=bare))
        names.append(name)
    if bare:
        return (
            [
                ParquetReader(str(src_dir), glob_pattern=glob_pattern),
                *steps,
                ParquetWriter(str(out_dir), output_filename="${rank}.parquet"),
            ],
            names,
        )
    reader = ParquetReader(str(src_dir), glob_pattern=glob_pattern, adapter=row_to_doc)
    writer = ParquetWriter(
        str(out_dir), output_filename="${rank}.parquet", adapter=doc_to_row, schema=documents_schema()
    )
    return [reader, *steps, ReidentifyEdited(), writer], names


def run_filters(
    src_dir: Path,
    out: Path,
    work: Path,
    chain: list[tuple[str, dict[str, Any]]],
    blocklist: list[str] | None = None,
    tasks: int = 1,
    workers: int = 1,
    examples_per_filter: int = 3,
    executor: ExecutorSettings | None = None,
) -> dict[str, Any]:
    """Filter ``src_dir/documents.parquet`` into ``out/documents.parquet``; returns the funnel."""
    shards = fresh_dir(work / "filter_shards")
    dropped = fresh_dir(work / "dropped")
    glob = "documents.parquet"
    if tasks > 1:
        # datatrove shards its input by file: split the one documents file into `tasks` row ranges so every
        # task (and worker) gets a share; shards merge back in rank order, i.e. the input's order
        src_dir, glob = split_documents(src_dir, work / "filter_input", tasks), "*.parquet"
    pipeline, names = filter_pipeline(
        src_dir, shards, dropped, chain, blocklist, glob_pattern=glob, examples_per_filter=examples_per_filter
    )
    with open_executor(executor, workers=min(workers, tasks), warm=LAZY_IMPORTS) as runner:
        stats = step_counts(runner.run(pipeline, work / "filter_logs", tasks=tasks, workers=workers))
    n_out = merge_shards(shards, out, sort_by=())  # rank-numbered shards of consecutive rows: input order
    reader = stats[0] if stats else {}
    n_in = reader.get("documents", 0)
    funnel = []
    remaining = n_in
    for name, st in zip(names, stats[1 : 1 + len(names)]):
        reasons = {k[len("dropped_") :]: v for k, v in st.items() if k.startswith("dropped_")}
        dropped_n = st.get("dropped", 0)
        funnel.append(
            {
                "filter": name,
                "in": remaining,
                "dropped": dropped_n,
                "kept": remaining - dropped_n,
                "reasons": reasons,
            }
        )
        remaining -= dropped_n
    edited = stats[1 + len(names)].get("edited", 0) if len(stats) > 1 + len(names) else 0
    return {
        "documents_in": n_in,
        "documents_out": n_out,
        "keep_rate": (n_out / n_in) if n_in else 0.0,
        "funnel": funnel,
        "edited_documents": edited,
        "examples": dropped_examples(dropped, names, examples_per_filter),
    }


def split_documents(src_dir: Path, out_dir: Path, n: int) -> Path:
    """Write ``src_dir``'s documents as ``n`` Parquet files of consecutive rows (``00000.parquet``...)."""
    import pyarrow.parquet as pq

    from .schema import read_documents

    table = read_documents(src_dir)
    out = fresh_dir(out_dir)
    size = -(-table.num_rows // n) if table.num_rows else 0
    for i in range(n):
        pq.write_table(table.slice(i * size, size) if size else table, out / f"{i:05d}.parquet")
    return out


def dropped_examples(dropped_dir: Path, names: list[str], k: int) -> list[dict[str, Any]]:

    out = []
    for name in names:
        files = sorted((dropped_dir / name).glob("*.jsonl"))
        n = 0
        for f in files:
            with open(f, encoding="utf-8") as fh:
                for line in fh:
                    d = json.loads(line)
                    m = d.get("metadata") or {}
                    out.append(
                        {
                            "filter": name,
                            "reason": m.get("filter_reason", ""),
                            "url": m.get("url", ""),
                            "text": (d.get("text") or "")[:300],
                        }
                    )
                    n += 1
                    if n >= k:
                        break
            if n >= k:
                break
    return out


def first_emptying_filter(funnel: list[dict[str, Any]]) -> str | None:
    """The first filter after which no document was left (the one to blame for an empty output)."""
    for f in funnel:
        if f["in"] > 0 and f["kept"] == 0:
            return f["filter"]
    return None
