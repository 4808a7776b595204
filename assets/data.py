"""Stage kinds of the data half: ``crawl``, ``load_documents``, ``extract``, ``filter``, ``dedupe``,
``decontaminate``.

Key design choice: each kind is config + a thin ``run`` that calls ``ops/data`` (imported inside ``run``,
so loading Dagster definitions never imports datatrove) and turns its figures into metrics, metadata and
checks. Web pages come in as a ``warc`` artifact from ``crawl`` (the built-in offline site, any HTTP
seeds, or existing WARC files); ready-made text (Parquet/JSONL with a text column) skips HTML and comes in
as ``documents`` through ``load_documents``. Everything downstream reads and writes the one documents
schema of ``ops/data/schema.py``. The kinds that run datatrove pipelines (extract, filter, dedupe) share one
``executor`` setting (:class:`DataExecutor`): this machine, a Ray cluster or Slurm. It is a run option, out
of the version: the same tasks write the same shards whichever executor runs them, and the stages merge
shards in a canonical order, so moving a stage to a cluster reuses what is stored.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .registry import (
    CheckOutcome,
    CheckSpec,
    Json,
    Markdown,
    StageConfig,
    StageKind,
    StageResult,
    StageRun,
    Table,
    ref,
    register,
    run_option,
)


def _file_identity(paths: list[Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        h = hashlib.sha256()
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        st = p.stat()
        out.append({"path": str(p), "size": st.st_size, "mtime": int(st.st_mtime), "sha256": h.hexdigest()})
    return out


def _expand(patterns: list[str]) -> list[Path]:
    from ops.data.warc import expand_paths  # light: datatrove is imported by ops.data.warc

    return expand_paths(patterns)


def _glob_paths(patterns: list[str]) -> list[Path]:
    """Like ``ops.data.warc.expand_paths`` without importing datatrove (used by validate/fingerprint)."""
    import glob

    out: list[Path] = []
    for pat in patterns:
        hits = sorted(glob.glob(str(Path(pat).expanduser()), recursive=True))
        if not hits:
            raise FileNotFoundError(f"no file matches {pat!r}")
        out.extend(Path(h).resolve() for h in hits if Path(h).is_file())
    return sorted(set(out))


def _funnel_md(rows: list[dict[str, Any]], cols: list[str]) -> Markdown:
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = "".join("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |\n" for r in rows)
    return Markdown(head + body)


# ------------------------------------------------------------------------------------------- executor
class DataExecutor(BaseModel):
    """Where a data stage's datatrove tasks run; the same shape for every kind that has ``executor``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["local", "ray", "slurm"] = Field(
        "local",
        description="local: this machine (tasks in-process or forked workers); ray: a running Ray cluster "
        "(datatrove's RayPipelineExecutor); slurm: sbatch array jobs (datatrove's SlurmPipelineExecutor)",
    )
    address: str = Field(
        "", description="ray: host:port of the cluster's head (the port given to `ray start --head --port`)"
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, description="ray: how long to wait for the address to answer"
    )
    cpus_per_task: int = Field(1, ge=1, description="ray/slurm: CPUs reserved per datatrove task")
    mem_per_cpu_gb: float = Field(2.0, gt=0, description="ray/slurm: memory reserved per CPU, in GB")
    partition: str = Field("", description="slurm: partition to submit to")
    time: str = Field("", description="slurm: time limit per task (sbatch --time, e.g. 01:00:00)")
    qos: str = Field("", description="slurm: quality of service (sbatch --qos); empty: the cluster's default")
    job_name: str = Field("lmforge", description="slurm: job name prefix")
    env_command: str = Field(
        "",
        description="slurm: shell line that sets up Python on the nodes; empty: activate this "
        "interpreter's environment (a filesystem the nodes share)",
    )
    sbatch_args: dict[str, str] = Field(
        default_factory=dict, description="slurm: extra sbatch options, e.g. {account: my-account}"
    )
    poll_s: float = Field(10.0, gt=0, description="slurm: seconds between checks for finished tasks")

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> DataExecutor:
        set_ = self.model_fields_set
        if self.kind == "ray" and not self.address:
            raise ValueError("kind: ray needs address (host:port of the Ray head)")
        if self.kind != "ray" and "address" in set_:
            raise ValueError(f"address is only used with kind: ray (kind is {self.kind})")
        if self.kind == "slurm":
            missing = [f for f in ("partition", "time") if not getattr(self, f)]
            if missing:
                raise ValueError(f"kind: slurm needs {' and '.join(missing)}")
        else:
            extra = sorted(
                set_ & {"partition", "time", "qos", "job_name", "env_command", "sbatch_args", "poll_s"}
            )
            if extra:
                raise ValueError(f"{', '.join(extra)} only apply to kind: slurm (kind is {self.kind})")
        return self

    def settings(self, stage: str) -> Any:
        """The plain settings ``ops.data`` runs with; errors name ``stage`` and this field."""
        from ops.data.pipeline import ExecutorSettings

        return ExecutorSettings(
            **self.model_dump(exclude={"sbatch_args"}),
            sbatch_args=dict(self.sbatch_args),
            setting=f"stage {stage!r}, field 'executor'",
        )


