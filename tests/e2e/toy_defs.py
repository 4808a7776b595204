"""A code location over the toy spec, for the UI tests: same factory, resources and executor as the real
one, but stages that finish in milliseconds."""

from pathlib import Path

import tests.pipelines.toy_kinds  # noqa: F401
from pipelines.definitions import build_definitions

defs = build_definitions([Path(__file__).resolve().parents[1] / "pipelines" / "specs" / "toy.yaml"])
