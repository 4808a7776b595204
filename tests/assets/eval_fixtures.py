"""Helpers for the evaluate/report tests: real artifacts (tasks, documents, models) committed to a store."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ops.fingerprint import stable_hash
from resources.store import ArtifactStore, StoredArtifact


def store_artifact(
    home: Path,
    *,
    kind: str,
    produces: str,
    stage: str,
    write: Callable[[Path], None],
    inputs: dict[str, list[StoredArtifact]] | None = None,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    wall_time_s: float = 1.0,
    flops: float | None = None,
    tokens: int | None = None,
) -> StoredArtifact:
    """Commit an artifact written by ``write(dir)`` with a manifest like the factory's (inputs = lineage)."""
    store = ArtifactStore(home)
    ins = {
        f: [
            {"stage": a.manifest["stage"], "kind": a.kind, "version": a.version, "partition": None}
            for a in arts
        ]
        for f, arts in (inputs or {}).items()
    }
    version = stable_hash({"kind": kind, "stage": stage, "config": config or {}, "inputs": ins})
    hit = store.get(kind, version)
    if hit:
        return hit
    with store.writer(kind, version) as tmp:
        write(tmp)
        manifest = {
            "kind": kind,
            "produces": produces,
            "version": version,
            "pipeline": "test",
            "stage": stage,
            "partition": None,
            "code_version": "test",
            "config": config or {},
            "inputs": ins,
            "metrics": metrics or {},
            "checks": [],
            "wall_time_s": wall_time_s,
            "flops": flops,
            "tokens": tokens,
        }
        return store.commit(tmp, kind, version, manifest)


def tasks_artifact(
    home: Path,
    stage: str = "tasks",
    n_train: int = 200,
    n_eval: int = 40,
    seed: int = 0,
    eval_rows: list[dict] | None = None,
) -> StoredArtifact:
    from ops.eval.tiny import tiny_tasks
    from ops.tasks import write_tasks

    train, ev = tiny_tasks(n_train, n_eval, seed)

    def write(d: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        write_tasks(train, d / "train.parquet")
        if eval_rows is not None:
            pq.write_table(pa.Table.from_pylist(eval_rows), d / "eval.parquet")
        else:
            write_tasks(ev, d / "eval.parquet")

    return store_artifact(
        home,
        kind="reasoning_tasks",
        produces="tasks",
        stage=stage,
        write=write,
        config={"seed": seed, "n_eval": n_eval, "custom": eval_rows is not None},
    )


def documents_artifact(home: Path, texts: list[str], stage: str = "corpus") -> StoredArtifact:
    def write(d: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(
            pa.Table.from_pylist(
                [{"id": f"doc-{i}", "url": f"http://x/{i}", "text": t} for i, t in enumerate(texts)]
            ),
            d / "documents.parquet",
        )

    return store_artifact(
        home,
        kind="dedupe",
        produces="documents",
        stage=stage,
        write=write,
        config={"texts": stable_hash(texts)},
    )


def model_artifact(
    home: Path,
    src: Path,
    stage: str,
    inputs: dict[str, list[StoredArtifact]] | None = None,
    *,
    kind: str = "sft",
    config: dict[str, Any] | None = None,
    **kw: Any,
) -> StoredArtifact:
    """A model artifact whose weights are copied from ``src`` (a save_pretrained directory)."""

    def write(d: Path) -> None:
        for p in Path(src).iterdir():
            if p.is_file() and not p.name.startswith("."):
                shutil.copy2(p, d / p.name)

    return store_artifact(
        home,
        kind=kind,
        produces="model",
        stage=stage,
        write=write,
        inputs=inputs,
        config=config or {"src": str(src)},
        **kw,
    )


def tiny_model_dir(tmp_path_factory) -> Path:
    """The trained tiny chat model, built once per test session (shared through pytest's base temp dir)."""
    from ops.eval.tiny import cached_tiny_chat_model

    return cached_tiny_chat_model(tmp_path_factory.getbasetemp() / "eval-models", train_steps=150)
