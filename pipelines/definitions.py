"""The Dagster code location: every spec in ``pipelines/`` becomes its own asset group.

Key design choice: loading definitions reads YAML and hashes configs only -- no torch, transformers or
datatrove import -- so ``dagster dev`` starts in seconds. A spec that fails validation fails the code
location load with the compiler's message (file, stage, field, line), which the UI shows.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import dagster as dg

from pipelines.factory import build_spec_definitions
from resources.lmforge import LmforgeResource

from .spec import SpecError, SpecIssue, load_spec, spec_files


def build_definitions(paths: Iterable[Path] | None = None, home: str = "") -> dg.Definitions:
    specs = [load_spec(p) for p in (paths if paths is not None else spec_files())]
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
