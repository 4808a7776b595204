"""Reading a spec file: bounded YAML with line numbers, and ``extends:`` resolved into one mapping.

Key design choice: reading is bounded before anything is built from the file (size, nesting, values with
aliases expanded, ``extends`` depth), so a hostile or runaway file is one :class:`SpecError` naming it
rather than an exhausted memory or a RecursionError. Every mapping key keeps its line (a :class:`Line`, which
also knows its file, so a value inherited through ``extends:`` is reported in the parent that holds it), and
the validation in ``pipelines/spec.py`` names the line of each problem. Reading itself refuses what would
silently change the meaning of the file (a key given twice, a key YAML reads as true/null/a number) and
checks only what it must to go on (a mapping, known top-level fields, a readable parent); the rest is
reported as :class:`SpecIssue` values.
Environment variables in stage values are substituted per file before merging (``pipelines/spec_env.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .spec_env import interpolate

SPEC_DIR = Path(__file__).resolve().parent
TOP_LEVEL = {"pipeline", "description", "extends", "stages", "automation"}


class Line(int):
    """A 1-based line number that remembers its file: after ``extends:`` merging, a stage's fields may come
    from several files, and an issue located by a field's line is reported in the file that line is in."""

    file: str

    def __new__(cls, line: int, file: str) -> Line:
        obj = super().__new__(cls, line)
        obj.file = file
        return obj

    def __getnewargs__(self) -> tuple[int, str]:  # pickle and deepcopy rebuild it with its file
        return int(self), self.file


@dataclass(frozen=True)
class SpecIssue:
    file: str
    stage: str | None
    field: str | None
    message: str
    line: int | None = None
    missing_input: bool = False  # an input file or checkpoint not on this machine (the spec itself is valid)

    def __post_init__(self) -> None:
        if isinstance(self.line, Line):  # a line names the file it is in, whichever file the caller had at hand
            object.__setattr__(self, "file", self.line.file)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        what = ", ".join(x for x in (f"stage '{self.stage}'" if self.stage else "",
                                     f"field '{self.field}'" if self.field else "") if x)
        return f"{where}: {what + ': ' if what else ''}{self.message}"


def place(key: tuple[str, ...]) -> tuple[str | None, str | None]:
    """``(stage, field)`` named by the path of a key in a spec: ``stages.<stage>.<field>...``,
    ``automation.<stage>.<field>`` (field ``automation.<field>``) or a top-level field."""
    if len(key) > 1 and key[0] in ("stages", "automation"):
        rest = ".".join(key[2:])
        if key[0] == "automation":
            return key[1], "automation" + (f".{rest}" if rest else "")
        return key[1], rest or None
    return None, ".".join(key) or None


class SpecError(ValueError):
    """One or more problems in a spec; ``issues`` lists them, ``str()`` prints one per line."""

    def __init__(self, issues: list[SpecIssue]):
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


# ---------------------------------------------------------------------------------------------------
# YAML with line numbers, bounded against hostile input.
# A spec is a few kilobytes of hand-written YAML; the limits sit orders of magnitude above that and exist so
# that a hostile or broken file (an alias bomb, a 50 MB dump, a runaway nesting) is one clear error instead of
# minutes of parsing, an exhausted memory or a RecursionError.
MAX_SPEC_BYTES = 1 << 20        # read before parsing: anything larger is refused unparsed
MAX_NESTING = 64                # mappings/sequences inside each other
MAX_NODES = 100_000             # YAML values, counted as parsed and again with every alias expanded
MAX_EXTENDS_DEPTH = 32          # `extends:` hops from the spec named on the command line


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses nesting deeper than :data:`MAX_NESTING` (PyYAML composes
    recursively, so a deep enough document would otherwise end in RecursionError) and more than
    :data:`MAX_NODES` values (pure-Python parsing of a dense 1 MiB list takes tens of seconds)."""

    _depth = 0
    _nodes = 0

    def compose_node(self, parent, index):
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_NESTING:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_NESTING} levels", self.peek_event().start_mark)
            if self._nodes > MAX_NODES:
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_NODES} values: a pipeline spec is hand-written YAML, not data",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(root: yaml.Node) -> int | None:
    """Number of nodes the document has once every alias is expanded, computed on the shared node graph
    (each distinct node is visited once, so a billion-laughs document costs its own size, not its
    expansion). Stops counting past :data:`MAX_NODES`; None for a recursive alias (infinite)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    cap = MAX_NODES + 1

    def size(n: yaml.Node) -> int | None:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in active:
            return None
        active.add(id(n))
        total = 1
        children: list[yaml.Node] = []
        if isinstance(n, yaml.MappingNode):
            children = [x for kv in n.value for x in kv]
        elif isinstance(n, yaml.SequenceNode):
            children = list(n.value)
        for c in children:
            s = size(c)
            if s is None:
                return None
            total = min(cap, total + s)
        active.discard(id(n))
        sizes[id(n)] = total
        return total

    return size(root)


