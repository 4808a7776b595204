"""Imports run one way: pipelines -> assets -> ops, with resources used by assets and pipelines.

Every module of the four packages is parsed (function-local imports included, since those are how heavy or
circular imports hide) and each import is checked against the layer rules. A reverse import fails the test
with the file, line and the rule it breaks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipelines", "assets", "ops", "resources")
# what each layer must never import
FORBIDDEN = {
    "ops": {"assets", "pipelines", "resources", "dagster", "dagster_pipes"},
    "resources": {"assets", "pipelines"},
    "assets": {"pipelines"},
    "pipelines": set(),
}
# a process entry point (started as its own process, e.g. by torchrun) may import ops from resources
ENTRY_POINTS = {"resources/train_entry.py"}


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """Every (line, top-level package) imported anywhere in the module, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = path.relative_to(root).parts[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: within the same top-level package
                out.append((node.lineno, pkg))
            elif node.module:
                out.append((node.lineno, node.module.split(".")[0]))
    return out


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            forbidden = set(FORBIDDEN[pkg])
            if pkg == "resources" and rel not in ENTRY_POINTS:
                forbidden.add("ops")
            for line, top in imports_of(path, root):
                if top in forbidden:
                    found.append(f"{rel}:{line}: {pkg}/ imports {top}")
    return found


def test_imports_run_one_way():
    assert violations() == []


def test_a_reverse_import_is_caught(tmp_path):
    """The checker itself: a function-local reverse import in an otherwise clean tree is reported."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "ops" / "x.py").write_text("import json\n\n\ndef f():\n    from resources.store import git_state\n")
    (tmp_path / "resources" / "y.py").write_text("from ops.data import crawl\n")
    (tmp_path / "resources" / "train_entry.py").write_text("from ops.train import lm\n")
    (tmp_path / "assets" / "z.py").write_text("from . import registry\nfrom pipelines import spec\n")
    assert violations(tmp_path) == [
        "assets/z.py:2: assets/ imports pipelines",
        "ops/x.py:5: ops/ imports resources",
        "resources/y.py:1: resources/ imports ops",
    ]
