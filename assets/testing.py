"""Run one stage kind directly, without Dagster, into a given ``LMFORGE_HOME`` (for tests and the bench).

This is the same code path the asset factory uses after it has resolved inputs (``execute_stage``), so a
kind tested here behaves the same inside Dagster.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from resources.store import ArtifactStore, StoredArtifact

from .registry import InputArtifact, StageResult, StageRun, load_kinds, partition_version, stage_version


def as_input(art: StoredArtifact, stage: str | None = None, partition: str | None = None) -> InputArtifact:
    """Turn a stored artifact into the handle a downstream stage receives."""
    m = art.manifest
    return InputArtifact(
        stage=stage or m.get("stage", art.kind),
        kind=art.kind,
        produces=m.get("produces", ""),
        version=art.version,
        path=art.path,
        manifest=m,
        partition=partition or m.get("partition"),
    )


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

    Returns ``(artifact, result)``; ``result`` is ``None`` on a cache hit.
    """
    kinds = load_kinds()
    kind = kinds[kind_name]
    hit = store.get(kind.name, version)
    if hit is not None:
        return hit, None
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
        from .metadata import to_storable

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
        art = store.commit(tmp, kind.name, version, manifest, metadata=to_storable(result.metadata))
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
    upstream = {a.stage: a for arts in ins.values() for a in arts}
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