def _executor_field() -> Any:
    return run_option(
        DataExecutor(),
        description="where datatrove runs the tasks: {kind: local} (default), {kind: ray, address: "
        "host:port} or {kind: slurm, partition: ..., time: ...}; not part of the version (same output)",
    )


# ---------------------------------------------------------------------------------------------- crawl
class CrawlConfig(StageConfig):
    source: Literal["local_docs", "http", "warc"] = Field(
        "local_docs",
        description="local_docs: crawl the built-in offline site of Python's documentation "
        "(served on 127.0.0.1 by the `site` resource); http: crawl `seeds`; warc: import existing WARC files",
    )
    seeds: list[str] = Field(default_factory=list, description="start URLs (source: http)")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="hosts the crawler may fetch (`host`, `host:port` or `*.domain`); "
        "empty: the hosts of the seeds",
    )
    local: bool = Field(
        False,
        description="allow private/loopback addresses (a crawl of your own network); "
        "otherwise they are refused",
    )
    warc: list[str] = Field(default_factory=list, description="WARC files or globs (source: warc)")
    max_depth: int = Field(3, ge=0, description="link depth from the seeds")
    max_pages: int = Field(400, ge=1, description="stop after storing this many pages")
    max_bytes: int = Field(256 * 2**20, ge=1, description="stop after storing this many body bytes in total")
    max_page_bytes: int = Field(2 * 2**20, ge=1, description="larger bodies are refused (streamed check)")
    per_host_delay_s: float = Field(
        0.0,
        ge=0,
        description="minimum time between request starts per host "
        "(robots.txt Crawl-delay raises it, up to max_crawl_delay_s)",
    )
    max_crawl_delay_s: float = Field(10.0, ge=0, description="cap on a robots.txt Crawl-delay")
    per_host_concurrency: int = Field(2, ge=1, description="simultaneous requests per host")
    workers: int = Field(4, ge=1, description="crawler threads")
    timeout_s: float = Field(10.0, gt=0, description="connect and per-read socket timeout")
    page_deadline_s: float = Field(30.0, gt=0, description="whole-body deadline (slow bodies)")
    max_retries: int = Field(2, ge=0, description="retries of timeouts, connection errors, 429 and 5xx")
    backoff_s: float = Field(
        0.5, ge=0, description="first retry wait; doubles each retry; Retry-After wins when larger"
    )
    max_retry_after_s: float = Field(30.0, ge=0, description="cap on a server's Retry-After")
    max_redirects: int = Field(5, ge=0, description="redirect hops per URL (only within allowed hosts)")
    respect_robots: bool = Field(True, description="obey robots.txt")
    user_agent: str = Field("lmforge-crawler/0.1", description="User-Agent header and robots.txt agent")
    snapshot: str = Field(
        "",
        description="a label (e.g. a date) that is part of the version: change it to "
        "re-crawl the same seeds instead of hitting the cache",
    )


def _validate_crawl(c: CrawlConfig, refs: dict[str, str]) -> list[tuple[str, str]]:
    from ops.data.urls import normalize_url

    errs = []
    if c.source == "http":
        if not c.seeds:
            errs.append(("seeds", "source: http needs at least one seed URL"))
        for s in c.seeds:
            if normalize_url(s) is None:
                errs.append(("seeds", f"{s!r} is not an http(s) URL"))
    elif c.seeds:
        errs.append(("seeds", f"seeds are only used with source: http (source is {c.source})"))
    if c.source == "warc":
        if not c.warc:
            errs.append(("warc", "source: warc needs at least one WARC file or glob"))
        try:
            _glob_paths(c.warc)
        except FileNotFoundError as e:
            errs.append(("warc", str(e)))
    return errs


