"""Orchestration overhead: one stage materialized through lmforge (Dagster run, store, manifest, catalog)
against the same op called directly in the same process, and a no-op re-materialization of a fully
stored pipeline (every stage a cache hit).

Key design choice: the whole-pipeline figure is always measured on the real default pipeline
(``tiny_r1``, every stage), never on a smaller stand-in. The home it uses is, in order: ``$LMFORGE_HOME``
when it already holds every stage at the current code versions (what ``make demo`` leaves), else the
bench's own home (``$LMFORGE_BENCH_HOME``, default ``$LMFORGE_HOME`` with ``-bench`` appended), which
this benchmark materializes first when it is incomplete: the first ``make bench`` on a machine (or after
a code change that re-versions stages) then runs the whole pipeline once, about as long as ``make demo``,
and reports that cold time too; later runs reuse it. No artifact is ever written into the user's home (the
no-op run there adds only a run to its Dagster history); a re-run that wrote any artifact is reported as an
error instead of a time.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

DEFAULT_PIPELINE = "tiny_r1"
STAGE_SPEC = """pipeline: bench_core
stages:
  tasks: {kind: reasoning_tasks, train: 2000, eval: 200}
"""


def _direct(home: Path) -> float:
    from assets.registry import StageRun, load_kinds

    kind = load_kinds()["reasoning_tasks"]
    cfg = kind.config.model_validate({"train": 2000, "eval": 200})
    out = home / "direct"
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    kind.run(
        StageRun(
            pipeline="bench",
            stage="tasks",
            kind=kind.name,
            version="direct",
            config=cfg,
            out=out,
            work=home / "work",
            inputs={},
            home=home,
            log=lambda *_: None,
        )
    )
    return time.perf_counter() - t0


def run(out_dir: Path) -> dict:
    from pipelines.cli import materialize
    from resources.store import default_home

    user_home = default_home()  # read first: materialize() points $LMFORGE_HOME at the home it runs in
    res: dict = {}
    with _home_env(), tempfile.TemporaryDirectory() as d:
        home = Path(d)
        spec = home / "bench_core.yaml"
        spec.write_text(STAGE_SPEC)
        direct = min(_direct(home / f"d{i}") for i in range(3))
        t0 = time.perf_counter()
        assert materialize(spec, None, home / "h", quiet=True)
        through = time.perf_counter() - t0
        t0 = time.perf_counter()
        assert materialize(spec, None, home / "h", quiet=True)
        noop = time.perf_counter() - t0
    res["stage_direct_s"] = round(direct, 3)
    res["stage_through_lmforge_s"] = round(through, 3)
    res["orchestration_overhead_s"] = round(through - direct, 3)
    res["direct_over_lmforge_ratio"] = round(direct / through, 3)
    res["noop_rematerialize_s"] = round(noop, 3)
    try:
        res.update(pipeline_noop(DEFAULT_PIPELINE, user_home))
    except Exception as e:  # reported, not hidden
        res[f"{DEFAULT_PIPELINE}_noop_rematerialize_s"] = f"error: {type(e).__name__}: {e}"
    return res


@contextlib.contextmanager
def _home_env():
    """Restore ``$LMFORGE_HOME`` afterwards: ``materialize`` sets it to the home it ran in, and the benchmarks
    that run after this one must see the user's."""
    before = os.environ.get("LMFORGE_HOME")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LMFORGE_HOME", None)
        else:
            os.environ["LMFORGE_HOME"] = before


def bench_home(user_home: Path) -> Path:
    """The bench's own home for the default pipeline: ``$LMFORGE_BENCH_HOME``, else beside the user's."""
    env = os.environ.get("LMFORGE_BENCH_HOME")
    return Path(env).expanduser().resolve() if env else user_home.with_name(user_home.name + "-bench")


def _missing(spec, home: Path) -> list[str]:
    """The stages of ``spec`` with an output not stored in ``home`` at the current versions."""
    from resources.store import ArtifactStore

    store = ArtifactStore(home)
    return [
        name
        for name, s in spec.stages.items()
        if not all(store.exists(s.kind.name, v) for v in s.output_versions())
    ]


def pipeline_noop(pipeline: str, user_home: Path) -> dict:
    """Time a no-op re-materialization of every stage of ``pipeline`` (a spec name or path), materializing it
    into the bench's own home first when neither ``user_home`` nor that home holds all of it."""
    from pipelines.cli import materialize
    from pipelines.spec import load_spec
    from resources.store import ArtifactStore

    key = Path(str(pipeline)).stem
    spec = load_spec(pipeline)
    out: dict = {f"{key}_stages": len(spec.stages)}
    with _home_env():
        if not _missing(spec, user_home):
            home, out[f"{key}_home"] = user_home, f"{user_home} ($LMFORGE_HOME, complete)"
        else:
            home = bench_home(user_home)
            todo = _missing(spec, home)
            if todo:
                t0 = time.perf_counter()
                ok = materialize(pipeline, None, home, quiet=True)
                out[f"{key}_materialize_s"] = round(time.perf_counter() - t0, 1)
                out[f"{key}_materialized_stages"] = len(todo)
                if not ok or _missing(spec, home):
                    out[f"{key}_noop_rematerialize_s"] = f"error: materializing {key} into {home} failed"
                    return out
            how = f"materialized {len(todo)} stages in this run" if todo else "complete"
            out[f"{key}_home"] = f"{home} (the bench's own home, {how}; $LMFORGE_HOME {user_home} was incomplete)"
        store = ArtifactStore(home)
        before = set(store.versions())
        t0 = time.perf_counter()
        ok = materialize(pipeline, None, home, quiet=True)
        noop = time.perf_counter() - t0
        written = set(store.versions()) - before
    if not ok or written:
        out[f"{key}_noop_rematerialize_s"] = f"error: the re-materialization ran stages ({sorted(written)})"
    else:
        out[f"{key}_noop_rematerialize_s"] = round(noop, 2)
    return out
