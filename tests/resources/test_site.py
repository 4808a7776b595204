"""The default crawl's offline site must be a function of the Python version alone: two renders in
different processes (other hash seeds, other environments) give the same bytes, and no page carries the
renderer's environment, interpreter path or object addresses. Otherwise two homes with the same crawl
version would train on different text (and the environment's secrets would end up in the corpus)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("os", "platform", "collections", "configparser", "inspect")


def _render(dest: Path, seed: str, secret: str) -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); from pathlib import Path; "
        f"from resources.site import render_site; render_site(Path({str(dest)!r}), {MODULES!r})"
    )
    env = {**os.environ, "PYTHONHASHSEED": seed, "LMFORGE_TEST_SECRET": secret}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=dest.parent)


@pytest.mark.slow
def test_two_renders_in_different_processes_are_identical_and_leak_nothing(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _render(a, "1", "s3cr3t-one")
    _render(b, "2", "s3cr3t-two")
    pages = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert pages == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in pages:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    for p in a.glob("*.html"):
        text = p.read_text(encoding="utf-8")
        assert "s3cr3t" not in text and " at 0x" not in text, p.name
        assert sys.executable not in text and str(ROOT) not in text, p.name
    assert "Lib/os.py" in (a / "os.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_the_site_does_not_depend_on_the_state_of_the_process_that_asks_for_it(tmp_path, monkeypatch):
    """Module pages show module-level values; serving files initialises ``mimetypes`` (its ``inited`` flag
    and maps change), so a site rendered by a process that had already served or crawled would differ."""
    import mimetypes

    from resources.site import LocalDocsSite

    mods = ("mimetypes", "os")
    monkeypatch.setattr(mimetypes, "inited", False)
    a = LocalDocsSite(tmp_path / "a", mods).ensure_rendered()
    mimetypes.init()
    b = LocalDocsSite(tmp_path / "b", mods).ensure_rendered()
    for rel in ("mimetypes.html", "os.html", "index.html"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
