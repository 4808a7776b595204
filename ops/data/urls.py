"""URL normalisation, host allow-lists and the private-address guard used by the crawler.

Key design choice: a URL has exactly one canonical spelling (lower-case scheme and host, no default port,
no fragment or user info, dot segments resolved, percent-escapes upper-cased, query parameters sorted), so
the crawler's "seen" set de-duplicates ``/a/../b``, ``HTTP://Host:80/b`` and ``/b#x`` as one page.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _norm_escapes(s: str) -> str:
    def fix(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch in _UNRESERVED else "%" + m.group(1).upper()

    return re.sub(r"%([0-9A-Fa-f]{2})", fix, s)


def normalize_url(url: str, base: str | None = None) -> str | None:
    """The canonical form of ``url`` (resolved against ``base``), or ``None`` if it is not http(s)."""
    try:
        if base:
            url = urljoin(base, url.strip())
        p = urlsplit(url.strip())
        scheme = p.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            return None
        host = (p.hostname or "").lower().rstrip(".")
        port = p.port
    except ValueError:
        return None
    if not host:
        return None
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port in (None, DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    path = p.path or "/"
    trailing = path.endswith("/")
    path = posixpath.normpath(path)
    path = "/" if path in (".", "/", "//") else ("/" + path.lstrip("/"))
    if trailing and not path.endswith("/"):
        path += "/"
    path = _norm_escapes(path)
    query = urlencode(sorted(parse_qsl(p.query, keep_blank_values=True)), doseq=True) if p.query else ""
    return urlunsplit((scheme, netloc, path, query, ""))


def netloc_of(url: str) -> str:
    """``host`` or ``host:port`` of a canonical URL (the unit of allow-lists and politeness)."""
    return urlsplit(url).netloc


def host_allowed(netloc: str, allowed: list[str]) -> bool:
    """``allowed`` entries are ``host``, ``host:port`` or ``*.domain`` (any subdomain of domain)."""
    host = netloc.rsplit(":", 1)[0] if not netloc.endswith("]") else netloc
    for a in allowed:
        a = a.lower()
        if a.startswith("*."):
            if host == a[2:] or host.endswith(a[1:]):
                return True
        elif a == netloc or a == host:
            return True
    return False


def is_public_address(ip: str) -> bool:
    """True for globally routable unicast addresses; False for loopback, private, link-local, reserved,
    multicast and unspecified ones (including IPv4-mapped IPv6 forms of those)."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast
