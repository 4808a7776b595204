"""The links of a fetched HTML page, as the crawler follows them.

Key design choice: a page's ``rel="nofollow"`` links are skipped and a ``<meta name="robots"
content="nofollow">`` page yields no links at all; every link is canonicalised (``ops/data/urls.py``) and
kept once, in document order, so a page always hands the frontier the same links in the same order.
Malformed markup never fails a page: the links parsed before the error are kept.
"""

from __future__ import annotations

from html.parser import HTMLParser

from .urls import normalize_url


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
