"""A polite, resumable HTTP crawler that writes WARC files and a fetch log.

Key design choices:

* Standard library only (``http.client`` on a socket we connect ourselves, threads). Each host name is
  resolved once per request and every address is checked *before* connecting; the socket is connected to
  the checked address, so a DNS answer cannot swap a public address for a private one between check and
  connect. Private/loopback addresses are refused unless the crawl is declared ``local``.
* Bodies are streamed with ``read1`` under both a per-read socket timeout and a whole-page deadline, so a
  server that trickles bytes or sends an endless body costs at most ``page_deadline_s`` and
  ``max_page_bytes``; ``Content-Length`` over the limit is refused before reading anything.
* A compressed body (``Content-Encoding: gzip`` or ``deflate``, asked for or not) is decoded while it
  streams, and ``max_page_bytes`` bounds the *decoded* size, so a decompression bomb stops at the limit.
  Any other coding (``br``, ``zstd``, stacked codings) or a corrupt stream is refused with the reason in the
  fetch log: what is stored as a page is always the decoded document, never compressed bytes.
* Politeness per host (``host:port``): a semaphore bounds concurrent requests and a "next start" time
  enforces the delay (the larger of the configured delay and robots.txt ``Crawl-delay``, capped).
* Resume: every fetch is appended to ``journal.jsonl`` in the work directory *after* its WARC record is
  flushed. On restart, WARC files are truncated to the end of the last journaled record (a record written
  but not journaled, or half-written by a crash, is discarded) and the frontier is rebuilt from the
  journal (links of stored pages that were not fetched yet). Journaled URLs are never fetched again.
* ``connect_map`` maps a canonical ``host[:port]`` to the address really connected to (like curl's
  ``--resolve``): the offline site is served on a random port but crawled as a stable host name, so URLs,
  document ids and versions do not depend on the port of the day.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import socket
import ssl
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.robotparser import RobotFileParser

from .urls import host_allowed, is_public_address, netloc_of, normalize_url

RETRY_STATUSES = {429, 500, 502, 503, 504}


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


@dataclass
class Fetch:
    """The outcome of one HTTP request (no redirect following)."""

    status: int | None = None
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    error: str | None = None
    retryable: bool = False
    ip: str | None = None
    retry_after: float | None = None

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


class _LinkParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.nofollow = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "a" and a.get("href") and "nofollow" not in a.get("rel", "").lower():
            self.links.append(a["href"])
        elif tag == "meta" and a.get("name", "").lower() == "robots" and "nofollow" in a.get("content", ""):
            self.nofollow = True


def extract_links(html_bytes: bytes, base: str) -> list[str]:
    """Canonical http(s) links of a page, in document order, without duplicates."""
    p = _LinkParser()
    try:
        p.feed(html_bytes.decode("utf-8", errors="replace"))
        p.close()
    except Exception:  # malformed markup: keep what was parsed so far
        pass
    if p.nofollow:
        return []
    out, seen = [], set()
    for href in p.links:
        u = normalize_url(href, base)
        if u and u not in seen:
            seen.add(u)
            out.append(u)
    return out


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        dt = email.utils.parsedate_to_datetime(value)
        return max(0.0, dt.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class ContentEncodingError(ValueError):
    """A body in a coding that is not decoded, or a compressed stream that is corrupt or truncated."""


class _BodyDecoder:
    """Streaming decoder for one ``Content-Encoding`` whose output per call is capped, so the caller can stop
    a decompression bomb after ``limit`` decoded bytes without ever holding more."""

    CODINGS = ("identity", "gzip", "x-gzip", "deflate")

    def __init__(self, header: str | None):
        codings = [c.strip().lower() for c in (header or "").split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if len(codings) > 1:
            raise ContentEncodingError(f"content-encoding {header!r} not supported (stacked codings)")
        self.coding = codings[0] if codings else "identity"
        if self.coding not in self.CODINGS:
            raise ContentEncodingError(f"content-encoding {self.coding!r} not supported (gzip and deflate are)")
        self._z: Any = None
        self._head = b""  # deflate: the first bytes, until they tell zlib-wrapped from raw deflate

    def _new(self) -> Any:
        # gzip: 16 + MAX_WBITS; deflate is zlib-wrapped per RFC 9110 but raw deflate is common, see feed()
        return zlib.decompressobj(16 + zlib.MAX_WBITS if self.coding in ("gzip", "x-gzip") else zlib.MAX_WBITS)

    def feed(self, data: bytes, limit: int) -> bytes:
        """Decode ``data``; returns at most ``limit`` bytes (when it returns exactly ``limit``, more output
        may be pending: the caller treats that as over its limit)."""
        if self.coding == "identity":
            return data[:limit]
        if self._z is None:
            if self.coding == "deflate":
                self._head += data
                if len(self._head) < 2:
                    return b""
                data, h = self._head, self._head
                wrapped = (h[0] & 0x0F) == 8 and ((h[0] << 8) | h[1]) % 31 == 0
                self._z = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            else:
                self._z = self._new()
        out = bytearray()
        try:
            while data and len(out) < limit:
                if self._z.eof:  # a gzip body may hold several members, decoded in turn
                    if self.coding == "deflate":
                        raise ContentEncodingError("content-encoding 'deflate': data after the end of the stream")
                    self._z = self._new()
                # max_length > 0 always (0 would mean unbounded): the loop runs only while len(out) < limit
                out += self._z.decompress(data, limit - len(out))
                # at the end of a member the rest of the input is unused_data; otherwise all input is used
                # or, when the limit was reached, left in unconsumed_tail and dropped with the page
                data = self._z.unused_data if self._z.eof else b""
        except zlib.error as e:
            raise ContentEncodingError(f"content-encoding {self.coding!r}: corrupt body ({e})") from None
        return bytes(out)

    def finish(self) -> None:
        """Raise unless the compressed stream ended properly (a truncated body is not a page)."""
        if self.coding != "identity" and (self._z is None or not self._z.eof):
            raise ContentEncodingError(f"content-encoding {self.coding!r}: body ends before the end of the stream")


class Fetcher:
    """One request at a time per call; the address guard and all size/time limits live here."""

    def __init__(self, s: CrawlSettings):
        self.s = s

    def _resolve(self, netloc: str, scheme: str) -> tuple[str, int, str]:
        target = self.s.connect_map.get(netloc, netloc)
        host, _, port_s = target.rpartition(":") if target.count(":") == 1 else (target, "", "")
        host = host.strip("[]")
        port = int(port_s) if port_s else (443 if scheme == "https" else 80)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"cannot resolve {host}")
        ips = [i[4][0] for i in infos]
        if not self.s.local:
            bad = [ip for ip in ips if not is_public_address(ip)]
            if bad:
                raise PermissionError(
                    f"refused: {host} resolves to non-public address {bad[0]} "
                    "(declare the crawl local to allow it)"
                )
        return ips[0], port, host

    def fetch(self, url: str, max_bytes: int | None = None, accept_any_type: bool = False) -> Fetch:
        s = self.s
        max_bytes = max_bytes or s.max_page_bytes
        from urllib.parse import urlsplit

        p = urlsplit(url)
        f = Fetch()
        try:
            ip, port, host = self._resolve(p.netloc, p.scheme)
        except PermissionError as e:
            f.error = str(e)
            return f
        except OSError as e:
            f.error, f.retryable = f"dns: {e}", True
            return f
        f.ip = ip
        conn: http.client.HTTPConnection | None = None
        try:
            sock = socket.create_connection((ip, port), timeout=s.timeout_s)
            if p.scheme == "https":
                conn = http.client.HTTPSConnection(host, port, timeout=s.timeout_s)
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=s.timeout_s)
            conn.sock = sock
            path = p.path + (f"?{p.query}" if p.query else "")
            conn.putrequest("GET", path or "/", skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", p.netloc)
            conn.putheader("User-Agent", s.user_agent)
            conn.putheader("Accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1")
            conn.putheader("Accept-Encoding", s.accept_encoding)
            conn.putheader("Connection", "close")
            conn.endheaders()
            deadline = time.monotonic() + s.page_deadline_s
            resp = conn.getresponse()
            f.status, f.reason = resp.status, resp.reason
            f.headers = [(k, v) for k, v in resp.getheaders()]
            if f.status in RETRY_STATUSES:
                f.retryable = True
                f.retry_after = _retry_after(f.header("Retry-After"))
                f.error = f"http {f.status}"
                return f
            if 300 <= f.status < 400 or f.status >= 400:
                if f.status >= 400:
                    f.error = f"http {f.status}"
                return f
            ctype = (f.header("Content-Type") or "").split(";", 1)[0].strip().lower()
            if not accept_any_type and ctype not in s.content_types:
                f.error = f"content-type {ctype or 'missing'!r} not accepted"
                return f
            clen = f.header("Content-Length")
            if clen and clen.isdigit() and int(clen) > max_bytes:
                f.error = f"too large: Content-Length {clen} > {max_bytes}"
                return f
            try:
                dec = _BodyDecoder(f.header("Content-Encoding"))
            except ContentEncodingError as e:
                f.error = str(e)
                return f
            buf = BytesIO()
            wire = 0
            try:
                while True:
                    if time.monotonic() > deadline:
                        f.error, f.retryable = f"deadline: body not complete after {s.page_deadline_s}s", True
                        return f
                    chunk = resp.read1(65536)
                    if not chunk:
                        break
                    wire += len(chunk)
                    buf.write(dec.feed(chunk, max_bytes + 1 - buf.tell()))
                    if buf.tell() > max_bytes:
                        what = "body" if dec.coding == "identity" else f"{dec.coding}-decoded body"
                        f.error = f"too large: {what} exceeds {max_bytes} bytes"
                        return f
                    if wire > max_bytes:  # compressed bytes that decode to little are bounded too
                        f.error = f"too large: {dec.coding} body exceeds {max_bytes} bytes on the wire"
                        return f
                dec.finish()
            except ContentEncodingError as e:
                f.error = str(e)
                return f
            f.body = buf.getvalue()
            return f
        except TimeoutError as e:
            f.error, f.retryable = f"timeout: {e}", True
        except (OSError, http.client.HTTPException, ssl.SSLError) as e:
            f.error, f.retryable = f"{type(e).__name__}: {e}", True
        finally:
            if conn is not None:
                conn.close()
        return f


class WarcSink:
    """Appends gzip-per-record WARC response records to rotating files; thread-safe."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder = folder
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        existing = sorted(folder.glob("crawl-*.warc.gz"))
        self.index = int(existing[-1].name[6:11]) if existing else 0

    def _path(self) -> Path:
        return self.folder / f"crawl-{self.index:05d}.warc.gz"

    def write(self, url: str, fetch: Fetch, fetched_at: str) -> tuple[str, int, int]:
        from warcio.statusandheaders import StatusAndHeaders
        from warcio.warcwriter import WARCWriter

        drop = {"transfer-encoding", "content-encoding", "content-length", "connection"}
        headers = [(k, v) for k, v in fetch.headers if k.lower() not in drop]
        headers.append(("Content-Length", str(len(fetch.body))))
        http_headers = StatusAndHeaders(f"{fetch.status} {fetch.reason}", headers, protocol="HTTP/1.1")
        ctype = (fetch.header("Content-Type") or "text/html").split(";", 1)[0].strip().lower()
        with self.lock:
            path = self._path()
            if path.exists() and path.stat().st_size >= self.max_bytes:
                self.index += 1
                path = self._path()
            with path.open("ab") as fh:
                offset = fh.tell()
                w = WARCWriter(fh, gzip=True)
                rec = w.create_warc_record(
                    url,
                    "response",
                    payload=BytesIO(fetch.body),
                    http_headers=http_headers,
                    warc_headers_dict={
                        "WARC-Date": fetched_at,
                        "WARC-Identified-Payload-Type": ctype,
                        **({"WARC-IP-Address": fetch.ip} if fetch.ip else {}),
                    },
                )
                w.write_record(rec)
                fh.flush()
                return path.name, offset, fh.tell() - offset


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
            rp = RobotFileParser(robots_url)
            if f.error and f.error.startswith("refused"):
                rp.allow_all = True  # the address guard refuses the host: each page fetch reports that
            elif f.status == 200 and not f.error:
                rp.parse(f.body.decode("utf-8", errors="replace").splitlines())
            elif f.status in (401, 403) or (f.status is not None and f.status >= 500) or f.status is None:
                rp.disallow_all = True  # unreachable robots.txt: assume full disallow (RFC 9309 2.3.1.4)
            else:
                rp.allow_all = True  # 404 and other 4xx: no restrictions
            cd = rp.crawl_delay(self.s.user_agent) if f.status == 200 else None
            if cd:
                h.delay = min(float(cd), self.s.max_crawl_delay_s)
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


