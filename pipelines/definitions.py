"""The Dagster code location: every spec in ``pipelines/`` becomes its own asset group.

Key design choice: loading definitions reads YAML and hashes configs only -- no torch, transformers or
datatrove import -- so ``dagster dev`` starts in seconds. A spec that fails validation fails the code
location load with the compiler's message (file, stage, field, line), which the UI shows. A valid spec whose
input files or checkpoint are not on this machine (a recipe waiting for its model and data) is left out with
a warning naming each missing input, so it never takes the other pipelines down with it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import dagster as dg

from pipelines.factory import build_spec_definitions
from resources.lmforge import LmforgeResource

from .spec import SpecError, SpecIssue, load_spec, spec_files

log = logging.getLogger("lmforge")


def _load_present(paths: Iterable[Path]) -> list:
    """Every spec, except those whose only problems are inputs missing on this machine (warned about)."""
    specs = []
    for p in paths:
        spec = load_spec(p, missing_ok=True)  # any other problem still raises
        if not spec.missing:
            specs.append(spec)
            continue
        msg = f"{p}: left out of the Dagster definitions, its inputs are not on this machine:\n" + "\n".join(
            f"  {i}" for issues in spec.missing.values() for i in issues
        )
        log.warning(msg)
        warnings.warn(msg, stacklevel=2)
    return specs


def build_definitions(paths: Iterable[Path] | None = None, home: str = "") -> dg.Definitions:
    specs = _load_present(paths if paths is not None else spec_files())
    seen: dict[str, Path] = {}
    for s in specs:
        if s.name in seen:
            raise SpecError([SpecIssue(str(s.path), None, "pipeline",
                                       f"pipeline name '{s.name}' is also used by {seen[s.name]}")])
        seen[s.name] = s.path
    parts = [build_spec_definitions(s) for s in specs]
    base = dg.Definitions(
        resources={"lmforge": LmforgeResource(home=home)},
        executor=dg.multiprocess_executor.configured({"max_concurrent": 2}),
    )
    return dg.Definitions.merge(base, *parts)


defs = build_definitions()
