"""The code version of a stage kind: a hash of the normalised source of the code its ``run`` reaches.

Key design choice: the version is derived from the code, never written by hand, so an edit to the compute
code behind a kind re-versions that kind (and, through input versions, every stage downstream) without
anyone remembering to bump anything. What is covered, starting from the kind's ``run`` function and its
config class:

* In a kind's own module and the other modules of the ``assets`` package (one module holds several kinds),
  only the top-level definitions reached by name: the function, the classes and constants it names, what
  those name, and the imports they use. Editing one kind's function in ``assets/tokenizer.py``
  re-versions that kind only; editing a helper in ``assets/posttrain.py`` re-versions the kinds that use it.
* Every other module of the project (``ops``, ``resources``, ``pipelines``) that this code imports, at
  module level and transitively, function-local imports included: any change in such a module
  re-versions every kind that reaches it, and a module no import reaches re-versions nothing. Importing a
  submodule covers its packages' ``__init__`` modules too. A module that starts a project module in a
  child process rather than importing it (the torchrun entry) names it in ``CHILD_ENTRY_MODULES``.
* Third-party code (torch, transformers, datatrove, ...) is not covered: the store versions the project's
  code; upgrading a library is an environment change, like changing the machine.

Normalisation: the source is parsed and unparsed (``ast``), which drops comments and formatting; string
statements (docstrings) and ``description="..."`` keyword texts (field and kind documentation) are
removed first. So a comment, docstring, field description or formatting edit re-versions nothing; any
other edit does, even one that happens not to change results.

Everything is computed from the source files (no imports) once per process.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

# The distribution's packages (pyproject.toml); imports of anything else are third-party and not followed.
PACKAGES = ("assets", "ops", "pipelines", "resources")
ROOT = Path(__file__).resolve().parent.parent
# Packages covered per definition rather than per module (thin wrappers holding several kinds each).
SYMBOL_LEVEL = ("assets",)
CHILD_ENTRY = "CHILD_ENTRY_MODULES"


@dataclass(frozen=True)
class CoveredModule:
    module: str
    path: str  # relative to the package root it was found under
    symbols: tuple[str, ...] | None  # the top-level definitions covered (their imports too); None: all
    hash: str


@dataclass(frozen=True)
class CodeVersion:
    version: str
    modules: tuple[CoveredModule, ...]

    def as_manifest(self) -> list[dict]:
        return [
            {"module": m.module, "symbols": list(m.symbols) if m.symbols is not None else None, "hash": m.hash}
            for m in self.modules
        ]


def _strip(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Remove in place what does not change behaviour: string statements (docstrings) and description
    texts. Returns every import statement of the module (function-local ones included)."""
    imports = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            imports.append(node)
        elif isinstance(node, ast.Call):
            node.keywords = [k for k in node.keywords if not _is_description(k)]
        for fld in ("body", "orelse", "finalbody"):
            stmts = getattr(node, fld, None)
            if isinstance(stmts, list) and stmts and isinstance(stmts[0], ast.stmt):
                kept = [s for s in stmts if not _is_string_statement(s)]
                if len(kept) != len(stmts):
                    if not kept and fld == "body" and not isinstance(node, ast.Module):
                        kept = [ast.Pass()]
                    setattr(node, fld, kept)
    return imports


def _is_description(k: ast.keyword) -> bool:
    return k.arg == "description" and isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)


