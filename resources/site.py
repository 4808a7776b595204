"""The offline default crawl target: a local HTTP site of documentation that ships with Python.

Key design choice: the site is rendered ahead of time, once, into ``$LMFORGE_HOME/site/<key>/`` as static
HTML, and then served by a threaded ``http.server`` on 127.0.0.1 (port 0, so parallel tests never collide).
pydoc's own live server imports every module a page names and its index links to everything installed
(``antigravity`` opens a browser, ``torch`` costs seconds and GBs); here pydoc only documents a curated
list of pure-Python standard-library modules, plus the language-reference topics of ``pydoc_data``.

Pages link to each other for real (an index links everything; module pages link the modules they mention;
topic pages link their related topics), so the crawler's frontier, depth limit and de-duplication are
exercised. Docstrings are rendered as paragraphs (pydoc's default turns every space into ``&nbsp;`` and
every newline into ``<br>``, which would destroy the prose the quality filters look for). A ``robots.txt``
disallows ``/_internal/`` (linked from the index) so that the default crawl shows robots compliance.

The rendered directory's key hashes the Python version, the module list and this renderer's version, so
upgrading Python re-renders; a render is written to a temporary directory and renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import os
import re
import shutil
import sys
import threading
import uuid
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# 2: no object addresses, environment or install paths (they differed per process and machine)
RENDERER_VERSION = "3"

# Pure-Python standard-library modules that are safe to import (no side effects, no GUI, no network at
# import) and whose docstrings carry prose. Never add antigravity, this, tkinter, idlelib, turtle.
MODULES: tuple[str, ...] = (
    "abc",
    "argparse",
    "base64",
    "bisect",
    "builtins",
    "calendar",
    "cmd",
    "code",
    "codecs",
    "collections",
    "colorsys",
    "configparser",
    "contextlib",
    "contextvars",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "dis",
    "email",
    "enum",
    "filecmp",
    "fileinput",
    "fnmatch",
    "fractions",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "graphlib",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http",
    "imaplib",
    "inspect",
    "io",
    "ipaddress",
    "json",
    "keyword",
    "linecache",
    "locale",
    "logging",
    "lzma",
    "mailbox",
    "mimetypes",
    "netrc",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pdb",
    "pickle",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "pprint",
    "profile",
    "queue",
    "quopri",
    "random",
    "re",
    "reprlib",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "signal",
    "smtplib",
    "socket",
    "socketserver",
    "sqlite3",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "token",
    "tokenize",
    "trace",
    "traceback",
    "types",
    "typing",
    "unittest",
    "urllib",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "zipapp",
    "zipfile",
    "zipimport",
    "zoneinfo",
)

ROBOTS_TXT = "User-agent: *\nDisallow: /_internal/\n"


def _prose_html_doc():
    import pydoc

    class ProseHTMLDoc(pydoc.HTMLDoc):
        """pydoc's HTML renderer with docstrings laid out as paragraphs instead of non-breaking runs."""

        def preformat(self, text):
            text = self.escape(text.expandtabs())
            # A blank line ends a paragraph; a newline followed by indentation keeps code and lists
            # on their own lines; any other newline is a soft wrap inside a sentence.
            text = re.sub(r"\n[ \t]*\n", "<br><br>\n", text)
            text = re.sub(r"\n( +)", lambda m: "<br>\n" + "&nbsp;" * len(m.group(1)), text)
            return text.replace("\n", " ").replace("<br> ", "<br>\n")

    return ProseHTMLDoc()


_HREF = re.compile(r'<a href="([^"]*)">(.*?)</a>', re.S)
# reprs of default values such as ``<object object at 0x7f...>``: the address differs in every process, so
# it would make the site (and everything trained on it) differ between two renders of the same version
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# ``os.environ``'s value would put the renderer's environment (tokens, keys, paths) into the corpus
_ENVIRON = re.compile(r"environ\(\{[^<]*?\}\)")


