"""Run one stage kind directly, without Dagster, into a given ``LMFORGE_HOME`` (for tests and the bench).

This is the same code path the asset factory uses after it has resolved inputs (``execute_stage``), so a
kind tested here behaves the same inside Dagster.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from assets.registry import (
    InputArtifact,
    StageResult,
    StageRun,
    as_input,
    load_kinds,
    partition_version,
    stage_version,
)
from resources.store import ArtifactStore, StoredArtifact


def execute_stage(
    store: ArtifactStore,
    *,
    pipeline: str,
    stage: str,
    kind_name: str,
    config: Any,
    version: str,
    inputs: dict[str, list[InputArtifact]],
    log=print,
    partition: str | None = None,
    resources: dict[str, Any] | None = None,
    upstream: dict[str, InputArtifact] | None = None,
    input_versions: dict[str, Any] | None = None,
) -> tuple[StoredArtifact, StageResult | None]:
    """Compute and store one stage, or return the stored artifact if this version exists (cache hit).

    Returns ``(artifact, result)``; ``result`` is ``None`` on a cache hit. The version's lock is held
    from the cache lookup to the commit, so a second run asking for the same version waits and then
    takes the first run's artifact as a cache hit. A stored copy that fails its check (see
    :meth:`ArtifactStore.get`) is moved aside and recomputed; a failed attempt (blocking check) is
    recomputed. An input that failed its blocking check is refused. If a blocking check fails, the
    artifact is committed as failed (``.failed-<version>``) and returned with ``failed`` set in its
    manifest.
    """
    kinds = load_kinds()
    kind = kinds[kind_name]
    for field_name, arts in inputs.items():
        for a in arts:
            if a.manifest.get("failed"):
                raise ValueError(
                    f"stage {stage!r} cannot start: its input {a.stage!r} (field {field_name!r}, "
                    f"{a.kind} version {a.version}) failed a blocking check: {a.manifest['failed']}"
                )
    with store.lock(kind.name, version, holder=f"{pipeline}/{stage}", log=log):
        state = store.state(kind.name, version)
        if state.usable:
            hit = store.get(kind.name, version)
            if hit is not None:
                log(f"{pipeline}/{stage}: {kind.name} version {version} is stored: cache hit")
                return hit, None
        if state.status == "damaged":
            aside = store.quarantine(kind.name, version, state.message)
            log(
                f"{pipeline}/{stage}: the stored artifact {state.path} is damaged ({state.message}); "
                f"moved it aside to {aside} and recomputing {kind.name} version {version}"
            )
        elif state.status == "failed":
            log(
                f"{pipeline}/{stage}: {kind.name} version {version} failed before ({state.message}; "
                f"kept at {state.path}); recomputing"
            )
        else:
            log(f"{pipeline}/{stage}: computing {kind.name} version {version}")
        return _compute(
            store,
            kind,
            pipeline=pipeline,
            stage=stage,
            config=config,
            version=version,
            inputs=inputs,
            log=log,
            partition=partition,
            resources=resources,
            upstream=upstream,
            input_versions=input_versions,
        )


def blocking_failure(kind, checks) -> str | None:
    """The message of the failed blocking checks among ``checks`` (CheckOutcome or manifest dicts)."""
    blocking = {c.name for c in kind.checks if c.blocking}
    bad = []
    for c in checks:
        name, passed, desc = (
            (c["name"], c["passed"], c.get("description"))
            if isinstance(c, dict)
            else (c.name, c.passed, c.description)
        )
        if name in blocking and not passed:
            bad.append(f"check '{name}' failed" + (f" ({desc})" if desc else ""))
    return "; ".join(bad) or None


def _compute(
    store: ArtifactStore,
    kind,
    *,
    pipeline: str,
    stage: str,
    config: Any,
    version: str,
    inputs: dict[str, list[InputArtifact]],
    log,
    partition: str | None,
    resources: dict[str, Any] | None,
    upstream: dict[str, InputArtifact] | None,
    input_versions: dict[str, Any] | None,
) -> tuple[StoredArtifact, StageResult]:
    t0 = time.time()
    code = kind.code()
    with store.writer(kind.name, version) as tmp:
        run = StageRun(
            pipeline=pipeline,
            stage=stage,
            kind=kind.name,
            version=version,
            config=config,
            out=tmp,
            work=store.work_dir(kind.name, version),
            inputs=inputs,
            home=store.home,
            log=log,
            partition=partition,
            resources=resources or {},
            upstream=upstream or {},
        )
        result = kind.run(run)
        if not isinstance(result, StageResult):
            raise TypeError(f"stage kind {kind.name!r} returned {type(result).__name__}, not StageResult")
        from assets.metadata import to_storable

        manifest = {
            "kind": kind.name,
            "produces": kind.produces,
            "version": version,
            "pipeline": pipeline,
            "stage": stage,
            "partition": partition,
            "code_version": code.version,
            "code_modules": code.as_manifest(),
            "config": config.model_dump(mode="json", by_alias=True),
            "inputs": {
                f: [
                    {"stage": a.stage, "kind": a.kind, "version": a.version, "partition": a.partition}
                    for a in arts
                ]
                for f, arts in inputs.items()
            },
            "input_versions": input_versions or {},
            "metrics": result.metrics,
            "checks": [
                {"name": c.name, "passed": c.passed, "description": c.description, "metadata": c.metadata}
                for c in result.checks
            ],
            "wall_time_s": round(time.time() - t0, 3),
            "flops": result.flops,
            "tokens": result.tokens,
        }
        failed = blocking_failure(kind, result.checks)
        if failed:
            log(
                f"{pipeline}/{stage}: {failed}; the artifact is kept for inspection only and is not "
                f"{kind.name} version {version}'s result"
            )
        art = store.commit(
            tmp, kind.name, version, manifest, metadata=to_storable(result.metadata), failed=failed
        )
    return art, result


def run_kind(
    kind_name: str,
    config: dict[str, Any] | Any,
    home: Path | str,
    inputs: dict[str, list[StoredArtifact | InputArtifact]] | None = None,
    *,
    stage: str | None = None,
    pipeline: str = "test",
    partition: str | None = None,
    resources: dict[str, Any] | None = None,
    log=print,
) -> tuple[StoredArtifact, StageResult | None]:
    """Validate ``config`` with the kind's model and run it, under the version a spec stage with the same
    config and inputs gets (:func:`assets.registry.stage_version`). A partitioned kind needs ``partition``
    and the partition's upstream artifact(s) in its partition field."""
    kinds = load_kinds()
    kind = kinds[kind_name]
    cfg = config if isinstance(config, kind.config) else kind.config.model_validate(config)
    ins: dict[str, list[InputArtifact]] = {}
    for f, arts in (inputs or {}).items():
        ins[f] = [a if isinstance(a, InputArtifact) else as_input(a) for a in arts]
    iv = {f: [a.version for a in arts] for f, arts in ins.items() if arts}
    fp = kind.fingerprint(cfg) if kind.fingerprint else None
    version = stage_version(kind, cfg, iv, fp)
    pf = kind.partition_field
    if pf is not None:
        if partition is None or not iv.get(pf):
            raise ValueError(
                f"kind {kind.name!r} is partitioned by {pf!r}: pass partition= and that partition's input in {pf!r}"
            )
        version = partition_version(version, iv[pf])
    store = ArtifactStore(home)
    upstream = lineage(store, ins)
    return execute_stage(
        store,
        pipeline=pipeline,
        stage=stage or kind_name,
        kind_name=kind.name,
        config=cfg,
        version=version,
        inputs=ins,
        log=log,
        partition=partition,
        resources=resources,
        upstream=upstream,
        input_versions=iv,
    )


def lineage(store: ArtifactStore, inputs: dict[str, list[InputArtifact]]) -> dict[str, InputArtifact]:
    """Every ancestor of a directly run stage, keyed like the factory's ``StageRun.upstream`` (stage name, or
    ``stage/partition``): the inputs, then each artifact their manifests name as inputs, transitively, as
    far as the store holds them. A stage run here sees the same lineage it would see inside a pipeline."""
    out: dict[str, InputArtifact] = {}
    for a in (x for arts in inputs.values() for x in arts):
        out.setdefault(f"{a.stage}/{a.partition}" if a.partition else a.stage, a)
    stack = [a.manifest for a in out.values()]
    seen = {a.version for a in out.values()}
    while stack:
        m = stack.pop()
        for refs in (m.get("inputs") or {}).values():
            for r in refs:
                v = r.get("version")
                if not v or v in seen:
                    continue
                seen.add(v)
                art = store.get(r.get("kind", ""), v)
                if art is None:
                    continue
                name = r.get("stage") or art.manifest.get("stage") or art.kind
                p = r.get("partition")
                out.setdefault(f"{name}/{p}" if p else name, as_input(art, stage=name, partition=p))
                stack.append(art.manifest)
    return out
