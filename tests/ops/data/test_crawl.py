"""The crawler against local test servers: robots.txt, allowed hosts, private addresses, broken servers,
redirect loops, retries, resume; the WARC it writes round-trips through warcio and datatrove."""

from __future__ import annotations

import gzip
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest

from ops.data.crawl import CrawlInterrupted, CrawlSettings, crawl
from ops.data.urls import host_allowed, is_public_address, normalize_url

pytestmark = pytest.mark.unit

PROSE = "<p>" + "The quick brown fox jumps over the lazy dog near the river bank. " * 20 + "</p>"


class Server:
    """A threaded test server whose routes are ``path -> handler(req)``; counts requests per path."""

    def __init__(self, routes):
        self.routes = routes
        self.hits: Counter[str] = Counter()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                outer.hits[path] += 1
                fn = outer.routes.get(path)
                if fn is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                try:
                    fn(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def html(body: str, status: int = 200, ctype: str = "text/html; charset=utf-8", extra=()):
    def fn(req):
        data = f"<html><body>{body}</body></html>".encode()
        req.send_response(status)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            req.send_header(k, v)
        req.end_headers()
        req.wfile.write(data)

    return fn


def redirect(to: str):
    def fn(req):
        req.send_response(302)
        req.send_header("Location", to)
        req.send_header("Content-Length", "0")
        req.end_headers()

    return fn


def slow_body(req):
    req.send_response(200)
    req.send_header("Content-Type", "text/html")
    req.send_header("Content-Length", "1000")
    req.end_headers()
    for _ in range(40):
        req.wfile.write(b"<p>x</p>")
        req.wfile.flush()
        time.sleep(0.1)


def big_body(req):  # no Content-Length: the limit must be enforced while streaming
    req.send_response(200)
    req.send_header("Content-Type", "text/html")
    req.send_header("Connection", "close")
    req.end_headers()
    for _ in range(200):
        req.wfile.write(b"<p>" + b"y" * 4096 + b"</p>")


def stall(req):
    time.sleep(2.0)
    html("late")(req)


def flaky():
    state = {"n": 0}

    def fn(req):
        state["n"] += 1
        if state["n"] == 1:
            req.send_response(503)
            req.send_header("Retry-After", "0")
            req.send_header("Content-Length", "0")
            req.end_headers()
        else:
            html(PROSE + "recovered")(req)

    return fn


@pytest.fixture
def servers():
    other = Server({"/": html(PROSE + "other host")})
    links = [
        "/a",
        "/a/../a",
        "/a#frag",
        "/b",
        "/private/secret",
        "/missing",
        "/error",
        "/slow",
        "/big",
        "/image",
        "/loop1",
        "/away",
        "/stall",
        "/flaky",
        f"{other.base}/",
        "mailto:x@y.z",
    ]
    main_routes = {
        "/robots.txt": lambda r: _plain(r, "User-agent: *\nDisallow: /private/\n"),
        "/": html(PROSE + "".join(f'<a href="{u}">{u}</a>' for u in links)),
        "/a": html(PROSE + '<a href="/c">c</a>'),
        "/b": html(PROSE + "b page"),
        "/c": html(PROSE + "c page (depth 2)"),
        "/private/secret": html("secret"),
        "/error": html("boom", status=500),
        "/slow": slow_body,
        "/big": big_body,
        "/image": html("not html", ctype="image/png"),
        "/loop1": redirect("/loop2"),
        "/loop2": redirect("/loop1"),
        "/away": redirect(f"{other.base}/"),
        "/stall": stall,
        "/flaky": flaky(),
    }
    main = Server(main_routes)
    yield main, other
    main.close()
    other.close()


def _plain(req, text):
    data = text.encode()
    req.send_response(200)
    req.send_header("Content-Type", "text/plain")
    req.send_header("Content-Length", str(len(data)))
    req.end_headers()
    req.wfile.write(data)


def _settings(main, **kw):
    base = dict(
        seeds=[main.base + "/"],
        local=True,
        max_depth=3,
        max_pages=100,
        timeout_s=1.0,
        page_deadline_s=1.5,
        max_retries=1,
        backoff_s=0.05,
        max_page_bytes=64 * 1024,
        workers=4,
    )
    base.update(kw)
    return CrawlSettings(**base)


def test_url_normalization_and_guards():
    assert normalize_url("HTTP://Example.COM:80/a/./b/../c?b=2&a=1#frag") == "http://example.com/a/c?a=1&b=2"
    assert normalize_url("/x/%7euser", "https://h.org:443/y") == "https://h.org/x/~user"
    assert normalize_url("mailto:a@b.c") is None and normalize_url("javascript:void(0)") is None
    assert normalize_url("http://h:99999/") is None
    assert host_allowed("a.example.com", ["*.example.com"]) and not host_allowed(
        "example.org", ["*.example.com"]
    )
    assert host_allowed("h:8080", ["h:8080"]) and not host_allowed("h:8081", ["h:8080"])
    for ip in (
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "169.254.169.254",
        "::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
    ):
        assert not is_public_address(ip), ip
    assert is_public_address("8.8.8.8")


def test_crawler_is_polite_and_survives_broken_servers(servers, tmp_path):
    main, other = servers
    summary = crawl(_settings(main), tmp_path / "work", tmp_path / "out")
    log = pq.read_table(tmp_path / "out" / "fetch_log.parquet").to_pylist()
    by_url = {r["url"]: r for r in log if not r["robots"]}
    stored = {r["url"] for r in log if r["warc_file"]}
    b = main.base
    assert stored == {f"{b}/", f"{b}/a", f"{b}/b", f"{b}/c", f"{b}/flaky"}
    assert summary["pages"] == 5
    # robots.txt obeyed, other host never contacted (neither by link nor by redirect)
    assert main.hits["/private/secret"] == 0 and "robots" in by_url[f"{b}/private/secret"]["error"]
    assert sum(other.hits.values()) == 0
    assert "not allowed" in by_url[f"{b}/away"]["error"]
    # normalisation: /a, /a/../a and /a#frag are one page, fetched once
    assert main.hits["/a"] == 1
    # failures are logged, not fatal
    assert by_url[f"{b}/missing"]["status"] == 404
    assert by_url[f"{b}/error"]["status"] == 500 and main.hits["/error"] == 2  # one retry
    assert "deadline" in by_url[f"{b}/slow"]["error"]
    assert "too large" in by_url[f"{b}/big"]["error"]
    assert "content-type" in by_url[f"{b}/image"]["error"]
    assert by_url[f"{b}/stall"]["error"].startswith("timeout")
    loop = [r for r in log if r["url"] in (f"{b}/loop1", f"{b}/loop2")]
    assert any("already seen" in (r["error"] or "") for r in loop) and main.hits["/loop1"] == 1
    assert main.hits["/flaky"] == 2 and by_url[f"{b}/flaky"]["attempts"] == 2  # 503 + Retry-After, then 200

    # The WARC round-trips: warcio reads every record at its logged offset; datatrove's WarcReader too.
    from warcio.archiveiterator import ArchiveIterator

    warc = tmp_path / "out" / "warc" / "crawl-00000.warc.gz"
    with warc.open("rb") as fh:
        recs = [
            (r.rec_headers.get_header("WARC-Target-URI"), r.content_stream().read())
            for r in ArchiveIterator(fh)
        ]
    assert {u for u, _ in recs} == stored
    assert all(b"quick brown fox" in body for _, body in recs)
    for r in log:
        if r["warc_file"]:
            with warc.open("rb") as fh:
                fh.seek(r["offset"])
                rec = next(iter(ArchiveIterator(fh)))
                assert rec.rec_headers.get_header("WARC-Target-URI") == r["url"]
    from datatrove.pipeline.readers import WarcReader

    docs = list(WarcReader(str(tmp_path / "out" / "warc"), glob_pattern="*.warc.gz").run())
    assert {d.metadata["url"] for d in docs} == stored


def test_private_addresses_refused_unless_local(servers, tmp_path):
    main, _ = servers
    summary = crawl(_settings(main, local=False), tmp_path / "work", tmp_path / "out")
    assert summary["pages"] == 0
    assert sum(main.hits.values()) == 0
    log = pq.read_table(tmp_path / "out" / "fetch_log.parquet").to_pylist()
    assert log and all("non-public address" in (r["error"] or "") for r in log)


def test_resume_does_not_refetch_stored_pages(servers, tmp_path):
    main, _ = servers
    work = tmp_path / "work"
    calls = {"n": 0}

    def stop_soon():
        calls["n"] += 1
        return (work / "journal.jsonl").exists() and (work / "journal.jsonl").read_text().count(
            '"warc_file":"'
        ) >= 2

    with pytest.raises(CrawlInterrupted):
        crawl(_settings(main, workers=1), work, tmp_path / "out1", should_stop=stop_soon)
    first = Counter(main.hits)
    # Simulate a crash in the middle of writing a record: garbage after the last journaled record.
    warc = work / "warc" / "crawl-00000.warc.gz"
    with warc.open("ab") as fh:
        fh.write(gzip.compress(b"WARC/1.1\r\nWARC-Type: response\r\n")[:20])
    summary = crawl(_settings(main, workers=1), work, tmp_path / "out2")
    assert summary["resumed_entries"] > 0
    assert summary["pages"] == 5
    for path in ("/", "/a", "/b", "/c"):
        assert main.hits[path] == 1, (path, first[path], main.hits[path])
    from warcio.archiveiterator import ArchiveIterator

    with (tmp_path / "out2" / "warc" / "crawl-00000.warc.gz").open("rb") as fh:
        urls = [r.rec_headers.get_header("WARC-Target-URI") for r in ArchiveIterator(fh)]
    assert len(urls) == len(set(urls)) == 5


def test_crawl_limits_pages_and_depth(servers, tmp_path):
    main, _ = servers
    s = crawl(_settings(main, max_depth=1), tmp_path / "w1", tmp_path / "o1")
    log = pq.read_table(tmp_path / "o1" / "fetch_log.parquet").to_pylist()
    assert f"{main.base}/c" not in {r["url"] for r in log} and s["pages"] == 4
    s = crawl(_settings(main, max_pages=2), tmp_path / "w2", tmp_path / "o2")
    assert s["pages"] == 2


def test_local_docs_site_serves_linked_pages(tmp_path):
    from resources.site import local_docs_target, make_resource

    site = make_resource(tmp_path)
    with site.serve() as base:
        s = CrawlSettings(max_depth=1, max_pages=20, **local_docs_target(base))
        summary = crawl(s, tmp_path / "work", tmp_path / "out")
    assert summary["pages"] == 20
    log = pq.read_table(tmp_path / "out" / "fetch_log.parquet").to_pylist()
    assert all(r["url"].startswith("http://docs.python.local/") for r in log)
    root = site.ensure_rendered()
    assert (root / "topic-assignment.html").is_file() and (root / "json.html").is_file()
    assert not (root / "antigravity.html").exists() and not (root / "this.html").exists()
    assert "file:" not in (root / "json.html").read_text()


# ---- compressed bodies --------------------------------------------------------------------------------
def _page(text: str) -> bytes:
    return f"<html><body>{PROSE}{text}</body></html>".encode()


def _send(req, body: bytes, coding: str | None):
    req.send_response(200)
    req.send_header("Content-Type", "text/html; charset=utf-8")
    if coding:
        req.send_header("Content-Encoding", coding)
    req.send_header("Content-Length", str(len(body)))
    req.end_headers()
    req.wfile.write(body)


def _gzip_if_asked(data: bytes):
    """A well-behaved server: gzip only when the request's Accept-Encoding allows it."""

    def fn(req):
        asked = "gzip" in (req.headers.get("Accept-Encoding") or "")
        _send(req, gzip.compress(data) if asked else data, "gzip" if asked else None)

    return fn


def _always(body: bytes, coding: str, asked: list[str] | None = None):
    """A server that sends ``body`` with ``coding`` whatever the request asked for (noted in ``asked``)."""

    def fn(req):
        if asked is not None:
            asked.append(req.headers.get("Accept-Encoding"))
        _send(req, body, coding)

    return fn


@pytest.fixture
def compressing_server():
    import zlib

    pages = {p: _page(f"page {p}") for p in ("/asked", "/unasked", "/zlib", "/raw", "/members")}
    raw = zlib.compressobj(wbits=-15)
    asked: list[str] = []
    routes = {
        "/robots.txt": _always(gzip.compress(b"User-agent: *\nDisallow: /private/\n"), "gzip"),
        "/": _gzip_if_asked(_page("".join(f'<a href="{p}">{p}</a>' for p in (
            *pages, "/bomb", "/br", "/truncated", "/private/x")))),
        "/asked": _gzip_if_asked(pages["/asked"]),
        "/unasked": _always(gzip.compress(pages["/unasked"]), "gzip", asked),
        "/zlib": _always(zlib.compress(pages["/zlib"]), "deflate"),
        "/raw": _always(raw.compress(pages["/raw"]) + raw.flush(), "deflate"),
        "/members": _always(gzip.compress(pages["/members"][:100]) + gzip.compress(pages["/members"][100:]),
                            "x-gzip"),
        # 32 MiB of spaces in ~32 KiB of gzip: under the page limit on the wire, 500x over it decoded
        "/bomb": _always(gzip.compress(b"<p>" + b" " * (32 << 20)), "gzip"),
        "/br": _always(b"\x8b\x02\x80hello\x03", "br"),
        "/truncated": _always(gzip.compress(pages["/asked"])[:-20], "gzip"),
        "/private/x": _gzip_if_asked(_page("robots.txt, gzip-encoded, forbids this page")),
    }
    server = Server(routes)
    yield server, pages, asked
    server.close()


def _stored_records(out):
    from warcio.archiveiterator import ArchiveIterator

    recs = {}
    for warc in sorted((out / "warc").glob("*.warc.gz")):
        with warc.open("rb") as fh:
            for r in ArchiveIterator(fh):
                recs[r.rec_headers.get_header("WARC-Target-URI")] = (r.http_headers, r.content_stream().read())
    return recs


@pytest.mark.parametrize("accept", [None, "identity"])
def test_compressed_bodies_are_stored_decoded_or_refused(compressing_server, tmp_path, accept):
    """gzip and deflate bodies (asked for or not) are stored decoded, under the page limit counted in decoded
    bytes; a decompression bomb stops at the limit, an unknown coding or a truncated stream is refused with
    its reason in the fetch log. No page is ever stored as compressed bytes."""
    server, pages, asked = compressing_server
    kw = {"accept_encoding": accept} if accept else {}  # default: asks for gzip and deflate
    summary = crawl(_settings(server, **kw), tmp_path / "work", tmp_path / "out")
    log = {r["url"]: r for r in pq.read_table(tmp_path / "out" / "fetch_log.parquet").to_pylist()}
    b = server.base
    recs = _stored_records(tmp_path / "out")
    assert set(recs) == {f"{b}/", *(f"{b}{p}" for p in pages)} and summary["pages"] == 1 + len(pages)
    for p, html_bytes in pages.items():
        headers, body = recs[f"{b}{p}"]
        assert body == html_bytes, p
        assert headers.get_header("Content-Encoding") is None
        assert headers.get_header("Content-Length") == str(len(html_bytes))
        assert log[f"{b}{p}"]["bytes"] == len(html_bytes)
    assert b"/asked" in recs[f"{b}/"][1]  # the index was decoded, so its links were followed
    assert asked == [accept or "gzip, deflate"]  # with "identity", /unasked sent gzip without being asked
    assert server.hits["/bomb"] == 1 and server.hits["/br"] == 1 and server.hits["/private/x"] == 0
    assert log[f"{b}/bomb"]["error"] == "too large: gzip-decoded body exceeds 65536 bytes"
    assert log[f"{b}/br"]["error"] == "content-encoding 'br' not supported (gzip and deflate are)"
    assert log[f"{b}/truncated"]["error"] == "content-encoding 'gzip': body ends before the end of the stream"
    assert log[f"{b}/private/x"]["error"] == "disallowed by robots.txt"  # gzip-encoded robots.txt was read