def _portable(page: str) -> str:
    """A module page that depends only on the Python version: no object addresses, no environment, no
    interpreter path, and standard-library paths relative to the installation (``Lib/os.py``, as in
    CPython's source tree)."""
    import sysconfig

    page = _ENVIRON.sub("environ({...})", _ADDRESS.sub("", page))
    if sys.executable:  # default values such as platform.architecture(executable=sys.executable)
        page = page.replace(sys.executable, "python")
    for key in ("stdlib", "platstdlib"):
        root = sysconfig.get_paths().get(key)
        if root:
            page = page.replace(root.rstrip("/") + "/", "Lib/")
    return page


def _fix_links(page: str, rendered: set[str]) -> str:
    """Keep links to pages that exist on the site (and to the web); unlink the rest (``file:``, modules
    that were not rendered) so the crawl graph has no dead ends made by the renderer itself."""

    def sub(m: re.Match[str]) -> str:
        href, label = m.group(1), m.group(2)
        if href.startswith(("http://", "https://", "#")):
            return m.group(0)
        if href == ".":
            return f'<a href="index.html">{label}</a>'
        target = href.split("#", 1)[0]
        if target.endswith(".html") and target[:-5] in rendered:
            return m.group(0)
        return label

    return _HREF.sub(sub, page)


def _topic_page(title: str, text: str, related: list[str], topics: set[str]) -> str:
    """A language-reference topic as HTML: prose paragraphs as ``<p>``, indented blocks as ``<pre>``."""
    blocks: list[str] = []
    for chunk in re.split(r"\n\s*\n", text.strip("\n")):
        lines = chunk.split("\n")
        if len(lines) == 2 and set(lines[1].strip()) <= set("*=-^") and lines[1].strip():
            blocks.append(f"<h2>{html.escape(lines[0].strip())}</h2>")
        elif all(ln.startswith(" ") for ln in lines if ln.strip()):
            blocks.append(f"<pre>{html.escape(chr(10).join(lines))}</pre>")
        else:
            blocks.append(f"<p>{html.escape(' '.join(ln.strip() for ln in lines))}</p>")
    links = " ".join(f'<a href="topic-{t}.html">{html.escape(t)}</a>' for t in related if t in topics)
    nav = f"<p>Related topics: {links}</p>" if links else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
        f'</title></head><body><p><a href="index.html">Python documentation index</a></p>'
        f"<article><h1>{html.escape(title)}</h1>\n" + "\n".join(blocks) + f"</article>{nav}</body></html>\n"
    )


def render_site(dest: Path, modules: tuple[str, ...] = MODULES) -> dict[str, int]:
    """Render the site into ``dest`` (which must not exist). Returns page counts."""
    import importlib
    import pydoc
    import pydoc_data.topics

    dest.mkdir(parents=True)
    doc = _prose_html_doc()
    rendered: dict[str, object] = {}
    for name in modules:
        try:
            rendered[name] = importlib.import_module(name)
        except Exception:  # a module missing from this Python build is skipped, not fatal
            continue
    names = set(rendered)
    for name, mod in rendered.items():
        page = _portable(doc.page(pydoc.describe(mod), doc.document(mod, name)))
        (dest / f"{name}.html").write_text(_fix_links(page, names), encoding="utf-8")

    topic_texts = pydoc_data.topics.topics
    topic_names = set(topic_texts)
    related: dict[str, set[str]] = {t: set() for t in topic_names}
    label_to_topic = {}
    for label, entry in pydoc.Helper.topics.items():
        target = entry if isinstance(entry, str) else entry[0]
        label_to_topic[label] = target
    for _label, entry in pydoc.Helper.topics.items():
        if isinstance(entry, tuple) and entry[0] in related and len(entry) > 1:
            for other in entry[1].split():
                if label_to_topic.get(other) in topic_names:
                    related[entry[0]].add(label_to_topic[other])
    for t, text in topic_texts.items():
        first = text.strip().split("\n", 1)[0].strip() or t
        (dest / f"topic-{t}.html").write_text(
            _topic_page(first, text, sorted(related[t] - {t}), topic_names), encoding="utf-8"
        )

    internal = dest / "_internal"
    internal.mkdir()
    (internal / "index.html").write_text(
        "<html><body><p>This page is disallowed by robots.txt; a polite crawler never fetches it.</p>"
        "</body></html>\n",
        encoding="utf-8",
    )
    (dest / "robots.txt").write_text(ROBOTS_TXT, encoding="utf-8")
    mods = "\n".join(f'<li><a href="{n}.html">{n}</a></li>' for n in sorted(names))
    tops = "\n".join(f'<li><a href="topic-{t}.html">{t}</a></li>' for t in sorted(topic_names))
    (dest / "index.html").write_text(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Python documentation</title>'
        "</head><body><h1>Python documentation</h1><p>The standard library modules and the language "
        f"reference topics of Python {sys.version.split()[0]}, rendered by pydoc.</p><h2>Language reference "
        f"topics</h2><ul>{tops}</ul><h2>Standard library modules</h2><ul>{mods}</ul>"
        '<p><a href="_internal/index.html">internal</a></p></body></html>\n',
        encoding="utf-8",
    )
    return {"modules": len(names), "topics": len(topic_names)}


