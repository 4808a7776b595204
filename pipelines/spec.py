"""The spec language: load a pipeline YAML, resolve ``extends:``, validate every stage, compute versions.

Key design choice: validation is total and happens before anything runs. All problems of a spec are
collected (unknown kind, unknown or mistyped field, reference to a missing stage, reference of the wrong
artifact type, cycle, bad automation entry), each as one :class:`SpecIssue` naming the file, the stage,
the field and the line, and raised together as :class:`SpecError`. Reading is bounded before anything is
built from the file (size, nesting, values with aliases expanded, ``extends`` depth), so a hostile or
runaway file is one SpecError naming it rather than an exhausted memory or a RecursionError.

A stage's version is ``hash(kind, code version, canonical config without references, versions of the
referenced stages, identity of external files)``. Stage *names* are not part of it, so a variant spec
that ``extends:`` another and changes one late stage shares every unchanged stage's artifact. The formula
is :func:`assets.registry.stage_version`, the one ``run_kind`` uses too; the code version is derived from
the kind's code (``resources/codehash.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from assets.registry import StageKind, load_kinds, partition_version, ref_fields, stage_version
from ops.fingerprint import UnhashableValue

SPEC_DIR = Path(__file__).resolve().parent
TOP_LEVEL = {"pipeline", "description", "extends", "stages", "automation"}
AUTOMATION_KEYS = {"cron", "eager", "watch"}


@dataclass(frozen=True)
class SpecIssue:
    file: str
    stage: str | None
    field: str | None
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        what = ", ".join(x for x in (f"stage '{self.stage}'" if self.stage else "",
                                     f"field '{self.field}'" if self.field else "") if x)
        return f"{where}: {what + ': ' if what else ''}{self.message}"


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


def _read_spec_text(path: Path) -> str:
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


def _load_yaml_with_lines(path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    """Parse YAML; return data and ``{(key, subkey, ...): line}`` for mapping keys (1-based lines)."""
    text = _read_spec_text(path)
    f = str(path)
    lines: dict[tuple[str, ...], int] = {}
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

        def walk(n: Any, prefix: tuple[str, ...]) -> None:
            if isinstance(n, yaml.MappingNode):
                for k, v in n.value:
                    key = (*prefix, str(k.value))
                    lines[key] = k.start_mark.line + 1
                    walk(v, key)

        walk(node, ())
        try:
            data = loader.construct_document(node)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise SpecError([SpecIssue(f, None, None, f"invalid YAML: {getattr(e, 'problem', e)}",
                                       mark.line + 1 if mark else None)]) from None
    finally:
        loader.dispose()
    return data, lines


# ---------------------------------------------------------------------------------------------------
@dataclass
class Stage:
    name: str
    kind: StageKind
    config: Any                              # the kind's StageConfig
    refs: dict[str, list[str]]               # python field name -> referenced stage names
    raw: dict[str, Any]                      # the stage mapping as written (after extends-merge)
    version: str = ""
    partitions: list[str] | None = None      # partition keys (referenced stage names) for partitioned kinds
    partition_versions: dict[str, str] = field(default_factory=dict)

    @property
    def deps(self) -> list[str]:
        seen: list[str] = []
        for names in self.refs.values():
            for n in names:
                if n not in seen:
                    seen.append(n)
        return seen

    def output_versions(self) -> list[str]:
        """The version(s) a downstream stage depends on: one, or one per partition."""
        if self.partitions is not None:
            return [self.partition_versions[p] for p in self.partitions]
        return [self.version]


@dataclass
class Spec:
    name: str
    description: str
    path: Path
    stages: dict[str, Stage]                 # in topological order
    automation: dict[str, dict[str, Any]]
    parent: str | None = None

    def ancestors(self, stage: str) -> list[str]:
        out: list[str] = []
        stack = list(self.stages[stage].deps)
        while stack:
            s = stack.pop()
            if s not in out:
                out.append(s)
                stack.extend(self.stages[s].deps)
        return out

    def descendants(self, stage: str) -> list[str]:
        return [s for s in self.stages if stage in self.ancestors(s)]


def resolve_spec_path(spec: str | Path) -> Path:
    """A path to a YAML file, or the name of a spec in ``pipelines/`` (``tiny_r1``)."""
    p = Path(spec)
    if p.suffix in {".yaml", ".yml"} or p.exists():
        return p.resolve()
    cand = SPEC_DIR / f"{spec}.yaml"
    if cand.exists():
        return cand
    raise SpecError([SpecIssue(str(spec), None, None, "no such spec file or pipeline name")])


def _read_raw(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict, list[SpecIssue], str | None]:
    """Read a spec file, merging the parent named by ``extends:``. Returns data, lines, issues, parent name."""
    issues: list[SpecIssue] = []
    f = str(path)
    if path in chain:
        return {}, {}, [SpecIssue(f, None, "extends", "circular extends: " + " -> ".join(map(str, (*chain, path))))], None
    if not path.exists():
        return {}, {}, [SpecIssue(f, None, None, "spec file does not exist")], None
    data, lines = _load_yaml_with_lines(path)
    if not isinstance(data, dict):
        return {}, lines, [SpecIssue(f, None, None, "a spec must be a mapping with 'pipeline' and 'stages'")], None
    for k in data:
        if k not in TOP_LEVEL:
            issues.append(SpecIssue(f, None, str(k), f"unknown top-level field (allowed: {', '.join(sorted(TOP_LEVEL))})",
                                    lines.get((str(k),))))
    parent_name = None
    if data.get("extends"):
        ppath = (path.parent / str(data["extends"]))
        if not ppath.suffix:
            ppath = ppath.with_suffix(".yaml")
        if len(chain) >= MAX_EXTENDS_DEPTH:
            # refused before reading the parent: the chain is bounded however long it is on disk
            root = chain[0] if chain else path
            raise SpecError([SpecIssue(
                f, None, "extends",
                f"extends chain deeper than {MAX_EXTENDS_DEPTH} files (from {root}); flatten it into fewer specs",
                lines.get(("extends",)))])
        pdata, _plines, pissues, _ = _read_raw(ppath.resolve(), (*chain, path))
        if pissues:
            issues.extend(SpecIssue(i.file, i.stage, i.field, i.message, i.line) for i in pissues)
            if not pdata:
                issues.append(SpecIssue(f, None, "extends", f"cannot extend {data['extends']!r}",
                                        lines.get(("extends",))))
        parent_name = pdata.get("pipeline")
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
    return data, lines, issues, parent_name


def load_spec(spec: str | Path, *, fingerprints: bool = True) -> Spec:
    """Load, validate and version a spec. Raises :class:`SpecError` listing every problem."""
    kinds = load_kinds()
    path = resolve_spec_path(spec)
    f = str(path)
    data, lines, issues, parent = _read_raw(path)
    if issues and not data:
        raise SpecError(issues)
    name = data.get("pipeline")
    if not isinstance(name, str) or not name.replace("_", "").isalnum():
        issues.append(SpecIssue(f, None, "pipeline", "required: a name of letters, digits and underscores",
                                lines.get(("pipeline",))))
        name = path.stem
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, dict) or not raw_stages:
        issues.append(SpecIssue(f, None, "stages", "required: a mapping of stage name -> {kind: ..., ...}",
                                lines.get(("stages",))))
        raise SpecError(issues)

    stages: dict[str, Stage] = {}
    for sname, sval in raw_stages.items():
        sname = str(sname)
        sline = lines.get(("stages", sname))
        if not sname.replace("_", "").isalnum():
            issues.append(SpecIssue(f, sname, None, "stage names use letters, digits and underscores", sline))
            continue
        if not isinstance(sval, dict):
            issues.append(SpecIssue(f, sname, None, "a stage must be a mapping with a 'kind'", sline))
            continue
        kname = sval.get("kind")
        if kname not in kinds:
            issues.append(SpecIssue(f, sname, "kind", f"unknown kind {kname!r}; known kinds: {', '.join(sorted(kinds))}",
                                    lines.get(("stages", sname, "kind"), sline)))
            continue
        kind = kinds[kname]
        body = {k: v for k, v in sval.items() if k != "kind"}
        rfields = ref_fields(kind.config)
        refs: dict[str, list[str]] = {}
        for fname, (_types, many, key) in rfields.items():
            for k in (key, fname):
                if k in body:
                    v = body[k]
                    if many and isinstance(v, str):
                        body[k] = [v]
                    vals = body[k] if isinstance(body[k], list) else [body[k]]
                    if all(isinstance(x, str) for x in vals):
                        refs[fname] = list(vals)
                    break
        try:
            cfg = kind.config.model_validate(body)
        except ValidationError as e:
            for err in e.errors():
                loc = [str(x) for x in err["loc"]]
                fld = loc[0] if loc else None
                key = fld
                if fld in rfields:
                    key = rfields[fld][2]
                msg = err["msg"]
                nested = len(loc) > 1 and fld not in rfields  # a field of a block (optim.weight_decay)
                if err["type"] == "extra_forbidden":
                    model = _block_model(kind.config, loc[:-1]) if nested else kind.config
                    allowed = sorted((fi.alias or n) for n, fi in model.model_fields.items()) if model else []
                    where = f"in '{'.'.join(loc[:-1])}'" if nested else f"for kind '{kname}'"
                    msg = f"unknown field {where} (allowed: {', '.join(allowed)})"
                elif len(loc) > 1 and not nested:
                    msg = f"{'.'.join(loc[1:])}: {msg}"
                if "input" in err and err["type"] != "extra_forbidden" and err["type"] != "missing":
                    msg += f" (got {err['input']!r})"
                line = lines.get(("stages", sname, str(key)), sline)
                if nested:
                    key = ".".join(loc)
                    line = lines.get(("stages", sname, *loc), line)
                issues.append(SpecIssue(f, sname, key, msg, line))
            continue
        stages[sname] = Stage(sname, kind, cfg, refs, dict(sval))

    # references: existence and types
    for st in stages.values():
        rfields = ref_fields(st.kind.config)
        for fname, names in st.refs.items():
            types, _many, key = rfields[fname]
            kline = lines.get(("stages", st.name, key)) or lines.get(("stages", st.name))
            for n in names:
                if n == st.name:
                    issues.append(SpecIssue(f, st.name, key, "a stage cannot reference itself", kline))
                elif n not in raw_stages:
                    issues.append(SpecIssue(f, st.name, key, f"references missing stage '{n}'", kline))
                elif n in stages and stages[n].kind.produces not in types:
                    issues.append(SpecIssue(
                        f, st.name, key,
                        f"'{n}' is a {stages[n].kind.name} stage producing {stages[n].kind.produces}; "
                        f"this field expects {' or '.join(types)}", kline))

    # cycles (DFS with colours)
    order: list[str] = []
    colour: dict[str, int] = {}

    def visit(s: str, trail: list[str]) -> None:
        c = colour.get(s, 0)
        if c == 2:
            return
        if c == 1:
            cyc = trail[trail.index(s):] + [s]
            issues.append(SpecIssue(f, s, None, "cycle: " + " -> ".join(cyc), lines.get(("stages", s))))
            return
        colour[s] = 1
        for d in stages[s].deps:
            if d in stages:
                visit(d, [*trail, s])
        colour[s] = 2
        order.append(s)

    for s in stages:
        visit(s, [])

    # kind-specific validation
    for st in stages.values():
        if st.kind.validate is not None and all(d in stages for d in st.deps):
            try:
                kinds_of = {d: stages[d].kind.name for d in st.deps}
                if len(inspect.signature(st.kind.validate).parameters) >= 3:
                    problems = st.kind.validate(st.config, kinds_of, {d: stages[d].config for d in st.deps})
                else:
                    problems = st.kind.validate(st.config, kinds_of)
            except Exception as e:  # a validator must not crash the compiler
                problems = [(None, f"validation failed: {e}")]
            for fld, msg in problems or []:
                issues.append(SpecIssue(f, st.name, fld, msg, lines.get(("stages", st.name, str(fld)))))

    # automation
    automation = data.get("automation") or {}
    if not isinstance(automation, dict):
        issues.append(SpecIssue(f, None, "automation", "must be a mapping of stage -> {cron|eager|watch}",
                                lines.get(("automation",))))
        automation = {}
    for sname, entry in automation.items():
        aline = lines.get(("automation", str(sname)))
        if sname not in raw_stages:
            issues.append(SpecIssue(f, str(sname), "automation", f"automation names missing stage '{sname}'", aline))
            continue
        if not isinstance(entry, dict) or not entry:
            issues.append(SpecIssue(f, str(sname), "automation", "expected a mapping with cron, eager and/or watch", aline))
            continue
        for k, v in entry.items():
            if k not in AUTOMATION_KEYS:
                issues.append(SpecIssue(f, str(sname), f"automation.{k}",
                                        f"unknown automation field (allowed: {', '.join(sorted(AUTOMATION_KEYS))})", aline))
            elif k == "cron" and (not isinstance(v, str) or len(v.split()) != 5):
                issues.append(SpecIssue(f, str(sname), "automation.cron", f"expected a 5-field cron string, got {v!r}", aline))
            elif k == "eager" and not isinstance(v, bool):
                issues.append(SpecIssue(f, str(sname), "automation.eager", f"expected true or false, got {v!r}", aline))
            elif k == "watch" and not (isinstance(v, str) or (isinstance(v, dict) and "path" in v)):
                issues.append(SpecIssue(f, str(sname), "automation.watch",
                                        "expected a folder path or {path: ..., pattern: '*.parquet'}", aline))

    if issues:
        raise SpecError(issues)

    ordered = {s: stages[s] for s in order}
    spec = Spec(name=name, description=str(data.get("description") or ""), path=path, stages=ordered,
                automation=automation, parent=parent)
    compute_versions(spec, fingerprints=fingerprints)
    return spec


def _block_model(config_cls: Any, path: list[str]) -> Any:
    """The pydantic model of the nested block at ``path`` of a stage config (None when it is not one)."""
    import typing

    from pydantic import BaseModel

    cls = config_cls
    for name in path:
        fi = cls.model_fields.get(name) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        if fi is None:
            return None
        ann = fi.annotation
        cands = [ann, *typing.get_args(ann)]  # Optional[Block] -> Block
        cls = next((c for c in cands if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return cls


def compute_versions(spec: Spec, *, fingerprints: bool = True) -> None:
    """Fill ``stage.version`` (and per-partition versions) in topological order."""
    for st in spec.stages.values():
        kind = st.kind
        pf = kind.partition_field
        inputs = {fname: [v for n in names for v in spec.stages[n].output_versions()]
                  for fname, names in st.refs.items()}
        external = None
        if fingerprints and kind.fingerprint is not None:
            external = kind.fingerprint(st.config)
        try:
            st.version = stage_version(kind, st.config, inputs, external)
        except UnhashableValue as e:
            raise SpecError([SpecIssue(str(spec.path), st.name, None, str(e))]) from None
        if pf:
            st.partitions = list(st.refs.get(pf, []))
            st.partition_versions = {p: partition_version(st.version, spec.stages[p].output_versions())
                                     for p in st.partitions}


def spec_files(directory: Path = SPEC_DIR) -> list[Path]:
    return sorted(p for p in directory.glob("*.yaml"))


def plan(spec: Spec, store) -> list[dict[str, Any]]:
    """One row per stage (per partition for partitioned stages): name, kind, version, ``stored`` (usable
    as is) and ``status`` (``stored``, ``to compute``, ``failed: <check>`` or ``damaged: <file problem>``)."""
    rows = []
    for st in spec.stages.values():
        keys = st.partitions if st.partitions is not None else [None]
        for p in keys:
            v = st.partition_versions[p] if p is not None else st.version
            state = store.state(st.kind.name, v)
            rows.append({"stage": st.name, "partition": p, "kind": st.kind.name, "version": v,
                         "stored": state.usable, "status": state.describe()})
    return rows


def select_stages(spec: Spec, expr: str | None) -> list[str]:
    """``a,b+`` -> stages a and b plus b's descendants; ``+c`` -> c and its ancestors; None -> all."""
    if not expr:
        return list(spec.stages)
    chosen: list[str] = []
    for part in (p.strip() for p in expr.split(",") if p.strip()):
        down, up = part.endswith("+"), part.startswith("+")
        s = part.strip("+")
        if s not in spec.stages:
            raise SpecError([SpecIssue(str(spec.path), s, None, "no such stage in --stages")])
        group = [s] + (spec.descendants(s) if down else []) + (spec.ancestors(s) if up else [])
        chosen.extend(g for g in group if g not in chosen)
    return [s for s in spec.stages if s in chosen]


def iter_specs(paths: Iterable[Path]) -> list[Spec]:
    return [load_spec(p) for p in paths]
