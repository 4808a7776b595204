"""Where a materialize's time goes: each stage's step time from the Dagster run history of a home, the
critical path through the spec's stage graph, the work off that path, and the fixed cost outside the steps.

``python -m experiments.demo_timeline HOME SPEC [OUT_JSON] [--since ISO_UTC]``: reads the newest successful
``lmforge materialize`` of SPEC's pipeline on HOME's Dagster instance (its runs started by one CLI invocation: the
unpartitioned batch, each evaluation partition, the report; ``--since`` picks the first invocation at or
after that time). The instance directory is copied to a temporary directory first, so HOME is only read.

Reported: per stage (``stage`` or ``stage[partition]``) its step seconds (Dagster STEP_START to
STEP_SUCCESS) and whether it lies on the critical path; ``sum_of_steps``; ``critical_path_s`` (longest
chain of dependent steps); ``off_path_s`` (the rest: what running independent stages side by side could
hide at best, on spare cores); ``wall_s`` (first run's start to last run's end) and ``outside_steps_s``
(wall minus the sum of steps: run start-up, Dagster bookkeeping between runs). Process start-up before the
first run is not in the instance and not counted.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _runs(instance, pipeline: str, since: float | None) -> list:
    """The runs of one CLI invocation on the pipeline: the newest one, or the first at/after ``since``."""
    import dagster as dg

    from pipelines import runs as R

    recs = instance.get_run_records(dg.RunsFilter(tags={"lmforge/cli": "materialize"}))
    recs = [
        r
        for r in recs
        if r.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        and r.start_time
        and r.dagster_run.tags.get(R.STAGES_TAG, "").startswith(f"{pipeline}: ")
    ]
    by_inv: dict[object, list] = {}
    for r in recs:
        t = r.dagster_run.tags  # one CLI process runs them all: its pid, host and start time name it
        key = (
            (t.get(R.PID_TAG), t.get(R.HOST_TAG), t.get(R.START_TAG))
            if t.get(R.PID_TAG)
            else r.dagster_run.run_id
        )
        by_inv.setdefault(key, []).append(r)
    groups = sorted(by_inv.values(), key=lambda g: min(x.start_time for x in g))
    if since is not None:
        groups = [g for g in groups if min(x.start_time for x in g) >= since]
        if not groups:
            raise SystemExit(f"no successful materialize of {pipeline} started at or after {since}")
        return sorted(groups[0], key=lambda x: x.start_time)
    if not groups:
        raise SystemExit(f"no successful materialize of {pipeline} on this instance")
    return sorted(groups[-1], key=lambda x: x.start_time)


def _step_times(instance, run_id: str, partition: str | None) -> dict[str, float]:
    import dagster as dg

    start: dict[str, float] = {}
    out: dict[str, float] = {}
    for e in instance.all_logs(
        run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS}
    ):
        stage = e.step_key.split("__", 1)[1]
        name = f"{stage}[{partition}]" if partition else stage
        if e.dagster_event.event_type == dg.DagsterEventType.STEP_START:
            start[name] = e.timestamp
        else:
            out[name] = e.timestamp - start[name]
    return out


def critical_path(spec, steps: dict[str, float]) -> tuple[float, list[str]]:
    """The longest chain of dependent steps (a partition depends on its model stage and the stage's other
    inputs; a stage downstream of a partitioned one on every partition)."""

    def deps(name: str) -> list[str]:
        stage, _, part = name.partition("[")
        st = spec.stages[stage]
        ds = []
        for d in st.deps:
            dst = spec.stages[d]
            if dst.partitions is not None:
                ds += [f"{d}[{p}]" for p in dst.partitions]
            else:
                ds.append(d)
        if part:  # a partition reads only its own model among the partition field's stages
            part = part.rstrip("]")
            field = st.kind.partition_field
            others = set(st.refs.get(field, [])) - {part}
            ds = [d for d in ds if d not in others]
        return [d for d in ds if d in steps]

    best: dict[str, tuple[float, list[str]]] = {}

    def longest(name: str) -> tuple[float, list[str]]:
        if name not in best:
            prev = max((longest(d) for d in deps(name)), default=(0.0, []), key=lambda x: x[0])
            best[name] = (prev[0] + steps[name], prev[1] + [name])
        return best[name]

    return max((longest(n) for n in steps), key=lambda x: x[0])


def timeline(home: Path, spec_path: Path, since: float | None = None) -> dict:
    import dagster as dg

    from pipelines.spec import load_spec

    spec = load_spec(spec_path)
    with tempfile.TemporaryDirectory() as d:
        shutil.copytree(home / "dagster", Path(d) / "dagster")
        instance = dg.DagsterInstance.from_config(str(Path(d) / "dagster"))
        recs = _runs(instance, spec.name, since)
        steps: dict[str, float] = {}
        for r in recs:
            steps.update(
                _step_times(instance, r.dagster_run.run_id, r.dagster_run.tags.get("dagster/partition"))
            )
        wall = max(r.end_time for r in recs) - min(r.start_time for r in recs)
        instance.dispose()
    total = sum(steps.values())
    cp, path = critical_path(spec, steps)
    return {
        "home": str(home),
        "spec": str(spec.path),
        "runs": len(recs),
        "steps_s": {k: round(v, 1) for k, v in steps.items()},
        "critical_path": path,
        "sum_of_steps_s": round(total, 1),
        "critical_path_s": round(cp, 1),
        "off_path_s": round(total - cp, 1),
        "wall_s": round(wall, 1),
        "outside_steps_s": round(wall - total, 1),
    }


def main(argv: list[str]) -> None:
    since = None
    if "--since" in argv:
        from datetime import UTC, datetime

        i = argv.index("--since")
        since = datetime.fromisoformat(argv[i + 1]).replace(tzinfo=UTC).timestamp()
        argv = argv[:i] + argv[i + 2 :]
    res = timeline(Path(argv[0]).expanduser(), Path(argv[1]), since)
    text = json.dumps(res, indent=1)
    if len(argv) > 2:
        Path(argv[2]).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
