"""The direct execute path (``pipelines/execute.py``): a stage run with ``run_kind`` sees the same lineage
(``StageRun.upstream``) it would see inside a pipeline, found through its inputs' manifests."""

from __future__ import annotations

import pytest

import tests.pipelines.toy_kinds  # noqa: F401  (registers toy kinds)
from assets.registry import as_input
from pipelines.execute import lineage, run_kind
from resources.store import ArtifactStore

pytestmark = pytest.mark.unit


def test_lineage_reaches_every_stored_ancestor_keyed_like_the_factory(lmforge_home):
    quiet = {"log": lambda _m: None}
    a, _ = run_kind("toy_text", {"words": ["x", "y"]}, lmforge_home, stage="a", **quiet)
    b, _ = run_kind("toy_upper", {"from": "a"}, lmforge_home, {"from_": [a]}, stage="b", **quiet)
    c, _ = run_kind("toy_upper", {"from": "b", "suffix": "!"}, lmforge_home, {"from_": [b]}, stage="c", **quiet)
    n, _ = run_kind(
        "toy_count", {"docs": ["c"]}, lmforge_home, {"docs": [c]}, stage="count", partition="c", **quiet
    )
    store = ArtifactStore(lmforge_home)

    up = lineage(store, {"from_": [as_input(c, stage="c")]})
    assert list(up) == ["c", "b", "a"]
    assert {k: v.version for k, v in up.items()} == {"c": c.version, "b": b.version, "a": a.version}
    # a partitioned input is keyed stage/partition, as in the factory
    assert list(lineage(store, {"docs": [as_input(n, stage="count", partition="c")]})) == [
        "count/c", "c", "b", "a"
    ]
    # an ancestor no longer stored ends the walk on that branch, nothing else
    store.quarantine("toy_upper", b.version, "test: removed")
    assert list(lineage(store, {"from_": [as_input(c, stage="c")]})) == ["c"]