def read_spec_text(path: Path) -> str:
    """The file's text, refused unread when larger than :data:`MAX_SPEC_BYTES`. The read itself is bounded
    too, so a device or a file growing while it is read cannot make it unbounded."""
    f = str(path)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise SpecError([SpecIssue(f, None, None, f"cannot read spec: {e.strerror or e}")]) from None
    if len(raw) > MAX_SPEC_BYTES:
        size = path.stat().st_size if path.is_file() else None
        got = f"{size} bytes" if size else "more"
        raise SpecError([SpecIssue(f, None, None, f"spec is too large ({got}; the limit is {MAX_SPEC_BYTES} "
                                                  "bytes): a pipeline spec is hand-written YAML, not data")])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SpecError([SpecIssue(f, None, None, f"not UTF-8 text (byte {e.start})", line)]) from None


# YAML 1.1 reads some plain keys as non-text (`on:` is true, `null:` is None, `123:` an int); a stage or field
# name must be text, so such a key is refused with the advice to quote it rather than renamed silently
_STR_TAG, _MERGE_TAG = "tag:yaml.org,2002:str", "tag:yaml.org,2002:merge"
_READ_AS = {"bool": "true/false", "null": "null (no value)", "int": "a number", "float": "a number",
            "timestamp": "a date"}


def load_yaml_with_lines(path: Path) -> tuple[Any, dict[tuple[str, ...], Line]]:
    """Parse YAML; return data and ``{(key, subkey, ...): line}`` for mapping keys. A key given twice in one
    mapping, or one that is not text, is refused with its line."""
    text = read_spec_text(path)
    f = str(path)
    lines: dict[tuple[str, ...], Line] = {}
    loader = _SpecLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise SpecError([SpecIssue(f, None, None, f"invalid YAML: {getattr(e, 'problem', e)}",
                                       mark.line + 1 if mark else None)]) from None
        if node is None:
            return None, lines
        n = _expanded_size(node)
        if n is None or n > MAX_NODES:
            why = ("an alias refers to a node containing itself (infinite expansion)" if n is None else
                   f"aliases expand the document beyond {MAX_NODES} values")
            raise SpecError([SpecIssue(f, None, None, f"refused: {why}; write the values out instead")])

        problems: list[SpecIssue] = []
        checked: set[int] = set()  # a mapping reached again through an alias is one problem, not two

        def walk(n: Any, prefix: tuple[str, ...]) -> None:
            if not isinstance(n, yaml.MappingNode):
                return
            report = problems.append if id(n) not in checked else (lambda _issue: None)
            checked.add(id(n))
            first: dict[str, Line] = {}
            for k, v in n.value:
                line = Line(k.start_mark.line + 1, f)
                what = "stage name" if prefix == ("stages",) else "key"
                if not isinstance(k, yaml.ScalarNode):
                    report(SpecIssue(f, *place(prefix), f"a list or mapping cannot be a {what}", line))
                    continue
                key = (*prefix, str(k.value))
                if k.tag not in (_STR_TAG, _MERGE_TAG):
                    read_as = _READ_AS.get(k.tag.rsplit(":", 1)[-1], k.tag)
                    report(SpecIssue(f, *place(key), f"YAML reads this {what} as {read_as}, not as text; "
                                                    f"quote it: '{k.value}'", line))
                    continue
                if k.tag == _STR_TAG and k.value in first:
                    report(SpecIssue(f, *place(key), f"{what} given twice (first on line {first[k.value]}); "
                                                    "YAML would keep only the last: remove or rename one", line))
                    continue
                first[k.value] = line
                lines[key] = line
                walk(v, key)

        walk(node, ())
        if problems:
            raise SpecError(problems)
        try:
            data = loader.construct_document(node)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise SpecError([SpecIssue(f, None, None, f"invalid YAML: {getattr(e, 'problem', e)}",
                                       mark.line + 1 if mark else None)]) from None
    finally:
        loader.dispose()
    return data, lines