def _fingerprint_crawl(c: CrawlConfig) -> Any:
    if c.source == "warc":
        return _file_identity(_glob_paths(c.warc))
    if c.source == "local_docs":
        import sys

        from resources.site import MODULES, RENDERER_VERSION

        return {"python": sys.version, "renderer": RENDERER_VERSION, "modules": list(MODULES)}
    return None


def _run_crawl(run: StageRun) -> StageResult:
    c: CrawlConfig = run.config
    from ops.data.crawl import CrawlSettings, crawl

    if c.source == "warc":
        from ops.data.warc import import_warcs

        summary = import_warcs(_expand(c.warc), run.out, run.log)
        pages = summary["responses"]
        md: dict[str, Any] = {"import": Json(summary)}
        checks = [
            CheckOutcome("non_empty", pages > 0, f"{pages} response records imported"),
            CheckOutcome(
                "no_bad_records",
                summary["bad_records"] == 0,
                f"{summary['bad_records']} damaged record(s) skipped",
                {"examples": summary["bad_examples"]},
            ),
        ]
        return StageResult(
            metrics={"pages": pages, "bad_records": summary["bad_records"], "warc_files": summary["files"]},
            metadata=md,
            checks=checks,
        )

    kw = c.model_dump(exclude={"source", "seeds", "warc", "snapshot"})
    kw["content_types"] = ("text/html", "application/xhtml+xml")
    if c.source == "local_docs":
        from resources.site import local_docs_target, make_resource

        site = run.resources.get("site") or make_resource(run.home)
        with site.serve() as base:
            # the site fixes seeds, hosts and where to connect; the config keeps the limits
            target = {**kw, **local_docs_target(base)}
            summary = crawl(CrawlSettings(**target), run.work, run.out, run.log)
    else:
        summary = crawl(CrawlSettings(seeds=list(c.seeds), **kw), run.work, run.out, run.log)
    pages = summary["pages"]
    status_rows = [{"status": k, "count": v} for k, v in sorted(summary["status_counts"].items())]
    error_rows = [{"error": k, "count": v} for k, v in sorted(summary["error_counts"].items())]
    md = {
        "status_counts": Table(status_rows),
        "errors": Table(error_rows or [{"error": "", "count": 0}]),
        "summary": Json({k: v for k, v in summary.items() if k != "settings"}),
    }
    checks = [CheckOutcome("non_empty", pages > 0, f"{pages} pages stored")]
    return StageResult(
        metrics={
            "pages": pages,
            "bytes": summary["bytes"],
            "requests": summary["requests"],
            "resumed_entries": summary["resumed_entries"],
            "wall_s": summary["wall_s"],
        },
        metadata=md,
        checks=checks,
    )


register(
    StageKind(
        name="crawl",
        config=CrawlConfig,
        produces="warc",
        run=_run_crawl,
        description="Polite HTTP crawl (robots.txt, allowed hosts, limits, retries, resume) or WARC import "
        "-> warc/*.warc.gz + fetch_log.parquet",
        checks=(
            CheckSpec("non_empty", "at least one page was stored", blocking=True),
            CheckSpec("no_bad_records", "every imported WARC record was readable (source: warc)"),
        ),
        validate=_validate_crawl,
        fingerprint=_fingerprint_crawl,
        resources=("site",),
    )
)


# ------------------------------------------------------------------------------------- load_documents
class LoadDocumentsConfig(StageConfig):
    paths: list[str] = Field(description="Parquet or JSONL(.gz) files or globs holding one document per row")
    text_column: str = Field("text", description="column holding the document text")
    id_column: str | None = Field(None, description="column with the source's own id (kept in parent_ids)")
    url_column: str | None = Field(None, description="column with the document URL, if any")
    on_decode_error: Literal["replace", "skip", "fail"] = Field(
        "replace", description="JSONL lines that are not valid UTF-8: decode with U+FFFD, skip, or fail"
    )


def _validate_load(c: LoadDocumentsConfig, refs: dict[str, str]) -> list[tuple[str, str]]:
    try:
        files = _glob_paths(c.paths)
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
            errs.append(("paths", f"{f}: unsupported file type (use .parquet, .jsonl or .jsonl.gz)"))
    return errs


