"""The spec language: load a pipeline YAML, resolve ``extends:``, validate every stage, compute versions.

Key design choice: validation is total and happens before anything runs. All problems of a spec are
collected (unknown kind, unknown or mistyped field, reference to a missing stage, reference of the wrong
artifact type, cycle, bad automation entry), each as one :class:`SpecIssue` naming the file, the stage,
the field and the line, and raised together as :class:`SpecError`. Reading the file (bounded against
hostile input, ``extends:`` merged) is ``pipelines/spec_reader.py``; this module validates, orders and
versions the stages.

A stage's version is ``hash(kind, code version, canonical config without references, versions of the
referenced stages, identity of external files)``. Stage *names* are not part of it, so a variant spec
that ``extends:`` another and changes one late stage shares every unchanged stage's artifact. The formula
is :func:`assets.registry.stage_version`, the one ``run_kind`` uses too; the code version is derived from
the kind's code (``resources/codehash.py``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from assets.registry import StageKind, load_kinds, partition_version, ref_fields, stage_version
from ops.fingerprint import UnhashableValue
from ops.loaders import MissingInput

from .spec_env import unresolved
from .spec_reader import SPEC_DIR, SpecError, SpecIssue, read_raw, resolve_spec_path

AUTOMATION_KEYS = {"cron", "eager", "watch"}
# pipeline and stage names become Dagster names (`<pipeline>/<stage>` keys, `<pipeline>__<stage>` ops and checks),
# which must match ^[A-Za-z0-9_]+$: str.isalnum() would also let through 'é', '²' or fullwidth letters. Single
# inner underscores only, so that no two (pipeline, stage) pairs join to one name (`a`+`b__c`, `a__b`+`c`).
NAME_CHARS = "ASCII letters and digits, with single underscores between them"
_NAME = re.compile(r"[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*")


def _valid_name(name: Any) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def _field_line(lines: dict, stage: str, field: Any) -> int | None:
    """The line of a stage's field; for a dotted one (``rewards.0.accuracy``), of its longest written prefix."""
    parts = str(field).split(".") if field is not None else []
    for n in range(len(parts), 0, -1):
        if (line := lines.get(("stages", stage, *parts[:n]))) is not None:
            return line
    return lines.get(("stages", stage, str(field)))


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
    # inputs not on this machine (only with load_spec(missing_ok=True)): stage -> its problems
    missing: dict[str, list[SpecIssue]] = field(default_factory=dict)

    def blocked(self) -> dict[str, str]:
        """Stages that cannot be versioned here -> why: their own input is missing, or an ancestor's."""
        out: dict[str, str] = {}
        for s, st in self.stages.items():  # topological order: an ancestor is decided first
            if s in self.missing:
                out[s] = "missing input: " + ", ".join(str(i.field) for i in self.missing[s])
            else:
                waits = [d for d in st.deps if d in out]
                if waits:
                    out[s] = "waits on " + ", ".join(waits)
        return out

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


def load_spec(spec: str | Path, *, fingerprints: bool = True, missing_ok: bool = False) -> Spec:
    """Load, validate and version a spec. Raises :class:`SpecError` listing every problem.

    ``missing_ok``: when the only problems are inputs missing from this machine (a valid spec whose model or
    data files are elsewhere), return the spec anyway with ``spec.missing`` set and no version for the
    stages that need those inputs (``Spec.blocked``), so ``plan`` can show the rest."""
    kinds = load_kinds()
    path = resolve_spec_path(spec)
    f = str(path)
    data, lines, issues, parent = read_raw(path)
    if (issues and not data) or unresolved(data):
        raise SpecError(issues + unresolved(data))
    name = data.get("pipeline")
    if not _valid_name(name):
        issues.append(SpecIssue(f, None, "pipeline", f"required: a name of {NAME_CHARS} (got {name!r})",
                                lines.get(("pipeline",))))
        name = path.stem
    if not isinstance(data.get("description", ""), str | None):
        issues.append(SpecIssue(f, None, "description", f"must be text (got {data['description']!r})",
                                lines.get(("description",))))
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, dict) or not raw_stages:
        issues.append(SpecIssue(f, None, "stages", "required: a mapping of stage name -> {kind: ..., ...}",
                                lines.get(("stages",))))
        raise SpecError(issues)

    stages: dict[str, Stage] = {}
    for sname, sval in raw_stages.items():
        sname = str(sname)
        sline = lines.get(("stages", sname))
        if not _valid_name(sname):
            issues.append(SpecIssue(f, sname, None, f"stage names use {NAME_CHARS}", sline))
            continue
        if not isinstance(sval, dict):
            issues.append(SpecIssue(f, sname, None, "a stage must be a mapping with a 'kind'", sline))
            continue
        kname = sval.get("kind")
        if not isinstance(kname, str) or kname not in kinds:
            why = ("required" if kname is None else f"must be the name of a stage kind, got {kname!r}"
                   if not isinstance(kname, str) else f"unknown kind {kname!r}")
            issues.append(SpecIssue(f, sname, "kind", f"{why}; known kinds: {', '.join(sorted(kinds))}",
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
            if d in stages and d != s:  # a stage naming itself is already reported as such
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
                n_params = len(inspect.signature(st.kind.validate).parameters)
                if n_params >= 4:
                    problems = st.kind.validate(
                        st.config, kinds_of, {d: stages[d].config for d in st.deps}, stages
                    )
                elif n_params >= 3:
                    problems = st.kind.validate(st.config, kinds_of, {d: stages[d].config for d in st.deps})
                else:
                    problems = st.kind.validate(st.config, kinds_of)
            except Exception as e:  # a validator must not crash the compiler
                problems = [(None, f"validation failed: {e}")]
            for problem in problems or []:
                fld, msg = problem
                issues.append(SpecIssue(f, st.name, fld, msg, _field_line(lines, st.name, fld),
                                        missing_input=isinstance(problem, MissingInput)))

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

    if issues and not (missing_ok and all(i.missing_input for i in issues)):
        raise SpecError(issues)

    ordered = {s: stages[s] for s in order}
    missing: dict[str, list[SpecIssue]] = {}
    for i in issues:
        missing.setdefault(i.stage, []).append(i)
    spec = Spec(name=name, description=str(data.get("description") or ""), path=path, stages=ordered,
                automation=automation, parent=parent, missing=missing)
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
    """Fill ``stage.version`` (and per-partition versions) in topological order; stages that need a
    missing input (``Spec.blocked``) keep an empty version."""
    blocked = spec.blocked()
    for st in spec.stages.values():
        if st.name in blocked:
            continue
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
    as is) and ``status`` (``stored``, ``to compute``, ``failed: <check>`` or ``damaged: <file problem>``; for a
    stage that needs an input missing from this machine, ``missing input: <field>`` or ``waits on <stage>``,
    with no version)."""
    rows = []
    blocked = spec.blocked()
    for st in spec.stages.values():
        if st.name in blocked:
            rows.append({"stage": st.name, "partition": None, "kind": st.kind.name, "version": "-" * 16,
                         "stored": False, "status": blocked[st.name]})
            continue
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
