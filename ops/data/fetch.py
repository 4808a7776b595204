"""One HTTP request of the crawler, with its address guard and every size and time limit.

Key design choices:

* Standard library only (``http.client`` on a socket we connect ourselves). Each host name is resolved once
  per request and every address is checked *before* connecting; the socket is connected to the checked
  address, so a DNS answer cannot swap a public address for a private one between check and connect.
  Private/loopback addresses are refused unless the crawl is declared ``local``.
* Bodies are streamed with ``read1`` under both a per-read socket timeout and a whole-page deadline, so a
  server that trickles bytes or sends an endless body costs at most ``page_deadline_s`` and
  ``max_page_bytes``; ``Content-Length`` over the limit is refused before reading anything.
* A compressed body (``Content-Encoding: gzip`` or ``deflate``, asked for or not) is decoded while it
  streams, and ``max_page_bytes`` bounds the *decoded* size, so a decompression bomb stops at the limit.
  Any other coding (``br``, ``zstd``, stacked codings) or a corrupt stream is refused with the reason in the
  fetch log: what is stored as a page is always the decoded document, never compressed bytes.
* ``connect_map`` maps a canonical ``host[:port]`` to the address really connected to (like curl's
  ``--resolve``): the offline site is served on a random port but crawled as a stable host name, so URLs,
  document ids and versions do not depend on the port of the day.

A :class:`Fetch` never raises for a network or HTTP failure: the error and whether a retry may help are
fields of the result, and the crawler (``ops/data/crawl.py``) decides.
"""

from __future__ import annotations

import email.utils
import http.client
import socket
import ssl
import time
import zlib
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING, Any

from .urls import is_public_address

if TYPE_CHECKING:
    from .crawl import CrawlSettings

RETRY_STATUSES = {429, 500, 502, 503, 504}


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