def read_journal(work: Path) -> list[dict[str, Any]]:
    p = work / "journal.jsonl"
    if not p.exists():
        return []
    return [json.loads(ln) for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]


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


def fetch_summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
    from collections import Counter

    status = Counter(str(e.get("status")) for e in entries if not e.get("robots"))
    errs = Counter((e.get("error") or "").split(":", 1)[0] for e in entries if e.get("error"))
    return {"requests": len(entries), "status_counts": dict(status), "error_counts": dict(errs)}


def fetch_log_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("url", pa.string()),
            ("status", pa.int32()),
            ("bytes", pa.int64()),
            ("fetched_at", pa.timestamp("s", tz="UTC")),
            ("error", pa.string()),
            ("warc_file", pa.string()),
            ("offset", pa.int64()),
            ("length", pa.int64()),
            ("depth", pa.int32()),
            ("content_type", pa.string()),
            ("redirect_to", pa.string()),
            ("attempts", pa.int32()),
            ("robots", pa.bool_()),
        ]
    )


def write_fetch_log(entries: list[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = fetch_log_schema()
    rows = []
    for e in entries:
        r = {k: e.get(k) for k in schema.names}
        r["robots"] = bool(e.get("robots"))
        if r["warc_file"]:
            r["warc_file"] = f"warc/{r['warc_file']}"
        if r["fetched_at"]:
            r["fetched_at"] = datetime.strptime(r["fetched_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        rows.append(r)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, compression="zstd")
