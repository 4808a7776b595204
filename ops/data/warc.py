"""Reading WARC files tolerantly, and importing existing WARC files (Common Crawl style) as a crawl artifact.

Key design choice: a damaged WARC (truncated download, corrupt gzip member, garbage header) never aborts a
stage. Records are read one by one; the first unreadable record of a file is counted as ``bad_records``
and the rest of that file is skipped (a gzip stream cannot be re-synchronised reliably), every other file
is still read. The HTML decoder tries the declared charset, then UTF-8, then chardet, and as a last resort
decodes with replacement characters and counts the document under ``broken_encoding``.
"""

from __future__ import annotations

import glob
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from datatrove.pipeline.readers.base import BaseDiskReader

HTML_TYPES = ("text/html", "application/xhtml+xml")


def _charset(content_type: str | None) -> str | None:
    if not content_type:
        return None
    for part in content_type.split(";")[1:]:
        k, _, v = part.strip().partition("=")
        if k.lower() == "charset" and v:
            return v.strip("\"' ")
    return None


def decode_html(body: bytes, content_type: str | None = None) -> tuple[str, str]:
    """``(text, how)`` where ``how`` is the encoding used, or ``"replace"`` if the bytes were broken."""
    tried = []
    for enc in (_charset(content_type), "utf-8"):
        if enc and enc not in tried:
            tried.append(enc)
            try:
                return body.decode(enc), enc
            except (UnicodeDecodeError, LookupError):
                pass
    try:
        import cchardet

        det = cchardet.detect(body)
        if det.get("encoding") and (det.get("confidence") or 0) >= 0.5:
            return body.decode(det["encoding"]), det["encoding"].lower()
    except (ImportError, UnicodeDecodeError, LookupError):
        pass
    return body.decode("utf-8", errors="replace"), "replace"


def iter_warc_records(
    path: str | Path, on_error: Callable[[str], None], opener: Callable[[], Any] | None = None
) -> Iterator[tuple[int, Any, bytes]]:
    """``(offset, record, payload)`` for each readable record; calls ``on_error(message)`` once if the file
    breaks. The payload is read here (warcio only knows a record's offset once it was read to its end).

    ``opener`` (a callable returning a binary file object) replaces ``open(path, "rb")`` when given."""
    from warcio.archiveiterator import ArchiveIterator
    from warcio.exceptions import ArchiveLoadFailed

    with opener() if opener else open(path, "rb") as fh:
        it = ArchiveIterator(fh)
        while True:
            try:
                record = next(it)
                if not str(record.format).startswith("warc"):
                    raise ValueError(
                        f"not a WARC record (format {record.format!r}; ARC files are not supported)"
                    )
                payload = record.content_stream().read()
                missing = getattr(record.raw_stream, "limit", 0)
                if missing:  # the file ended inside this record (Content-Length promised more bytes)
                    raise EOFError(f"record truncated: {missing} bytes missing")
                offset = it.get_record_offset()
            except StopIteration:
                return
            except (ArchiveLoadFailed, EOFError, zlib.error, OSError, ValueError) as e:
                on_error(f"{Path(path).name}: {type(e).__name__}: {e}")
                return
            try:
                yield offset, record, payload
            except GeneratorExit:
                return


class TolerantWarcReader(BaseDiskReader):
    """datatrove reader of HTML response records that survives damaged files (see module docstring).

    Each document's metadata carries ``url``, ``date``, ``source_record`` (``<relative file>@<offset>``)
    and ``encoding``.
    """

    name = "🕷 Warc (tolerant)"
    _requires_dependencies = ["warcio"]

    def read_file(self, filepath: str):
        errors: list[str] = []
        opener = lambda: self.data_folder.open(filepath, "rb", compression=None)  # noqa: E731
        for offset, record, body in iter_warc_records(filepath, errors.append, opener):
            with self.track_time():
                if record.rec_type not in ("response", "conversion"):
                    continue
                ptype = record.rec_headers.get_header("WARC-Identified-Payload-Type")
                http_ctype = record.http_headers.get_header("Content-Type") if record.http_headers else None
                ctype = (ptype or (http_ctype or "").split(";", 1)[0]).strip().lower()
                if record.rec_type == "response" and ctype not in HTML_TYPES:
                    self.stat_update("non_html")
                    continue
                if record.http_headers is not None and record.rec_type == "response":
                    st = record.http_headers.get_statuscode()
                    if not st or not st.startswith("2"):
                        self.stat_update("non_2xx")
                        continue
                text, how = decode_html(body, http_ctype)
                if how == "replace":
                    self.stat_update("broken_encoding")
                data = {
                    "text": text,
                    "id": record.rec_headers.get_header("WARC-Record-ID"),
                    "url": record.rec_headers.get_header("WARC-Target-URI"),
                    "date": record.rec_headers.get_header("WARC-Date"),
                    "source_record": f"{filepath}@{offset}",
                    "encoding": how,
                }
                document = self.get_document_from_dict(data, filepath, offset)
                if not document:
                    continue
            yield document
        if errors:
            self.stat_update("bad_records", value=len(errors))
            self.stat_update("bad_files")
            from datatrove.utils.logging import logger

            logger.warning(f"damaged WARC, rest of file skipped: {errors[0]}")


