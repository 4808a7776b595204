"""What a host's robots.txt answer means for the crawl (RFC 9309).

Key design choice: an unreachable robots.txt (401, 403, a server error, no answer) means *disallow all*,
a missing one (404 and other 4xx) means no restriction, and a host the address guard refuses is left to
fail page by page, so each refused page says why in the fetch log. A ``Crawl-delay`` is honoured up to a
cap, so a hostile value cannot stall the crawl.
"""

from __future__ import annotations

from urllib.robotparser import RobotFileParser

from .fetch import Fetch


def robots_rules(
    f: Fetch, robots_url: str, user_agent: str, max_delay_s: float
) -> tuple[RobotFileParser, float | None]:
    """The rules of ``robots_url`` given its fetch ``f``, and the crawl delay they ask of ``user_agent``
    (capped at ``max_delay_s``; None when they ask none)."""
    rp = RobotFileParser(robots_url)
    if f.error and f.error.startswith("refused"):
        rp.allow_all = True  # the address guard refuses the host: each page fetch reports that
    elif f.status == 200 and not f.error:
        rp.parse(f.body.decode("utf-8", errors="replace").splitlines())
    elif f.status in (401, 403) or (f.status is not None and f.status >= 500) or f.status is None:
        rp.disallow_all = True  # unreachable robots.txt: assume full disallow (RFC 9309 2.3.1.4)
    else:
        rp.allow_all = True  # 404 and other 4xx: no restrictions
    cd = rp.crawl_delay(user_agent) if f.status == 200 else None
    return rp, (min(float(cd), max_delay_s) if cd else None)
