"""What a crawl keeps: gzip-per-record WARC response records, the fetch journal read back, the fetch log.

Key design choice: WARC files rotate at a size limit and each record is appended and flushed under one lock,
so a record's ``(file, offset, length)`` returned by :meth:`WarcSink.write` is final when the crawler
journals it; on resume the crawler trusts exactly the journaled bytes. The fetch log is the journal as
Parquet with a fixed schema (one row per request, robots.txt requests flagged), the same whether pages were
crawled or imported from existing WARC files.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .fetch import Fetch


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


def read_journal(work: Path) -> list[dict[str, Any]]:
    p = work / "journal.jsonl"
    if not p.exists():
        return []
    return [json.loads(ln) for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]


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
