"""A polite, resumable HTTP crawler that writes WARC files and a fetch log.

Key design choices:

* Standard library only (threads; one request at a time per call of ``ops/data/fetch.py``, which holds the
  address guard and every size and time limit). Links come from ``ops/data/links.py``, robots.txt rules
  from ``ops/data/robots.py``, WARC records and the fetch log go through ``ops/data/crawl_store.py``.
* Politeness per host (``host:port``): a semaphore bounds concurrent requests and a "next start" time
  enforces the delay (the larger of the configured delay and robots.txt ``Crawl-delay``, capped).
* Resume: every fetch is appended to ``journal.jsonl`` in the work directory *after* its WARC record is
  flushed. On restart, WARC files are truncated to the end of the last journaled record (a record written
  but not journaled, or half-written by a crash, is discarded) and the frontier is rebuilt from the
  journal (links of stored pages that were not fetched yet). Journaled URLs are never fetched again.
* Redirects are followed by the crawler, not the fetcher, so every hop is journaled and checked against
  the allowed hosts, the seen URLs and ``max_redirects``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.robotparser import RobotFileParser

from .crawl_store import WarcSink, fetch_summary, read_journal, write_fetch_log
from .fetch import Fetch, Fetcher
from .links import extract_links
from .robots import robots_rules
from .urls import host_allowed, netloc_of, normalize_url


class CrawlInterrupted(RuntimeError):
    """Raised when ``should_stop`` asks the crawl to stop; the work directory can be resumed."""


@dataclass
class CrawlSettings:
    seeds: list[str]
    allowed_hosts: list[str] = field(default_factory=list)  # empty: the hosts of the seeds
    local: bool = False
    max_depth: int = 3
    max_pages: int = 500
    max_bytes: int = 256 * 1024 * 1024
    max_page_bytes: int = 2 * 1024 * 1024
    content_types: tuple[str, ...] = ("text/html", "application/xhtml+xml")
    user_agent: str = "lmforge-crawler/0.1"
    per_host_delay_s: float = 0.0
    max_crawl_delay_s: float = 10.0
    per_host_concurrency: int = 2
    workers: int = 4
    timeout_s: float = 10.0
    page_deadline_s: float = 30.0
    max_retries: int = 2
    backoff_s: float = 0.5
    max_retry_after_s: float = 30.0
    max_redirects: int = 5
    respect_robots: bool = True
    warc_file_max_bytes: int = 64 * 1024 * 1024
    connect_map: dict[str, str] = field(default_factory=dict)
    accept_encoding: str = "gzip, deflate"  # the codings _BodyDecoder decodes; "identity" asks for none



def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _HostState:
    def __init__(self, concurrency: int):
        self.sem = threading.Semaphore(concurrency)
        self.lock = threading.Lock()
        self.next_start = 0.0
        self.robots: RobotFileParser | None = None
        self.robots_done = False
        self.delay = 0.0


class Crawler:
    def __init__(
        self,
        s: CrawlSettings,
        work: Path,
        log: Callable[[str], None] = print,
        should_stop: Callable[[], bool] | None = None,
    ):
        if not s.seeds:
            raise ValueError("crawl needs at least one seed URL")
        self.s = s
        seeds = []
        for u in s.seeds:
            n = normalize_url(u)
            if n is None:
                raise ValueError(f"seed {u!r} is not an http(s) URL")
            seeds.append(n)
        self.seeds = seeds
        self.allowed = [a.lower() for a in s.allowed_hosts] or sorted({netloc_of(u) for u in seeds})
        self.work = work
        self.log = log
        self.should_stop = should_stop
        self.fetcher = Fetcher(s)
        self.sink = WarcSink(work / "warc", s.warc_file_max_bytes)
        self.journal_path = work / "journal.jsonl"
        self.hosts: dict[str, _HostState] = {}
        self.lock = threading.Condition()
        self.frontier: deque[tuple[str, int]] = deque()
        self.seen: set[str] = set()
        self.pages = 0
        self.bytes = 0
        self.in_flight = 0
        self.resumed_entries = 0
        self.stop_reason: str | None = None
        self._jfh: Any = None

    # ---- journal / resume -------------------------------------------------------------------
    def _load_journal(self) -> None:
        entries: list[dict[str, Any]] = []
        if self.journal_path.exists():
            raw = self.journal_path.read_bytes()
            good = 0
            for line in raw.splitlines(keepends=True):
                if not line.endswith(b"\n"):
                    break  # a line half-written by a crash
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    break
                good += len(line)
            if good != len(raw):
                with self.journal_path.open("r+b") as fh:
                    fh.truncate(good)
        # Discard WARC bytes that no journal line vouches for (written before a crash, or half-written).
        ends: dict[str, int] = {}
        for e in entries:
            if e.get("warc_file"):
                ends[e["warc_file"]] = max(ends.get(e["warc_file"], 0), e["offset"] + e["length"])
        for p in sorted((self.work / "warc").glob("crawl-*.warc.gz")):
            keep = ends.get(p.name, 0)
            if p.stat().st_size != keep:
                if keep == 0:
                    p.unlink()
                else:
                    with p.open("r+b") as fh:
                        fh.truncate(keep)
        self.sink = WarcSink(self.work / "warc", self.s.warc_file_max_bytes)
        links: list[tuple[str, int]] = []
        for e in entries:
            if e.get("robots"):
                continue
            self.seen.add(e["url"])
            if e.get("redirect_to"):
                self.seen.add(e["redirect_to"])
            if e.get("warc_file"):
                self.pages += 1
                self.bytes += e["bytes"]
                links.extend((u, e["depth"] + 1) for u in e.get("links", []))
        self.resumed_entries = len(entries)
        pending = [(u, d) for u, d in links if u not in self.seen]
        fetched = {e["url"] for e in entries if not e.get("robots")}
        for e in entries:
            # A redirect target journaled as "seen" but never fetched (crash mid-chain) is fetched now.
            t = e.get("redirect_to")
            if t and t not in fetched:
                pending.append((t, e["depth"]))
                self.seen.discard(t)
        for u in self.seeds:
            if u not in fetched:
                pending.insert(0, (u, 0))
        for u, d in pending:
            self._enqueue(u, d)

    def _journal(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self._jfh.write(json.dumps(entry, separators=(",", ":")) + "\n")
            self._jfh.flush()

    # ---- politeness ---------------------------------------------------------------------------
    def _host(self, netloc: str) -> _HostState:
        with self.lock:
            h = self.hosts.get(netloc)
            if h is None:
                h = self.hosts[netloc] = _HostState(self.s.per_host_concurrency)
            return h

    def _wait_turn(self, h: _HostState) -> None:
        with h.lock:
            now = time.monotonic()
            start = max(now, h.next_start)
            h.next_start = start + max(self.s.per_host_delay_s, h.delay)
        if start > now:
            time.sleep(start - now)

    def _robots(self, url: str, netloc: str, h: _HostState) -> RobotFileParser | None:
        if not self.s.respect_robots:
            return None
        with h.lock:
            if h.robots_done:
                return h.robots
            scheme = url.split(":", 1)[0]
            robots_url = f"{scheme}://{netloc}/robots.txt"
            f = self.fetcher.fetch(robots_url, max_bytes=512 * 1024, accept_any_type=True)
            rp, delay = robots_rules(f, robots_url, self.s.user_agent, self.s.max_crawl_delay_s)
            if delay is not None:
                h.delay = delay
            h.robots, h.robots_done = rp, True
        self._journal(
            {
                "url": robots_url,
                "status": f.status,
                "bytes": len(f.body),
                "fetched_at": _now(),
                "error": f.error,
                "warc_file": None,
                "offset": None,
                "length": None,
                "depth": None,
                "robots": True,
                "attempts": 1,
            }
        )
        return rp

    # ---- frontier -----------------------------------------------------------------------------
    def _enqueue(self, url: str, depth: int) -> None:
        if url in self.seen or depth > self.s.max_depth:
            return
        if not host_allowed(netloc_of(url), self.allowed):
            return
        self.seen.add(url)
        self.frontier.append((url, depth))

    def _fetch_with_retries(self, url: str, h: _HostState) -> tuple[Fetch, int]:
        attempt = 0
        while True:
            self._wait_turn(h)
            f = self.fetcher.fetch(url)
            attempt += 1
            if not f.retryable or attempt > self.s.max_retries:
                return f, attempt
            wait = self.s.backoff_s * (2 ** (attempt - 1))
            if f.retry_after is not None:
                wait = max(wait, min(f.retry_after, self.s.max_retry_after_s))
            time.sleep(wait)

    def _process(self, url: str, depth: int) -> None:
        hops = 0
        while True:
            netloc = netloc_of(url)
            h = self._host(netloc)
            rp = self._robots(url, netloc, h)
            entry: dict[str, Any] = {
                "url": url,
                "depth": depth,
                "status": None,
                "bytes": 0,
                "error": None,
                "warc_file": None,
                "offset": None,
                "length": None,
                "redirect_to": None,
            }
            if rp is not None and not rp.can_fetch(self.s.user_agent, url):
                entry.update(error="disallowed by robots.txt", fetched_at=_now(), attempts=0)
                self._journal(entry)
                return
            with h.sem:
                f, attempts = self._fetch_with_retries(url, h)
            fetched_at = _now()
            entry.update(
                status=f.status,
                bytes=len(f.body),
                error=f.error,
                fetched_at=fetched_at,
                attempts=attempts,
                content_type=f.header("Content-Type"),
            )
            if f.status is not None and 300 <= f.status < 400:
                target = normalize_url(f.header("Location") or "", url)
                entry["redirect_to"] = target
                with self.lock:
                    reason = None
                    if target is None:
                        reason = "redirect without a usable Location"
                    elif not host_allowed(netloc_of(target), self.allowed):
                        reason = f"redirect to a host that is not allowed: {netloc_of(target)}"
                    elif target in self.seen:
                        reason = "redirect to an already seen URL (loop or duplicate)"
                    elif hops >= self.s.max_redirects:
                        reason = f"more than {self.s.max_redirects} redirects"
                    else:
                        self.seen.add(target)
                entry["error"] = reason
                self._journal(entry)
                if reason:
                    return
                url, hops = target, hops + 1
                continue
            if f.status is not None and 200 <= f.status < 300 and not f.error:
                with self.lock:
                    full = self.pages >= self.s.max_pages or self.bytes + len(f.body) > self.s.max_bytes
                    if not full:
                        self.pages += 1
                        self.bytes += len(f.body)
                if full:
                    entry["error"] = "not stored: page or byte limit reached"
                    self._journal(entry)
                    return
                wf, off, length = self.sink.write(url, f, fetched_at)
                links = extract_links(f.body, url) if depth < self.s.max_depth else []
                entry.update(warc_file=wf, offset=off, length=length, links=links)
                self._journal(entry)
                with self.lock:
                    for u in links:
                        self._enqueue(u, depth + 1)
                    self.lock.notify_all()
                return
            self._journal(entry)
            return

    # ---- main loop ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.work.mkdir(parents=True, exist_ok=True)
        self._load_journal()
        self._jfh = self.journal_path.open("a", encoding="utf-8")
        errors: list[BaseException] = []
        try:

            def worker() -> None:
                while True:
                    with self.lock:
                        while True:
                            if errors or self.stop_reason:
                                return
                            if self.should_stop and self.should_stop():
                                self.stop_reason = "interrupted"
                                self.lock.notify_all()
                                return
                            if self.frontier and self.pages < self.s.max_pages:
                                url, depth = self.frontier.popleft()
                                self.in_flight += 1
                                break
                            if self.in_flight == 0:
                                self.lock.notify_all()
                                return
                            self.lock.wait(0.2)
                    try:
                        self._process(url, depth)
                    except BaseException as e:  # surfaced after the threads stop
                        with self.lock:
                            errors.append(e)
                    finally:
                        with self.lock:
                            self.in_flight -= 1
                            self.lock.notify_all()

            threads = [
                threading.Thread(target=worker, name=f"crawl-{i}", daemon=True)
                for i in range(max(1, self.s.workers))
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            self._jfh.close()
        if errors:
            raise errors[0]
        if self.stop_reason == "interrupted":
            raise CrawlInterrupted(f"crawl interrupted after {self.pages} stored pages; rerun to resume")
        return {
            "pages": self.pages,
            "bytes": self.bytes,
            "frontier_left": len(self.frontier),
            "resumed_entries": self.resumed_entries,
        }


def crawl(
    s: CrawlSettings,
    work: Path,
    out: Path,
    log: Callable[[str], None] = print,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Crawl (or resume) into ``work``, then copy ``warc/*.warc.gz`` and write ``fetch_log.parquet`` in
    ``out``. Returns summary figures."""
    import shutil

    t0 = time.time()
    summary = Crawler(s, work, log, should_stop).run()
    (out / "warc").mkdir(parents=True, exist_ok=True)
    for p in sorted((work / "warc").glob("crawl-*.warc.gz")):
        shutil.copyfile(p, out / "warc" / p.name)
    entries = read_journal(work)
    write_fetch_log(entries, out / "fetch_log.parquet")
    summary.update(fetch_summary(entries))
    summary["wall_s"] = round(time.time() - t0, 3)
    summary["settings"] = {k: v for k, v in asdict(s).items() if k != "connect_map"}
    return summary
