"""The stage-kind contract: how a stage kind plugs into the spec compiler and the asset factory.

A stage kind is one :class:`StageKind` registered with :func:`register`:

* ``config``: one pydantic model (subclass :class:`StageConfig`, ``extra="forbid"``), a description per
  field. Fields that name upstream stages are declared with :func:`ref`, which records which artifact
  types they accept; the compiler checks every reference (missing stage, cycle, wrong type) before
  anything runs.
* ``produces``: the artifact type written (see :data:`ARTIFACT_TYPES`).
* ``code_version`` is derived, never written: a hash of the normalised source of the code ``run`` reaches
  (``resources/codehash.py``; ``lmforge code KIND`` lists it). It is hashed into every version, so a
  behaviour change anywhere in that code re-versions the kind and its descendants.
* ``run(StageRun) -> StageResult``: reads inputs from ``run.inputs``, writes the artifact into ``run.out``
  (a private temp directory that becomes the artifact when ``run`` returns), returns metrics and
  metadata. It must not write anywhere else except ``run.work`` (persistent resumable scratch).

The asset factory (``pipelines/factory.py``) turns each stage into a Dagster asset; kinds never touch the
store, the catalog or versions themselves. Heavy imports (torch, transformers, datatrove) belong inside
``run``, never at module top level.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from ops.fingerprint import stable_hash
from resources.codehash import CodeVersion, of_callables

if TYPE_CHECKING:
    from resources.store import StoredArtifact

# Artifact types and their on-disk layout (relative to the artifact directory). Stages agree on these.
ARTIFACT_TYPES: dict[str, str] = {
    "warc": "warc/*.warc.gz (WARC/1.1 response records) + fetch_log.parquet",
    "documents": "documents.parquet: id, url, host, text, language, language_score, source, source_record, parent_ids",
    "tasks": "train.parquet + eval.parquet: id, question, answer, solution, difficulty, source",
    "tokenizer": "a transformers tokenizer directory (tokenizer.json, tokenizer_config.json w/ chat template)",
    "tokens": "train/val token shards (see ops/tokens.py) + index parquet with document ids",
    "model": "a save_pretrained directory (safetensors, config, tokenizer w/ chat template) "
    "+ training_state/ + curve.parquet",
    "sft_data": "sft.parquet: id, prompt, response, answer, parent_ids",
    "rollouts": "rollouts.parquet: prompt id, completion, token counts, rewards, advantage, policy version",
    "pairs": "pairs.parquet: id, prompt, chosen, rejected, parent_ids",
    "eval": "records.parquet + metrics.json",
    "report": "report.md + report.json + *.png",
}

# Which artifact types a stage may feed a model with, for convenience in ref() declarations.
TEXT_DATA = ("documents",)
TRAIN_DATA = ("tasks", "sft_data", "rollouts")


class StageConfig(BaseModel):
    """Base of every kind's config: unknown fields are refused, ``from`` may be written for ``from_``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


def ref(
    *types: str,
    many: bool = False,
    optional: bool = False,
    description: str = "",
    default: Any = ...,
    alias: str | None = None,
) -> Any:
    """A config field naming upstream stage(s) whose artifact type is one of ``types``.

    ``many=True`` accepts a stage name or a list of names (normalised to a list by the compiler).
    """
    for t in types:
        if t not in ARTIFACT_TYPES:
            raise ValueError(f"unknown artifact type {t!r} in ref()")
    if optional and default is ...:
        default = [] if many else None
    extra = {"lmforge_ref": list(types), "lmforge_many": many}
    kw: dict[str, Any] = {"description": description, "json_schema_extra": extra}
    if alias:
        kw["alias"] = alias
    return Field(default, **kw)


def ref_fields(config_cls: type[BaseModel]) -> dict[str, tuple[list[str], bool, str]]:
    """``{field_name: (accepted types, many, spec key)}`` for every reference field of a config class."""
    out = {}
    for name, f in config_cls.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if "lmforge_ref" in extra:
            out[name] = (list(extra["lmforge_ref"]), bool(extra["lmforge_many"]), f.alias or name)
    return out


def empty_ref_problems(config: BaseModel, *fields: str) -> list[tuple[str, str]]:
    """``[(spec key, message)]`` for each list-of-stages field among ``fields`` (python names) that is empty, for
    the kind validators of lists a stage needs: with nothing to read it would do nothing (and a partitioned
    stage would have no partition at all)."""
    refs = ref_fields(type(config))
    return [
        (refs[f][2], f"is empty: name at least one stage producing {' or '.join(refs[f][0])}")
        for f in fields
        if not getattr(config, f)
    ]


def run_option(default: Any, *, description: str, **constraints: Any) -> Any:
    """A config field that changes how a stage runs but never what it produces (e.g. how often training
    checkpoints). It is left out of the version, so changing it neither recomputes a stored stage nor moves
    an interrupted run to a fresh work directory: the run resumes where it stopped."""
    return Field(
        default, description=description, json_schema_extra={"lmforge_run_option": True}, **constraints
    )


def run_option_fields(config_cls: type[BaseModel]) -> set[str]:
    return {
        name
        for name, f in config_cls.model_fields.items()
        if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("lmforge_run_option")
    }


def canonical_config(config: BaseModel) -> dict[str, Any]:
    """A stage config as hashed into its version: the JSON-mode dump without any reference field or
    :func:`run_option` field. A set reference enters the version as its inputs' versions instead; an unset
    optional one adds nothing, so adding an optional reference field to a kind does not re-version the
    stages that leave it unset."""
    cls = type(config)
    return config.model_dump(mode="json", exclude=set(ref_fields(cls)) | run_option_fields(cls))


