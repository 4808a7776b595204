"""Two tiny stage kinds used only by the core tests: they let the compiler, versions, store, factory and
automation be tested without training anything. They compute real (if trivial) things."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from assets.registry import CheckOutcome, CheckSpec, StageConfig, StageKind, StageResult, ref, register


class ToyTextConfig(StageConfig):
    words: list[str] = Field(description="words to write, one document each")
    repeat: int = Field(1, ge=1, description="how many copies of each word")
    crash_after_rows: int = Field(-1, description="test hook: raise after writing this many rows (-1: never)")


def _toy_text(run):
    cfg = run.config
    rows = [{"id": f"{w}-{i}", "text": w} for w in cfg.words for i in range(cfg.repeat)]
    pq.write_table(pa.Table.from_pylist(rows), run.out / "documents.parquet")
    if cfg.crash_after_rows >= 0:
        if os.environ.get("LMFORGE_TEST_HARD_CRASH"):
            os._exit(3)
        raise RuntimeError("injected crash while writing")
    return StageResult(
        metrics={"rows": len(rows)},
        checks=[CheckOutcome("non_empty", bool(rows), metadata={"rows": len(rows)})],
    )


class ToyUpperConfig(StageConfig):
    from_: str = ref("documents", alias="from", description="documents to upper-case")
    suffix: str = Field("", description="appended to every text")


def _toy_upper(run):
    t = pq.read_table(run.input("from_").path / "documents.parquet").to_pylist()
    rows = [
        {"id": r["id"], "text": r["text"].upper() + run.config.suffix, "parent_ids": [r["id"]]} for r in t
    ]
    pq.write_table(pa.Table.from_pylist(rows), run.out / "documents.parquet")
    return StageResult(metrics={"rows": len(rows)}, checks=[CheckOutcome("non_empty", bool(rows))])


class ToyJoinConfig(StageConfig):
    parts: list[str] = ref("documents", many=True, description="documents to concatenate")


def _toy_join(run):
    rows = []
    for a in run.inputs["parts"]:
        rows.extend(pq.read_table(a.path / "documents.parquet").select(["id", "text"]).to_pylist())
    pq.write_table(pa.Table.from_pylist(rows), run.out / "documents.parquet")
    return StageResult(metrics={"rows": len(rows)})


if "toy_text" not in __import__("assets.registry", fromlist=["KINDS"]).KINDS:
    register(
        StageKind(
            "toy_text",
            ToyTextConfig,
            "documents",
            _toy_text,
            "test kind: words as documents",
            checks=(CheckSpec("non_empty", "at least one row", blocking=True),),
        )
    )
    register(
        StageKind(
            "toy_upper",
            ToyUpperConfig,
            "documents",
            _toy_upper,
            "test kind: upper-case",
            checks=(CheckSpec("non_empty", "at least one row", blocking=True),),
        )
    )
    register(StageKind("toy_join", ToyJoinConfig, "documents", _toy_join, "test kind: concatenate"))


class ToyCountConfig(StageConfig):
    docs: list[str] = ref("documents", many=True, description="one partition per documents stage")
    label: str = Field("n", description="metric name")


def _toy_count(run):
    (art,) = run.inputs["docs"]
    n = pq.read_metadata(art.path / "documents.parquet").num_rows
    pq.write_table(pa.Table.from_pylist([{"stage": run.partition, "rows": n}]), run.out / "records.parquet")
    return StageResult(metrics={run.config.label: n})


if "toy_count" not in __import__("assets.registry", fromlist=["KINDS"]).KINDS:
    register(
        StageKind(
            "toy_count",
            ToyCountConfig,
            "eval",
            _toy_count,
            "test kind: partitioned count",
            partition_field="docs",
        )
    )