def _is_string_statement(s: ast.stmt) -> bool:
    return isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Module:
    """One parsed, normalised module and what the closure asks of it (each computed once)."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self.is_package = path.name == "__init__.py"
        self.tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        self.imports = _strip(self.tree)
        self.child_entries = _child_entries(self.tree.body)
        # name -> [(statement, alias index or -1)] for every top-level binding
        self.bindings: dict[str, list[tuple[ast.stmt, int]]] = {}
        self.future: list[ast.stmt] = []
        for st in self.tree.body:
            if isinstance(st, ast.ImportFrom) and st.module == "__future__":
                self.future.append(st)
            elif isinstance(st, ast.Import | ast.ImportFrom):
                for i, a in enumerate(st.names):
                    self.bindings.setdefault(a.asname or a.name.split(".")[0], []).append((st, i))
            else:
                for n in _bound_names(st):
                    self.bindings.setdefault(n, []).append((st, -1))
        self._refs: dict[int, tuple[set[str], list[ast.Import | ast.ImportFrom], list[str]]] = {}
        self._texts: dict[tuple[int, int], str] = {}
        self._whole: str | None = None

    def refs(self, st: ast.stmt) -> tuple[set[str], list[ast.Import | ast.ImportFrom], list[str]]:
        """Top-level names a statement uses, the imports inside it and the child entry modules it names."""
        key = id(st)
        if key not in self._refs:
            names, imports = set(), []
            for n in ast.walk(st):
                if isinstance(n, ast.Name) and n.id in self.bindings:
                    names.add(n.id)
                elif isinstance(n, ast.Import | ast.ImportFrom):
                    imports.append(n)
            self._refs[key] = (names, imports, _child_entries([st]))
        return self._refs[key]

    def text(self, st: ast.stmt, alias: int) -> str:
        key = (id(st), alias)
        if key not in self._texts:
            self._texts[key] = ast.unparse(_single(st, alias) if alias >= 0 else st)
        return self._texts[key]

    def whole_hash(self) -> str:
        if self._whole is None:
            self._whole = _sha(ast.unparse(self.tree))
        return self._whole

    def symbols_hash(self, names: tuple[str, ...]) -> str:
        parts = {(st.lineno, -1): self.text(st, -1) for st in self.future}
        for name in names:
            for st, alias in self.bindings[name]:
                parts[(st.lineno, alias)] = self.text(st, alias)
        return _sha("\n".join(parts[k] for k in sorted(parts)))


class _Index:
    """Parsed modules by name, under the project root and any extra package roots (a kind defined outside
    the project, e.g. by a test or a plugin, is followed within its own top-level package)."""

    def __init__(self) -> None:
        self.roots: dict[str, Path] = {p: ROOT for p in PACKAGES}
        self._files: dict[str, Path | None] = {}
        self._mods: dict[str, _Module | None] = {}

    def add_root_of(self, module: str) -> None:
        top = module.split(".")[0]
        if top in self.roots:
            return
        f = getattr(sys.modules.get(module), "__file__", None)
        if not f or not Path(f).is_file():
            return
        p = Path(f).resolve()
        self.roots[top] = p.parents[module.count(".") + (1 if p.name == "__init__.py" else 0)]
        self._files[module] = p  # also a script run as __main__, whose file is not found by its name

    def file(self, module: str) -> Path | None:
        if module not in self._files:
            base = self.roots.get(module.split(".")[0])
            found = None
            if base is not None:
                p = base.joinpath(*module.split("."))
                if (p / "__init__.py").is_file():
                    found = p / "__init__.py"
                elif p.with_suffix(".py").is_file():
                    found = p.with_suffix(".py")
            self._files[module] = found
        return self._files[module]

    def get(self, module: str) -> _Module | None:
        if module not in self._mods:
            f = self.file(module)
            self._mods[module] = _Module(module, f) if f else None
        return self._mods[module]

    def rel(self, module: str) -> str:
        f = self.file(module)
        base = self.roots[module.split(".")[0]]
        try:
            return str(f.relative_to(base)) if f else module
        except ValueError:
            return str(f)


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _symbol_level(module: str) -> bool:
    top = module.split(".")[0]
    return top in SYMBOL_LEVEL or top not in PACKAGES


class _Closure:
    """The modules (whole, or some of their top-level names) a starting set of definitions reaches."""

    def __init__(self, index: _Index) -> None:
        self.ix = index
        self.whole: set[str] = set()
        self.symbols: dict[str, set[str]] = {}  # module -> included top-level names
        self._todo: list[tuple[str, str | None]] = []

    def _targets(self, mod: _Module, node: ast.Import | ast.ImportFrom) -> list[tuple[str, str | None]]:
        """(module, name or None for the whole module) for every project name an import statement binds."""
        if isinstance(node, ast.Import):
            return [(a.name, None) for a in node.names if self.ix.file(a.name)]
        if node.level:
            base = mod.name if mod.is_package else mod.name.rpartition(".")[0]
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.module else base
        else:
            target = node.module or ""
        if target == "__future__" or not self.ix.file(target):
            return []
        out: list[tuple[str, str | None]] = []
        for a in node.names:
            if a.name != "*" and self.ix.file(f"{target}.{a.name}"):
                out.append((f"{target}.{a.name}", None))
            elif a.name == "*" or not _symbol_level(target):
                out.append((target, None))
            else:
                out.append((target, a.name))
        return out

    def add(self, module: str, name: str | None) -> None:
        self._todo.append((module, name))

    def run(self) -> None:
        while self._todo:
            module, name = self._todo.pop()
            mod = self.ix.get(module)
            if mod is None or module in self.whole:
                continue
            self._todo.extend((p, None) for p in _parents(module) if p not in self.whole)
            if name is None or "." in name or "<" in name or name not in mod.bindings:
                # a nested or unnamed definition, or a name set at import time: the whole module
                self.whole.add(module)
                self.symbols.pop(module, None)
                for node in mod.imports:
                    self._todo.extend(self._targets(mod, node))
                self._todo.extend((m, None) for m in mod.child_entries)
                continue
            have = self.symbols.setdefault(module, set())
            if name in have:
                continue
            have.add(name)
            for st, alias in mod.bindings[name]:
                if alias >= 0:
                    self._todo.extend(self._targets(mod, _single(st, alias)))
                    continue
                names, imports, children = mod.refs(st)
                self._todo.extend((module, n) for n in names)
                for node in imports:
                    self._todo.extend(self._targets(mod, node))
                self._todo.extend((m, None) for m in children)

    def result(self) -> CodeVersion:
        mods = []
        for m in sorted(self.whole | set(self.symbols)):
            mod = self.ix.get(m)
            if m in self.whole:
                mods.append(CoveredModule(m, self.ix.rel(m), None, mod.whole_hash()))
            else:
                names = tuple(sorted(self.symbols[m]))
                defs = tuple(n for n in names if any(a < 0 for _, a in mod.bindings[n]))
                mods.append(CoveredModule(m, self.ix.rel(m), defs, mod.symbols_hash(names)))
        blob = json.dumps([[m.module, m.symbols, m.hash] for m in mods], separators=(",", ":"))
        return CodeVersion(_sha(blob), tuple(mods))


def _bound_names(st: ast.stmt) -> set[str]:
    if isinstance(st, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {st.name}
    names: set[str] = set()
    for n in ast.walk(st):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            names.add(n.id)
        elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(n.name)
        elif isinstance(n, ast.Import | ast.ImportFrom):
            names.update(a.asname or a.name.split(".")[0] for a in n.names)
    return names


def _single(node: ast.Import | ast.ImportFrom, i: int) -> ast.Import | ast.ImportFrom:
    if isinstance(node, ast.Import):
        return ast.Import(names=[node.names[i]])
    return ast.ImportFrom(module=node.module, names=[node.names[i]], level=node.level)


def _child_entries(body: list[ast.stmt]) -> list[str]:
    """Module names listed in a top-level ``CHILD_ENTRY_MODULES = (...)`` assignment."""
    out = []
    for st in body:
        if isinstance(st, ast.Assign) and any(isinstance(t, ast.Name) and t.id == CHILD_ENTRY for t in st.targets):
            if isinstance(st.value, ast.Tuple | ast.List):
                out.extend(e.value for e in st.value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str))
    return out


_INDEX = _Index()


@cache
def code_version(starts: tuple[tuple[str, str], ...]) -> CodeVersion:
    """The code version of the code reachable from ``((module, qualname), ...)``, cached per process."""
    c = _Closure(_INDEX)
    for module, name in starts:
        _INDEX.add_root_of(module)
        if _INDEX.file(module) is None:
            # a definition without a source file (typed into an interpreter) has no code to version
            raise ValueError(f"cannot derive a code version for {module}.{name}: its source file is not found")
        c.add(module, name)
    c.run()
    return c.result()


def of_callables(*objs) -> CodeVersion:
    """The code version of functions/classes (by their module and qualified name). A callable without a
    top-level name (a lambda, a nested function, a bound method) covers its whole module."""
    starts = []
    for o in objs:
        while isinstance(o, partial):
            o = o.func
        o = getattr(o, "__func__", o)
        starts.append((o.__module__, getattr(o, "__qualname__", "<unnamed>")))
    return code_version(tuple(sorted(starts)))