# ---- metadata values: plain objects the factory turns into Dagster metadata and stores in metadata.json
@dataclass(frozen=True)
class Markdown:
    text: str


@dataclass(frozen=True)
class Image:
    """A PNG inside the artifact directory (relative path); shown inline in the Dagster UI."""

    path: str


@dataclass(frozen=True)
class Table:
    """Rows of plain values; shown as a Dagster table."""

    records: list[dict[str, Any]]


@dataclass(frozen=True)
class Json:
    value: Any


@dataclass(frozen=True)
class CheckSpec:
    name: str
    description: str
    blocking: bool = False


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class InputArtifact:
    """A stored upstream artifact handed to a stage (a handle: nothing is loaded)."""

    stage: str  # the upstream stage's name in this pipeline
    kind: str
    produces: str  # its artifact type
    version: str
    path: Path
    manifest: dict[str, Any]
    partition: str | None = None  # for partitioned upstream stages (e.g. evaluate, one per model)


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



@dataclass
class StageRun:
    pipeline: str
    stage: str
    kind: str
    version: str
    config: Any  # the kind's StageConfig instance
    out: Path  # write the artifact here
    work: Path  # persistent, resumable scratch for this version
    inputs: dict[str, list[InputArtifact]]
    home: Path  # $LMFORGE_HOME
    log: Callable[[str], None] = print
    partition: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)  # e.g. "site": a running local doc server
    upstream: dict[str, InputArtifact] = field(default_factory=dict)  # every ancestor, by stage name

    def input(self, name: str) -> InputArtifact:
        """The single artifact behind reference field ``name`` (error if absent or several)."""
        arts = self.inputs.get(name) or []
        if len(arts) != 1:
            raise ValueError(
                f"stage {self.stage!r}: field {name!r} expected exactly one input, got {len(arts)}"
            )
        return arts[0]


@dataclass
class StageResult:
    metrics: dict[str, Any] = field(default_factory=dict)  # numbers/strings: manifest + Dagster metadata
    metadata: dict[str, Any] = field(default_factory=dict)  # Markdown/Image/Table/Json or plain values
    checks: list[CheckOutcome] = field(default_factory=list)
    flops: float | None = None
    tokens: int | None = None


@dataclass(frozen=True)
class StageKind:
    name: str
    config: type[StageConfig]
    produces: str
    run: Callable[[StageRun], StageResult]
    description: str
    checks: tuple[CheckSpec, ...] = ()
    pool: str | None = None  # "gpu" for stages that train or generate with a model
    partition_field: str | None = None  # a ref field with one Dagster partition per referenced stage
    validate: Callable[[Any, dict[str, str]], list[tuple[str, str]]] | None = None
    """Extra validation before compute: ``(config, {ref stage: its kind name}[, {ref stage: its config}])``
    -> ``[(field, message)]``. A validator taking three parameters also receives the referenced configs; one
    taking four also receives every stage of the spec (``{name: object with .kind, .config, .deps}``), for
    checks that follow a lineage further up."""
    fingerprint: Callable[[Any], Any] | None = None
    """Identity of external inputs named by the config (user files); hashed into the version."""
    resources: tuple[str, ...] = ()  # names of lmforge resources the kind needs (e.g. "site")

    def code(self) -> CodeVersion:
        """The code ``run`` reaches (its own definitions, the project modules it imports) and its hash."""
        return of_callables(self.run, self.config)

    @property
    def code_version(self) -> str:
        return self.code().version


def stage_version(kind: StageKind, config: BaseModel, inputs: dict[str, list[str]], external: Any = None) -> str:
    """The version of a stage: its kind, the kind's code version, its canonical config, the versions of its
    inputs (``{ref field: [version, ...]}``) and the identity of external files it reads. A partitioned
    kind's partition field is left out here: each partition adds its own input in :func:`partition_version`.
    Raises :class:`ops.fingerprint.UnhashableValue` for a config value without a stable identity."""
    inputs = {f: list(v) for f, v in inputs.items() if v and f != kind.partition_field}
    return stable_hash(
        {
            "kind": kind.name,
            "code": kind.code_version,
            "config": canonical_config(config),
            "inputs": inputs,
            "external": external,
        }
    )


def partition_version(version: str, partition_input: list[str]) -> str:
    """The version of one partition of a partitioned stage: the stage's version and the version(s) of the
    one upstream stage this partition is computed for."""
    return stable_hash({"stage": version, "partition_input": list(partition_input)})


KINDS: dict[str, StageKind] = {}


def register(kind: StageKind) -> StageKind:
    if kind.name in KINDS and KINDS[kind.name] is not kind:
        raise ValueError(f"stage kind {kind.name!r} registered twice")
    if kind.produces not in ARTIFACT_TYPES:
        raise ValueError(f"stage kind {kind.name!r} produces unknown artifact type {kind.produces!r}")
    KINDS[kind.name] = kind
    return kind


def load_kinds() -> dict[str, StageKind]:
    """Import every module of the ``assets`` package so that each registers its kinds."""
    import importlib
    import pkgutil

    import assets

    global _LOADED
    if not _LOADED:
        for m in pkgutil.iter_modules(assets.__path__):
            if m.name not in {"registry", "factory", "testing", "metadata"}:
                importlib.import_module(f"assets.{m.name}")
        _LOADED = True
    return KINDS


_LOADED = False
