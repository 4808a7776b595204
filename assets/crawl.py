"""Stage kind ``crawl``: web pages -> a ``warc`` artifact (WARC/1.1 response records + fetch_log.parquet).

Key design choice: three sources produce the same artifact (the built-in offline site of Python's
documentation, any HTTP seeds, existing WARC files), so everything downstream reads WARC whatever the
origin. The offline site is a resource (``resources/site.py``) served on loopback for the length of the run,
and its renderer version is part of the stage version; imported WARC files enter the version by their
identity (path, size, mtime, sha256). The crawler itself (robots.txt, limits, retries, resume from
``run.work``) is ``ops/data/crawl.py``, imported inside ``run``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .data import expand_paths, file_identity, glob_paths
from .registry import (
    CheckOutcome,
    CheckSpec,
    Json,
    StageConfig,
    StageKind,
    StageResult,
    StageRun,
    Table,
    register,
)


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


# The fields each source reads besides `source` and `snapshot`: local_docs fixes the seeds, hosts and address
# itself (the built-in site), warc imports the files as they are (no fetching, so no crawl limit applies).
_NOT_LIMITS = {"source", "snapshot", "seeds", "allowed_hosts", "local", "warc"}
_LIMITS = tuple(f for f in CrawlConfig.model_fields if f not in _NOT_LIMITS)
SOURCE_FIELDS = {
    "local_docs": set(_LIMITS),
    "http": {"seeds", "allowed_hosts", "local", *_LIMITS},
    "warc": {"warc"},
}


def _unused_fields(c: CrawlConfig) -> list[tuple[str, str]]:
    """A field the source does not read, set to anything but its default, would be silently ignored."""
    errs = []
    for f, info in CrawlConfig.model_fields.items():
        if f in {"source", "snapshot"} or f in SOURCE_FIELDS[c.source]:
            continue
        if getattr(c, f) != info.get_default(call_default_factory=True):
            used = " or ".join(s for s, fields in SOURCE_FIELDS.items() if f in fields)
            errs.append((f, f"only used with source: {used} (source is {c.source}); remove it"))
    return errs


def _validate_crawl(c: CrawlConfig, refs: dict[str, str]) -> list[tuple[str, str]]:
    from ops.data.urls import normalize_url

    errs = _unused_fields(c)
    if c.source == "http":
        if not c.seeds:
            errs.append(("seeds", "source: http needs at least one seed URL"))
        for s in c.seeds:
            if normalize_url(s) is None:
                errs.append(("seeds", f"{s!r} is not an http(s) URL"))
    if c.source == "warc":
        if not c.warc:
            errs.append(("warc", "source: warc needs at least one WARC file or glob"))
        try:
            glob_paths(c.warc)
        except FileNotFoundError as e:
            errs.append(("warc", str(e)))
    return errs


def _fingerprint_crawl(c: CrawlConfig) -> Any:
    if c.source == "warc":
        return file_identity(glob_paths(c.warc))
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

        summary = import_warcs(expand_paths(c.warc), run.out, run.log)
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