def _run_load(run: StageRun) -> StageResult:
    c: LoadDocumentsConfig = run.config
    from ops.data.load import load_documents

    errs = _validate_load(c, {})
    if errs:
        raise ValueError(f"stage {run.stage!r}, field {errs[0][0]!r}: {errs[0][1]}")
    summary = load_documents(
        _glob_paths(c.paths),
        run.out,
        text_column=c.text_column,
        id_column=c.id_column,
        url_column=c.url_column,
        on_decode_error=c.on_decode_error,
        source=run.version,
    )
    n = summary["documents"]
    checks = [CheckOutcome("non_empty", n > 0, f"{n} documents loaded")]
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
        validate=_validate_load,
        fingerprint=lambda c: _file_identity(_glob_paths(c.paths)),
    )
)


# --------------------------------------------------------------------------------------------- extract
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
    executor: DataExecutor = _executor_field()


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


# ---------------------------------------------------------------------------------------------- filter
class FilterConfig(StageConfig):
    from_: str = ref("documents", alias="from", description="documents to filter")
    filters: list[str | dict[str, Any]] = Field(
        default_factory=lambda: ["language", "gopher_repetition", "gopher_quality", "c4", "fineweb"],
        description="filters in order: names or {name: parameters}; names: language (py3langid; "
        "{language: [en]} or {language: {languages: [en], min_score: 0.65}}), gopher_repetition, "
        "gopher_quality, c4, fineweb (parameters are datatrove's)",
    )
    blocklist: str | None = Field(
        None,
        description="a text file of blocked domains (with subdomains) or URL "
        "prefixes, one per line; applied first",
    )
    min_keep_rate: float = Field(0.02, ge=0, le=1, description="keep-rate check: lower bound")
    max_keep_rate: float = Field(1.0, ge=0, le=1, description="keep-rate check: upper bound")
    tasks: int = Field(1, ge=1, description="datatrove tasks")
    workers: int = Field(1, ge=1, description="datatrove worker processes (1: in-process)")
    executor: DataExecutor = _executor_field()
    examples_per_filter: int = Field(3, ge=0, description="dropped documents shown per filter")


def _validate_filter(c: FilterConfig, refs: dict[str, str]) -> list[tuple[str, str]]:
    from ops.data.filter_spec import normalize_chain

    errs = []
    try:
        normalize_chain(c.filters)
    except ValueError as e:
        errs.append(("filters", str(e)))
    if c.blocklist and not Path(c.blocklist).expanduser().is_file():
        errs.append(("blocklist", f"{c.blocklist} does not exist"))
    if c.min_keep_rate > c.max_keep_rate:
        errs.append(("min_keep_rate", "is above max_keep_rate"))
    return errs


def _run_filter(run: StageRun) -> StageResult:
    c: FilterConfig = run.config
    errs = _validate_filter(c, {})
    if errs:
        raise ValueError(f"stage {run.stage!r}, field {errs[0][0]!r}: {errs[0][1]}")
    from ops.data.filter_spec import normalize_chain
    from ops.data.filters import first_emptying_filter, load_blocklist, run_filters

    src = run.input("from_")
    block = load_blocklist(Path(c.blocklist).expanduser()) if c.blocklist else None
    r = run_filters(
        src.path,
        run.out,
        run.work,
        normalize_chain(c.filters),
        block,
        tasks=c.tasks,
        workers=c.workers,
        examples_per_filter=c.examples_per_filter,
        executor=c.executor.settings(run.stage),
    )
    n = r["documents_out"]
    if n > 0:
        ne = CheckOutcome("non_empty", True, f"{n} of {r['documents_in']} documents kept")
    else:
        culprit = first_emptying_filter(r["funnel"])
        why = (
            f"filter {culprit!r} removed every remaining document"
            if culprit
            else "the input had no documents"
        )
        ne = CheckOutcome("non_empty", False, f"empty output: {why}", {"filter": culprit or ""})
    rate = r["keep_rate"]
    kr = CheckOutcome(
        "keep_rate_in_bounds",
        c.min_keep_rate <= rate <= c.max_keep_rate,
        f"keep rate {rate:.3f} (bounds {c.min_keep_rate}..{c.max_keep_rate})",
    )
    funnel_rows = [
        {
            "filter": f["filter"],
            "in": f["in"],
            "dropped": f["dropped"],
            "kept": f["kept"],
            "reasons": ", ".join(f"{k}: {v}" for k, v in sorted(f["reasons"].items())),
        }
        for f in r["funnel"]
    ]
    metrics: dict[str, Any] = {"documents_in": r["documents_in"], "documents_out": n, "keep_rate": rate}
    for f in r["funnel"]:
        metrics[f"dropped_{f['filter']}"] = f["dropped"]
    md = {
        "funnel": _funnel_md(funnel_rows, ["filter", "in", "dropped", "kept", "reasons"]),
        "dropped_examples": Table(r["examples"] or [{"filter": "", "reason": "", "url": "", "text": ""}]),
    }
    return StageResult(metrics=metrics, metadata=md, checks=[ne, kr])


