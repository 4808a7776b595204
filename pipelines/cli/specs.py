"""``lmforge validate``, ``plan``, ``kinds`` and ``code``: what a spec and the stage kinds compile to.

Key design choice: these commands only compile; none starts Dagster or computes a stage, so they answer in
seconds and are safe to run anywhere (``plan`` reads the store only to say what is stored).
"""

from __future__ import annotations

import sys

from .home import home_of


def cmd_validate(args) -> int:
    from ..spec import SpecError, load_spec

    rc = 0
    for s in args.specs:
        try:
            spec = load_spec(s)
            print(f"ok  {spec.path}: pipeline '{spec.name}', {len(spec.stages)} stages")
        except SpecError as e:
            rc = 1
            for issue in e.issues:
                print(f"error  {issue}", file=sys.stderr)
    return rc


def cmd_plan(args) -> int:
    from resources.store import ArtifactStore

    from ..spec import load_spec, plan

    # a spec whose model or data files are not on this machine still plans: those stages and their
    # descendants are marked, then every missing input is listed as an error (exit status 1)
    spec = load_spec(args.spec, missing_ok=True)
    store = ArtifactStore(home_of(args))
    rows = plan(spec, store)
    w = max(len(r["stage"] + (f"[{r['partition']}]" if r["partition"] else "")) for r in rows)
    for r in rows:
        name = r["stage"] + (f"[{r['partition']}]" if r["partition"] else "")
        print(f"{name:<{w}}  {r['kind']:<17} {r['version']}  {r['status']}")
    for issues in spec.missing.values():
        for issue in issues:
            print(f"error  {issue}", file=sys.stderr)
    return 1 if spec.missing else 0


def _unknown_kinds(names: list[str], kinds: dict) -> bool:
    """True (after printing one error naming them) when some of ``names`` are not stage kinds."""
    unknown = [k for k in names if k not in kinds]
    if unknown:
        print(f"error  unknown stage kind(s): {', '.join(unknown)} (see lmforge kinds)", file=sys.stderr)
    return bool(unknown)


def cmd_kinds(args) -> int:
    """Print every stage kind with its fields (the spec language's reference, generated from the code)."""
    import typing

    from pydantic import BaseModel

    from assets.registry import load_kinds, ref_fields

    kinds = load_kinds()
    if _unknown_kinds(args.kind, kinds):
        return 1
    for name in sorted(kinds):
        if args.kind and name not in args.kind:
            continue
        k = kinds[name]
        refs = ref_fields(k.config)
        print(f"{name}  -> {k.produces}{'  [pool: ' + k.pool + ']' if k.pool else ''}\n    {k.description}")
        for fname, f in k.config.model_fields.items():
            key = f.alias or fname
            if fname in refs:
                typ = f"ref({'|'.join(refs[fname][0])}{', many' if refs[fname][1] else ''})"
            else:
                typ = getattr(f.annotation, "__name__", str(f.annotation)).replace("typing.", "")
                # a nested settings block (e.g. distill's prune): show its keys, not the class path
                sub = [a for a in typing.get_args(f.annotation) or (f.annotation,) if isinstance(a, type)]
                sub = [a for a in sub if issubclass(a, BaseModel)]
                if sub:
                    typ = "{" + ", ".join(sub[0].model_fields) + "}"
            default = "required" if f.is_required() else f"default {f.get_default(call_default_factory=True)!r}"
            print(f"    {key:<22} {typ:<28} {default}: {f.description or ''}")
        for c in k.checks:
            print(f"    check {c.name}{' (blocking)' if c.blocking else ''}: {c.description}")
        print()
    return 0


def cmd_code(args) -> int:
    """Print each kind's code version; with kind names, also the modules (or definitions) it covers."""
    from assets.registry import load_kinds

    kinds = load_kinds()
    if _unknown_kinds(args.kind, kinds):
        return 1
    for name in args.kind or sorted(kinds):
        code = kinds[name].code()
        print(f"{name:<18} code {code.version}  ({len(code.modules)} modules)")
        if not args.kind:
            continue
        for m in code.modules:
            what = "whole module" if m.symbols is None else "only: " + ", ".join(m.symbols)
            print(f"    {m.hash}  {m.path:<30} {what}")
        print()
    return 0
