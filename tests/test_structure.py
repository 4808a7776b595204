"""Size limits that keep the layers readable: a stage kind's wrapper stays thin, no module grows unbounded.

* No function in ``assets/`` is longer than 80 lines: a kind is config -> inputs -> one ops call -> result
  and metadata; anything longer belongs in ``ops/`` (compute, data assembly, plots) or in a helper.
* No module of the four packages is longer than 500 lines, except the training core
  (``ops/train/core.py``, one loop with its checkpointing, resume and guards).
* Every module has a header docstring.

The allow-lists name what is still over a limit; each entry is a known debt, and the test fails on any
new offender (and on an entry that is no longer needed, so the lists only shrink).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("assets", "ops", "pipelines", "resources")
MAX_FUNCTION = 80  # lines, in assets/
MAX_MODULE = 500  # lines, everywhere but the training core
TRAINING_CORE = {"ops/train/core.py"}
# Still over a limit: to be split, never to grow.
MODULE_DEBT: set[str] = set()
FUNCTION_DEBT: set[str] = set()


def modules(root: Path = ROOT) -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))]


def long_functions(root: Path = ROOT, limit: int = MAX_FUNCTION) -> dict[str, int]:
    """``{"assets/x.py:name": lines}`` for every function or method in assets/ longer than ``limit``."""
    out = {}
    for path in sorted((root / "assets").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out[f"{rel}:{node.name}"] = n
    return out


def long_modules(root: Path = ROOT, limit: int = MAX_MODULE) -> dict[str, int]:
    out = {}
    for path in modules(root):
        rel = path.relative_to(root).as_posix()
        n = len(path.read_text().splitlines())
        if n > limit and rel not in TRAINING_CORE:
            out[rel] = n
    return out


def test_no_assets_function_over_the_limit():
    found = long_functions()
    assert set(found) - FUNCTION_DEBT == set(), f"functions in assets/ over {MAX_FUNCTION} lines: {found}"
    assert FUNCTION_DEBT - set(found) == set(), "now within the limit: remove from FUNCTION_DEBT"


def test_no_module_over_the_limit():
    found = long_modules()
    assert set(found) - MODULE_DEBT == set(), f"modules over {MAX_MODULE} lines: {found}"
    assert MODULE_DEBT - set(found) == set(), "now within the limit: remove from MODULE_DEBT"


def test_every_module_has_a_header_docstring():
    missing = [
        p.relative_to(ROOT).as_posix()
        for p in modules()
        if p.read_text().strip() and not ast.get_docstring(ast.parse(p.read_text()))
    ]
    assert missing == []


def test_the_checks_catch_an_offender(tmp_path):
    """The checkers themselves, on a tree with one long function and one long module."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION))
    (tmp_path / "assets" / "k.py").write_text(f'"""Doc."""\n\n\ndef run():\n{body}\n\ndef ok():\n    return 1\n')
    (tmp_path / "ops" / "big.py").write_text('"""Doc."""\n' + "X = 1\n" * MAX_MODULE)
    (tmp_path / "ops" / "train").mkdir()
    (tmp_path / "ops" / "train" / "core.py").write_text("X = 1\n" * (MAX_MODULE + 1))
    assert long_functions(tmp_path) == {"assets/k.py:run": MAX_FUNCTION + 1}
    assert long_modules(tmp_path) == {"ops/big.py": MAX_MODULE + 1}
