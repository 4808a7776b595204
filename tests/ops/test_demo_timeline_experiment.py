"""The demo timeline's critical path follows the spec's stage graph: a partition waits only for its own model
(and the stage's other inputs), a stage after a partitioned one waits for every partition, and the work off
the path is what remains of the sum of steps."""

from __future__ import annotations

from types import SimpleNamespace as NS

from experiments.demo_timeline import critical_path


def _stage(deps, partitions=None, refs=None, field=None):
    return NS(deps=deps, partitions=partitions, refs=refs or {}, kind=NS(partition_field=field))


SPEC = NS(
    stages={
        "data": _stage([]),
        "a": _stage(["data"]),
        "b": _stage(["data"]),
        "c": _stage(["a"]),
        "eval": _stage(["a", "b", "data"], partitions=["a", "b"], refs={"models": ["a", "b"], "tasks": ["data"]},
                       field="models"),
        "report": _stage(["eval"]),
    }
)


def test_the_longest_chain_runs_through_the_slow_model_and_its_partition():
    steps = {"data": 1.0, "a": 10.0, "b": 3.0, "c": 2.0, "eval[a]": 1.0, "eval[b]": 20.0, "report": 0.5}
    total, path = critical_path(SPEC, steps)
    # eval[b] waits for b (3) and data (1), not for a: 1 + 3 + 20 + 0.5
    assert path == ["data", "b", "eval[b]", "report"]
    assert total == 24.5


def test_a_partition_waits_for_its_own_model_only():
    steps = {"data": 1.0, "a": 10.0, "b": 3.0, "c": 2.0, "eval[a]": 1.0, "eval[b]": 1.0, "report": 0.5}
    total, path = critical_path(SPEC, steps)
    assert path == ["data", "a", "c"]  # 13 s, against 12.5 s through eval[a] and the report
    assert total == 13.0