def expand_paths(patterns: list[str]) -> list[Path]:
    """Expand globs (``**`` allowed); sorted, de-duplicated; an entry matching nothing is an error."""
    out: list[Path] = []
    for pat in patterns:
        hits = sorted(glob.glob(str(Path(pat).expanduser()), recursive=True))
        if not hits:
            raise FileNotFoundError(f"no file matches {pat!r}")
        out.extend(Path(h).resolve() for h in hits if Path(h).is_file())
    seen, uniq = set(), []
    for p in out:
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    return uniq


def import_warcs(paths: list[Path], out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Copy the records of existing WARC files (gzip or plain) into ``out/warc/*.warc.gz`` and write the
    fetch log. Damaged files contribute their readable records; the rest is counted, not fatal."""
    from warcio.warcwriter import WARCWriter

    from .crawl_store import write_fetch_log

    (out / "warc").mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    bad: list[str] = []
    records = 0
    for i, src in enumerate(paths):
        name = f"import-{i:05d}.warc.gz"
        with (out / "warc" / name).open("wb") as fh:
            writer = WARCWriter(fh, gzip=True)
            for _, rec, payload in iter_warc_records(src, bad.append):
                offset = fh.tell()
                writer.write_record(_copy_record(writer, rec, payload))
                records += 1
                if rec.rec_type != "response":
                    continue
                status = rec.http_headers.get_statuscode() if rec.http_headers else None
                date = rec.rec_headers.get_header("WARC-Date")
                entries.append(
                    {
                        "url": rec.rec_headers.get_header("WARC-Target-URI"),
                        "status": int(status) if status and status.isdigit() else None,
                        "bytes": int(rec.rec_headers.get_header("Content-Length") or 0),
                        "fetched_at": _iso(date),
                        "error": None,
                        "warc_file": name,
                        "offset": offset,
                        "length": fh.tell() - offset,
                        "content_type": rec.http_headers.get_header("Content-Type")
                        if rec.http_headers
                        else None,
                    }
                )
    for b in bad:
        log(f"damaged WARC: {b}")
    write_fetch_log(entries, out / "fetch_log.parquet")
    return {
        "files": len(paths),
        "records": records,
        "responses": len(entries),
        "bad_records": len(bad),
        "bad_examples": bad[:5],
    }


def _copy_record(writer: Any, rec: Any, payload: bytes) -> Any:
    """A fresh record with the same headers and the decoded payload (transfer/content encodings removed,
    so the copy is self-consistent)."""
    from io import BytesIO

    from warcio.statusandheaders import StatusAndHeaders

    http = None
    if rec.http_headers is not None:
        drop = {"transfer-encoding", "content-encoding", "content-length"}
        hdrs = [(k, v) for k, v in rec.http_headers.headers if k.lower() not in drop]
        hdrs.append(("Content-Length", str(len(payload))))
        http = StatusAndHeaders(rec.http_headers.statusline, hdrs, protocol=rec.http_headers.protocol)
    keep = {
        "warc-date",
        "warc-record-id",
        "warc-identified-payload-type",
        "warc-ip-address",
        "warc-target-uri",
    }
    wh = {k: v for k, v in rec.rec_headers.headers if k.lower() in keep}
    uri = wh.pop("WARC-Target-URI", rec.rec_headers.get_header("WARC-Target-URI"))
    return writer.create_warc_record(
        uri, rec.rec_type, payload=BytesIO(payload), http_headers=http, warc_headers_dict=wh
    )


def _iso(date: str | None) -> str | None:
    if not date:
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%fZ"):
        try:
            return datetime.strptime(date, fmt).replace(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            pass
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(0))