def resolve_spec_path(spec: str | Path) -> Path:
    """A path to a YAML file, or the name of a spec in ``pipelines/`` (``tiny_r1``)."""
    p = Path(spec)
    if p.suffix in {".yaml", ".yml"} or p.exists():
        return p.resolve()
    cand = SPEC_DIR / f"{spec}.yaml"
    if cand.exists():
        return cand
    raise SpecError([SpecIssue(str(spec), None, None, "no such spec file or pipeline name")])


def read_raw(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict, list[SpecIssue], str | None]:
    """Read a spec file, merging the parent named by ``extends:``. Returns data, lines (each key's line in
    the file its merged value comes from), issues, parent name. A parent that cannot be used (not a file
    name, missing, circular, unreadable) is raised at once as one issue on the ``extends:`` line."""
    issues: list[SpecIssue] = []
    f = str(path)
    if not path.exists():
        return {}, {}, [SpecIssue(f, None, None, "spec file does not exist")], None
    data, lines = load_yaml_with_lines(path)
    if not isinstance(data, dict):
        return {}, lines, [SpecIssue(f, None, None, "a spec must be a mapping with 'pipeline' and 'stages'")], None
    for k in data:
        if k not in TOP_LEVEL:
            issues.append(SpecIssue(f, None, str(k), f"unknown top-level field (allowed: {', '.join(sorted(TOP_LEVEL))})",
                                    lines.get((str(k),))))
    data = interpolate(data, lines, f)
    if "extends" not in data:
        return data, lines, issues, None
    ext, eline = data["extends"], lines.get(("extends",))

    def refuse(why: str) -> SpecError:
        return SpecError([*issues, SpecIssue(f, None, "extends", why, eline)])

    if not isinstance(ext, str) or not ext.strip():
        raise refuse(f"must be the file name of the parent spec (a string), got {ext!r}")
    ppath = path.parent / ext
    if not ppath.suffix:
        ppath = ppath.with_suffix(".yaml")
    ppath = ppath.resolve()
    if len(chain) >= MAX_EXTENDS_DEPTH:
        # refused before reading the parent: the chain is bounded however long it is on disk
        root = chain[0] if chain else path
        raise refuse(f"extends chain deeper than {MAX_EXTENDS_DEPTH} files (from {root}); flatten it into fewer specs")
    trail = (*chain, path)
    if ppath in trail:
        raise refuse("circular extends: " + " -> ".join(map(str, (*trail[trail.index(ppath):], ppath))))
    if not ppath.is_file():
        raise refuse(f"parent spec {ppath} {'is not a file' if ppath.exists() else 'does not exist'}")
    pdata, plines, pissues, _ = read_raw(ppath, trail)
    issues.extend(pissues)
    if not pdata:  # the parent's own issue says why; the child cannot be merged without it
        raise SpecError(issues)
    merged_stages: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v
                                     for k, v in (pdata.get("stages") or {}).items()}
    for sname, sval in (data.get("stages") or {}).items():
        if sval is None:                       # `stage: null` removes an inherited stage
            merged_stages.pop(sname, None)
        elif isinstance(sval, dict) and isinstance(merged_stages.get(sname), dict) and \
                sval.get("kind", merged_stages[sname].get("kind")) == merged_stages[sname].get("kind"):
            merged_stages[sname] = {**merged_stages[sname], **sval}
        else:
            merged_stages[sname] = sval
    auto = {**(pdata.get("automation") or {}), **(data.get("automation") or {})}
    data = {**pdata, **data, "stages": merged_stages, "automation": auto}
    return data, _merged_lines(data, lines, plines), issues, pdata.get("pipeline")


def _merged_lines(data: Any, lines: dict, plines: dict) -> dict:
    """Lines of the merged ``data``: a key the child writes has the child's line, any other the parent's.
    Exact because every merge above is shallow: where the child writes a key, the merged value is the child's."""
    out: dict[tuple[str, ...], Line] = {}

    def walk(v: Any, prefix: tuple[str, ...]) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                key = (*prefix, str(k))
                line = lines.get(key, plines.get(key))
                if line is not None:
                    out[key] = line
                walk(x, key)

    walk(data, ())
    return out