def _render_in_fresh_process(dest: Path, modules: tuple[str, ...]) -> None:
    """``render_site`` in a new interpreter with a fixed hash seed and a minimal environment.

    Module pages show module-level values, which are run-time state: ``mimetypes.inited`` and its maps change
    once anything in the process guesses a type (serving the site does), and set reprs follow the per-process
    string hash seed. A fresh interpreter that only imports the modules renders the same bytes every time.
    """
    import subprocess

    root = Path(__file__).resolve().parent.parent
    env = {"PYTHONHASHSEED": "0", "PYTHONPATH": str(root), "LC_ALL": "C.UTF-8", "PATH": os.environ.get("PATH", "")}
    code = (
        "import sys; from pathlib import Path; from resources.site import render_site; "
        "render_site(Path(sys.argv[1]), tuple(sys.argv[2].split(',')))"
    )
    proc = subprocess.run(
        [sys.executable, "-s", "-c", code, str(dest), ",".join(modules)],
        env=env, cwd=str(dest.parent), capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"rendering the local documentation site into {dest} failed: {proc.stderr[-2000:]}")


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature fixed by http.server
        pass


class LocalDocsSite:
    """The rendered site plus a way to serve it. ``serve()`` yields the base URL (with a trailing slash)."""

    def __init__(self, home: Path, modules: tuple[str, ...] = MODULES):
        self.home = Path(home)
        self.modules = modules
        key = hashlib.sha256(f"{sys.version}|{RENDERER_VERSION}|{','.join(modules)}".encode()).hexdigest()[
            :12
        ]
        self.root = self.home / "site" / key

    def ensure_rendered(self) -> Path:
        if (self.root / "index.html").is_file():
            return self.root
        self.root.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.root.parent / f".tmp-{uuid.uuid4().hex[:8]}"
        try:
            _render_in_fresh_process(tmp, self.modules)
            try:
                os.rename(tmp, self.root)
            except OSError:  # another process rendered the same key first: theirs is identical
                if not (self.root / "index.html").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.root

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        root = self.ensure_rendered()
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, name="lmforge-site", daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


LOCAL_DOCS_HOST = "docs.python.local"


def local_docs_target(served: str) -> dict[str, Any]:
    """The crawl settings that point a crawler at the site :meth:`LocalDocsSite.serve` serves at ``served``:
    seeded at its index under the canonical host ``docs.python.local`` (so URLs, and the versions they feed,
    do not depend on the port), allowed only that host, connecting to the local server. Plain values, so
    this module needs nothing of the crawler: ``CrawlSettings(**local_docs_target(url), **limits)``."""
    return {
        "seeds": [f"http://{LOCAL_DOCS_HOST}/index.html"],
        "allowed_hosts": [LOCAL_DOCS_HOST],
        "local": True,
        "connect_map": {LOCAL_DOCS_HOST: served.split("/")[2]},
    }


def make_resource(home: Path) -> LocalDocsSite:
    """The ``site`` resource the asset factory passes to kinds that declare ``resources=("site",)``."""
    return LocalDocsSite(Path(home))