def _fingerprint_filter(c: FilterConfig) -> Any:
    return _file_identity([Path(c.blocklist).expanduser()]) if c.blocklist else None


register(
    StageKind(
        name="filter",
        config=FilterConfig,
        produces="documents",
        run=_run_filter,
        description="Quality filters (datatrove Gopher, C4, FineWeb), offline language ID, URL block list",
        checks=(
            CheckSpec(
                "non_empty",
                "some documents survive; if not, names the filter that removed the rest",
                blocking=True,
            ),
            CheckSpec("keep_rate_in_bounds", "the share of kept documents is within the configured bounds"),
        ),
        validate=_validate_filter,
        fingerprint=_fingerprint_filter,
    )
)


# ---------------------------------------------------------------------------------------------- dedupe
class DedupeConfig(StageConfig):
    from_: str = ref("documents", alias="from", description="documents to de-duplicate")
    exact: bool = Field(True, description="remove exact duplicates (normalised-text hash) first")
    near: Literal["minhash", "none"] = Field("minhash", description="near-duplicate method")
    n_grams: int = Field(5, ge=1, description="MinHash shingle size in words")
    num_buckets: int = Field(
        40,
        ge=1,
        description="LSH bands; with 5 hashes per band: >= 95% of near copies caught down to 5-gram Jaccard "
        "0.6, none of 2280 distinct documents removed (experiments/LEDGER.md)",
    )
    hashes_per_bucket: int = Field(5, ge=1, description="hashes per LSH band")
    seed: int = Field(1, description="MinHash hash-function seed")
    workers: int = Field(1, ge=1, description="datatrove worker processes for the bucket stage")
    executor: DataExecutor = _executor_field()
    examples: int = Field(10, ge=0, description="removed/kept pairs shown in the metadata")


def _run_dedupe(run: StageRun) -> StageResult:
    c: DedupeConfig = run.config
    from ops.data.dedupe import dedupe

    src = run.input("from_")
    r = dedupe(
        src.path,
        run.out,
        run.work,
        exact=c.exact,
        near=c.near == "minhash",
        n_grams=c.n_grams,
        num_buckets=c.num_buckets,
        hashes_per_bucket=c.hashes_per_bucket,
        seed=c.seed,
        workers=c.workers,
        examples=c.examples,
        executor=c.executor.settings(run.stage),
    )
    n = r["documents_out"]
    left = r["exact_duplicates_left"]
    checks = [
        CheckOutcome("non_empty", n > 0, f"{n} documents left"),
        CheckOutcome("no_exact_duplicates", left == 0, f"{left} exact duplicate(s) left"),
    ]
    metrics = {
        k: r[k]
        for k in (
            "documents_in",
            "documents_out",
            "exact_removed",
            "near_removed",
            "clusters",
            "largest_cluster",
            "lsh_threshold",
        )
    }
    from collections import Counter

    hist = Counter(r["cluster_sizes"])
    md = {
        "removed_pairs": Table(r["examples"] or [{"method": "", "removed_url": "", "kept_url": ""}]),
        "cluster_sizes": Table(
            [{"size": s, "clusters": n_} for s, n_ in sorted(hist.items())] or [{"size": 0, "clusters": 0}]
        ),
    }
    return StageResult(metrics=metrics, metadata=md, checks=checks)


register(
    StageKind(
        name="dedupe",
        config=DedupeConfig,
        produces="documents",
        run=_run_dedupe,
        description="Exact (normalised hash) and MinHash-LSH near-duplicate removal (datatrove)",
        checks=(
            CheckSpec("non_empty", "some documents are left", blocking=True),
            CheckSpec(
                "no_exact_duplicates", "no two output documents have the same normalised text", blocking=True
            ),
        ),
    )
)


# --------------------------------------------------------------------------------------- decontaminate
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
    )
)
