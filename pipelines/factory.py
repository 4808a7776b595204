"""Asset factory: a compiled spec -> Dagster assets, checks, schedules and sensors.

Key design choices:
* One asset per stage, key ``<pipeline>/<stage>``, group ``<pipeline>``. Its ``code_version`` is the
  stage's version (kind + config + derived code version + input versions) without the identity of external
  files, so the UI says "code version changed" exactly when the spec or the op changed; the
  materialization's ``data_version`` is the content hash of the stored artifact, so children go stale only
  when bytes actually changed. External files (a watched folder, a checkpoint path) are read when a run
  starts, not when the code location loads: their identity in the code version would make every stage the
  run wrote look stale to a code server loaded before the files changed. Dagster keeps one code version
  for all partitions of an asset, so a partitioned stage's covers every partition's version: a partition
  whose input changed is never shown up to date (its siblings show stale; they are cache hits).
* Assets hand each other *handles* (artifact directories found by version in the store), never pickled
  objects: every asset returns a ``MaterializeResult`` and declares upstream stages as ``deps``.
* A stored version is a cache hit: the asset records the stored artifact (same metadata, same checks,
  same data version) in seconds, also when another pipeline (``extends:``) computed it.
* Checks are declared next to the asset (``check_specs``) and evaluated by the stage itself.
* A stage whose blocking check fails still reports its check results (Dagster skips downstream in the
  same run), but its artifact is stored as failed, never as the version's result: a later run that
  needs it as an input stops with a message naming the upstream stage and the check.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import functools
import hashlib
from pathlib import Path
from typing import Any

import dagster as dg

from assets.metadata import to_dagster
from assets.registry import InputArtifact, as_input
from ops.fingerprint import stable_hash
from resources.lmforge import LmforgeResource

from .execute import execute_stage
from .instance import GPU_POOL, gpu_slots, torch_threads

KIND_TAGS = {
    "warc": {"warc"},
    "documents": {"parquet"},
    "tasks": {"parquet"},
    "tokenizer": {"huggingface"},
    "tokens": {"numpy"},
    "model": {"pytorch", "huggingface"},
    "sft_data": {"parquet"},
    "rollouts": {"parquet"},
    "pairs": {"parquet"},
    "eval": {"parquet"},
    "report": {"markdown"},
}


# (stage label, exception) of every stage that raised in this process. ``lmforge materialize`` runs stages
# in process, so it can still name the stage and its error when the Dagster instance cannot record the
# failure (a full disk fails the event log's own writes).
STAGE_FAILURES: list[tuple[str, BaseException]] = []


def _records_failure(label: str):
    def wrap(fn):
        @functools.wraps(fn)
        def run(context, *args, **kwargs):
            try:
                return fn(context, *args, **kwargs)
            except Exception as e:
                pk = context.partition_key if context.has_partition_key else None
                STAGE_FAILURES.append((label + (f"[{pk}]" if pk else ""), e))
                raise

        return run

    return wrap


def _input_handles(
    spec, stage, store, partition: str | None
) -> tuple[dict[str, list[InputArtifact]], dict[str, InputArtifact]]:
    """Find every referenced artifact in the store by version; fail clearly if one is missing."""
    inputs: dict[str, list[InputArtifact]] = {}
    pf = stage.kind.partition_field
    for fname, names in stage.refs.items():
        arts: list[InputArtifact] = []
        for n in names:
            if fname == pf and partition is not None and n != partition:
                continue
            up = spec.stages[n]
            keys = up.partitions if up.partitions is not None else [None]
            for p in keys:
                v = up.partition_versions[p] if p is not None else up.version
                art = store.get(up.kind.name, v)
                if art is None:
                    raise dg.Failure(
                        description=_missing_input(spec, stage, n, p, v, store.state(up.kind.name, v))
                    )
                arts.append(as_input(art, stage=n, partition=p))
        inputs[fname] = arts
    upstream: dict[str, InputArtifact] = {}
    for a in spec.ancestors(stage.name):
        up = spec.stages[a]
        for p in up.partitions if up.partitions is not None else [None]:
            v = up.partition_versions[p] if p is not None else up.version
            art = store.get(up.kind.name, v)
            if art is not None:
                upstream[f"{a}/{p}" if p else a] = as_input(art, stage=a, partition=p)
    return inputs, upstream


def _missing_input(spec, stage, n: str, p: str | None, v: str, state) -> str:
    """Why stage ``stage`` cannot start on upstream ``n``: not stored, failed its blocking check, or damaged."""
    what = f"'{n}'{f' partition {p}' if p else ''} (version {v})"
    if state.status == "failed":
        return (
            f"stage '{stage.name}' cannot start: upstream stage {what} failed its blocking check: "
            f"{state.message}. The failed artifact is kept for inspection at {state.path}; fix the cause "
            f"and rematerialize '{n}' (select '{spec.name}/{n}+')."
        )
    if state.status == "damaged":
        return (
            f"stage '{stage.name}' cannot start: the stored artifact of upstream stage {what} is damaged: "
            f"{state.message}. Rematerialize '{n}' (select '{spec.name}/{n}+'): the damaged copy is moved "
            f"aside and recomputed."
        )
    return (
        f"stage '{stage.name}' needs {what}, which is not materialized yet; materialize it first "
        f"(e.g. select '+{spec.name}/{stage.name}')."
    )


def _stage_resources(kind, context, home: Path) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if "site" in kind.resources:
        from resources.site import make_resource

        res["site"] = make_resource(home)
    if kind.pool == "gpu":
        try:
            from resources.launchers import make_launcher
        except ImportError:  # launchers not available: stages fall back to in-process training
            pass
        else:
            res["launcher"] = make_launcher(context)
    return res


@contextlib.contextmanager
def _pool_threads(kind, context):
    """Torch CPU threads for a stage of the ``gpu`` pool: the machine's cores divided by the pool's slot
    count (``LMFORGE_TORCH_THREADS`` overrides), so stages that the pool lets run side by side do not
    oversubscribe the cores. Yields a dict whose ``used`` is the thread count in effect when the stage
    ended (a stage's own ``threads`` setting wins); the process's previous count is restored after. The
    process's allocator is set up for tensor work first (``ops.train.malloc``; it stays so)."""
    info: dict[str, int] = {}
    if kind.pool != GPU_POOL:
        yield info
        return
    import torch  # only stages of the gpu pool get here; they import torch themselves

    from ops.train.malloc import tune_malloc

    malloc = tune_malloc()
    storage = context.instance.event_log_storage
    slots = None
    if storage.supports_global_concurrency_limits and GPU_POOL in storage.get_concurrency_keys():
        slots = storage.get_concurrency_info(GPU_POOL).slot_count or None
    before = torch.get_num_threads()
    n = torch_threads(slots)
    torch.set_num_threads(n)
    context.log.info(
        f"torch CPU threads: {n} (gpu pool slots: {slots or gpu_slots()})" + (f"; {malloc}" if malloc else "")
    )
    try:
        yield info
        info["used"] = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _scalar(v: Any) -> dg.MetadataValue:
    """A number stays a number (the UI plots it across materializations); anything else is text."""
    if isinstance(v, bool):
        return dg.MetadataValue.bool(v)
    if isinstance(v, int):
        return dg.MetadataValue.int(v)
    if isinstance(v, float):
        return dg.MetadataValue.float(v)
    return dg.MetadataValue.text(str(v))


def _result(stage, art, result_or_none, partition: str | None, extra: dict | None = None) -> dg.MaterializeResult:
    m = art.manifest
    md: dict[str, Any] = {
        "lmforge/kind": dg.MetadataValue.text(stage.kind.name),
        "lmforge/version": dg.MetadataValue.text(art.version),
        "lmforge/artifact": dg.MetadataValue.path(str(art.path)),
        "lmforge/cache_hit": dg.MetadataValue.bool(result_or_none is None),
        "lmforge/wall_time_s": dg.MetadataValue.float(float(m.get("wall_time_s") or 0.0)),
    }
    if art.failed:
        md["lmforge/failed"] = dg.MetadataValue.text(art.failed)
    for k, v in (m.get("metrics") or {}).items():
        if isinstance(v, bool | int | float | str):
            md[k] = _scalar(v)
    md.update(to_dagster(art.metadata(), art.path))
    md.update(extra or {})
    outcomes = {c["name"]: c for c in m.get("checks", [])}
    checks = []
    for spec_ in stage.kind.checks:
        c = outcomes.get(spec_.name)
        passed = bool(c and c["passed"])
        cmeta = {}
        for k, v in ((c or {}).get("metadata") or {}).items():
            cmeta[k] = dg.MetadataValue.json(v) if isinstance(v, dict | list) else _scalar(v)
        if c is None:
            cmeta["error"] = dg.MetadataValue.text("the stage did not evaluate this check")
        checks.append(
            dg.AssetCheckResult(
                check_name=spec_.name,
                passed=passed,
                metadata=cmeta,
                description=(c or {}).get("description") or spec_.description,
                severity=dg.AssetCheckSeverity.ERROR if spec_.blocking else dg.AssetCheckSeverity.WARN,
            )
        )
    return dg.MaterializeResult(
        metadata=md, data_version=dg.DataVersion(m["data_version"]), check_results=checks
    )


def code_versions(spec) -> dict[str, str]:
    """The Dagster code version of every stage: its version computed without external files' identity
    (see the module docstring); for a partitioned stage, over all its partitions' versions."""
    from .spec import compute_versions

    recipe = copy.deepcopy(spec)
    compute_versions(recipe, fingerprints=False)
    return {
        n: st.version if st.partitions is None else stable_hash({"stage": st.version, "partitions": st.partition_versions})
        for n, st in recipe.stages.items()
    }


def build_stage_asset(spec, stage, code_version: str) -> dg.AssetsDefinition:
    key = dg.AssetKey([spec.name, stage.name])
    kind = stage.kind
    partitions_def = dg.StaticPartitionsDefinition(stage.partitions) if stage.partitions is not None else None
    auto = spec.automation.get(stage.name) or {}
    condition = None
    if auto.get("eager"):
        # a dependency whose version changed and is not materialized yet would make the run fail for lack of it
        condition = (
            dg.AutomationCondition.eager()
            & dg.AutomationCondition.all_deps_blocking_checks_passed()
            & ~dg.AutomationCondition.any_deps_match(
                dg.AutomationCondition.code_version_changed().since(dg.AutomationCondition.newly_updated())
            )
        )
    check_specs = [
        dg.AssetCheckSpec(c.name, asset=key, description=c.description, blocking=c.blocking)
        for c in kind.checks
    ]
    description = f"{kind.name}: {kind.description}\n\nversion {stage.version}"

    @dg.asset(
        key=key,
        group_name=spec.name,
        code_version=code_version,
        deps=[dg.AssetKey([spec.name, d]) for d in stage.deps],
        partitions_def=partitions_def,
        pool=kind.pool,
        check_specs=check_specs or None,
        kinds=KIND_TAGS.get(kind.produces),
        description=description,
        automation_condition=condition,
        tags={"lmforge/kind": kind.name, "lmforge/produces": kind.produces},
        metadata={"lmforge/spec": str(spec.path), "lmforge/produces": kind.produces},
    )
    @_records_failure(f"{spec.name}/{stage.name}")
    def _stage_asset(context, lmforge: LmforgeResource):
        store = lmforge.store()
        live = copy.deepcopy(spec)
        # Re-fingerprint external inputs now: a new file in a watched folder gives a new version at run time.
        from .spec import compute_versions

        compute_versions(live)
        st = live.stages[stage.name]
        partition = context.partition_key if st.partitions is not None else None
        version = st.partition_versions[partition] if partition else st.version
        inputs, upstream = _input_handles(live, st, store, partition)
        home = lmforge.home_path()
        with _pool_threads(kind, context) as threads:
            art, result = execute_stage(
                store,
                pipeline=spec.name,
                stage=stage.name,
                kind_name=kind.name,
                config=st.config,
                version=version,
                inputs=inputs,
                log=context.log.info,
                partition=partition,
                resources=_stage_resources(kind, context, home),
                upstream=upstream,
                input_versions={f: [a.version for a in arts] for f, arts in inputs.items()},
            )
        if art.failed:
            # The Dagster check results below fail (blocking: downstream in this run is skipped); the
            # catalog only indexes artifacts that count as a stage's result.
            context.log.error(f"{spec.name}/{stage.name}: {art.failed}; kept for inspection at {art.path}")
        else:
            try:
                lmforge.catalog().register(
                    art, pipeline=spec.name, stage=stage.name, partition=partition, cache_hit=result is None
                )
            except Exception as e:  # the catalog is an index; the artifact is already safely stored
                context.log.warning(
                    f"catalog registration failed (rebuild with `lmforge catalog rebuild`): {e}"
                )
        extra = {"lmforge/torch_threads": dg.MetadataValue.int(threads["used"])} if threads.get("used") else {}
        return _result(st, art, result, partition, extra)

    return _stage_asset


def _watch_sensor(spec, stage_name: str, watch: Any) -> dg.SensorDefinition:
    folder = Path(watch if isinstance(watch, str) else watch["path"]).expanduser()
    pattern = "*" if isinstance(watch, str) else watch.get("pattern", "*")
    key = dg.AssetKey([spec.name, stage_name])

    @dg.sensor(
        name=f"{spec.name}__{stage_name}__watch",
        target=dg.AssetSelection.assets(key),
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Materializes {spec.name}/{stage_name} when files matching {pattern!r} "
        f"appear or change in {folder}",
    )
    def _sensor(context):
        if not folder.is_dir():
            return dg.SkipReason(f"{folder} does not exist")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and fnmatch.fnmatch(p.name, pattern))
        state = hashlib.sha256(
            "\n".join(f"{p}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in files).encode()
        ).hexdigest()[:16]
        if not files:
            return dg.SkipReason(f"no files matching {pattern!r} in {folder}")
        if state == context.cursor:
            return dg.SkipReason("no new or changed files")
        context.update_cursor(state)
        return dg.RunRequest(
            run_key=f"{stage_name}-{state}", asset_selection=[key], tags={"lmforge/trigger": "new-files"}
        )

    return _sensor


def build_spec_definitions(spec) -> dg.Definitions:
    versions = code_versions(spec)
    assets = [build_stage_asset(spec, st, versions[st.name]) for st in spec.stages.values()]
    schedules, sensors = [], []
    eager = False
    for sname, auto in spec.automation.items():
        if "cron" in auto:
            schedules.append(
                dg.ScheduleDefinition(
                    name=f"{spec.name}__{sname}__cron",
                    cron_schedule=auto["cron"],
                    execution_timezone="UTC",
                    target=dg.AssetSelection.assets(dg.AssetKey([spec.name, sname])),
                    default_status=dg.DefaultScheduleStatus.RUNNING,
                    description=f"Re-materializes {spec.name}/{sname} on '{auto['cron']}'",
                )
            )
        if "watch" in auto:
            sensors.append(_watch_sensor(spec, sname, auto["watch"]))
        eager = eager or bool(auto.get("eager"))
    if eager:
        sensors.append(
            dg.AutomationConditionSensorDefinition(
                f"{spec.name}__automation",
                target=dg.AssetSelection.groups(spec.name),
                default_status=dg.DefaultSensorStatus.RUNNING,
            )
        )
    return dg.Definitions(assets=assets, schedules=schedules, sensors=sensors, jobs=_jobs(spec))


def _jobs(spec) -> list:
    """``<pipeline>__all``. A Dagster job holds one partitions definition, so when partitioned stages differ in
    their partitions (two evaluate stages over other models), ``__all`` takes the unpartitioned stages and
    each partitioned stage gets its own ``<pipeline>__<stage>__partitions`` job."""
    partitioned = {n: st.partitions for n, st in spec.stages.items() if st.partitions is not None}
    if len({tuple(p) for p in partitioned.values()}) <= 1:
        return [
            dg.define_asset_job(
                f"{spec.name}__all",
                selection=dg.AssetSelection.groups(spec.name),
                description=f"Materialize every stage of {spec.name}",
            )
        ]
    plain = [dg.AssetKey([spec.name, n]) for n in spec.stages if n not in partitioned]
    jobs = [
        dg.define_asset_job(
            f"{spec.name}__all",
            selection=dg.AssetSelection.assets(*plain),
            description=f"Materialize every unpartitioned stage of {spec.name}; "
            f"{', '.join(sorted(partitioned))} have their own jobs (one partition per model)",
        )
    ]
    for n in sorted(partitioned):
        jobs.append(
            dg.define_asset_job(
                f"{spec.name}__{n}__partitions",
                selection=dg.AssetSelection.assets(dg.AssetKey([spec.name, n])),
                description=f"Materialize {spec.name}/{n}, one partition per model",
            )
        )
    return jobs
