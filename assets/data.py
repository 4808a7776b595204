"""Shared pieces of the data stage kinds (``crawl``, ``load_documents``, ``extract``, ``filter``,
``dedupe``, ``decontaminate``: one module each); it registers no kind itself.

Key design choice: each data kind is config + a thin ``run`` that calls ``ops/data`` (imported inside
``run``, so loading Dagster definitions never imports datatrove) and turns its figures into metrics,
metadata and checks. Web pages come in as a ``warc`` artifact from ``crawl``; ready-made text comes in as
``documents`` through ``load_documents``; everything downstream reads and writes the one documents schema of
``ops/data/schema.py``. The kinds that run datatrove pipelines (extract, filter, dedupe) share one
``executor`` setting (:class:`DataExecutor`): this machine, a Ray cluster or Slurm. It is a run option, out
of the version: the same tasks write the same shards whichever executor runs them, and the stages merge
shards in a canonical order, so moving a stage to a cluster reuses what is stored. User files named by a
config enter the version through :func:`file_identity`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .registry import (
    Markdown,
    run_option,
)


def file_identity(paths: list[Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        h = hashlib.sha256()
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        st = p.stat()
        out.append({"path": str(p), "size": st.st_size, "mtime": int(st.st_mtime), "sha256": h.hexdigest()})
    return out


def expand_paths(patterns: list[str]) -> list[Path]:
    from ops.data.warc import expand_paths  # light: datatrove is imported by ops.data.warc

    return expand_paths(patterns)


def glob_paths(patterns: list[str]) -> list[Path]:
    """Like ``ops.data.warc.expand_paths`` without importing datatrove (used by validate/fingerprint)."""
    import glob

    out: list[Path] = []
    for pat in patterns:
        hits = sorted(glob.glob(str(Path(pat).expanduser()), recursive=True))
        if not hits:
            raise FileNotFoundError(f"no file matches {pat!r}")
        out.extend(Path(h).resolve() for h in hits if Path(h).is_file())
    return sorted(set(out))


def funnel_markdown(rows: list[dict[str, Any]], cols: list[str]) -> Markdown:
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = "".join("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |\n" for r in rows)
    return Markdown(head + body)


# ------------------------------------------------------------------------------------------- executor
class DataExecutor(BaseModel):
    """Where a data stage's datatrove tasks run; the same shape for every kind that has ``executor``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["local", "ray", "slurm"] = Field(
        "local",
        description="local: this machine (tasks in-process or forked workers); ray: a running Ray cluster "
        "(datatrove's ranks on one long-lived actor per worker); slurm: sbatch array jobs (datatrove's "
        "SlurmPipelineExecutor)",
    )
    address: str = Field(
        "", description="ray: host:port of the cluster's head (the port given to `ray start --head --port`)"
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, description="ray: how long to wait for the address to answer"
    )
    cpus_per_task: int = Field(1, ge=1, description="ray/slurm: CPUs reserved per datatrove task")
    mem_per_cpu_gb: float = Field(2.0, gt=0, description="ray/slurm: memory reserved per CPU, in GB")
    partition: str = Field("", description="slurm: partition to submit to")
    time: str = Field("", description="slurm: time limit per task (sbatch --time, e.g. 01:00:00)")
    qos: str = Field("", description="slurm: quality of service (sbatch --qos); empty: the cluster's default")
    job_name: str = Field("lmforge", description="slurm: job name prefix")
    env_command: str = Field(
        "",
        description="slurm: shell line that sets up Python on the nodes; empty: activate this "
        "interpreter's environment (a filesystem the nodes share)",
    )
    sbatch_args: dict[str, str] = Field(
        default_factory=dict, description="slurm: extra sbatch options, e.g. {account: my-account}"
    )
    poll_s: float = Field(10.0, gt=0, description="slurm: seconds between checks for finished tasks")

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> DataExecutor:
        set_ = self.model_fields_set
        if self.kind == "ray" and not self.address:
            raise ValueError("kind: ray needs address (host:port of the Ray head)")
        if self.kind != "ray" and "address" in set_:
            raise ValueError(f"address is only used with kind: ray (kind is {self.kind})")
        if self.kind == "slurm":
            missing = [f for f in ("partition", "time") if not getattr(self, f)]
            if missing:
                raise ValueError(f"kind: slurm needs {' and '.join(missing)}")
        else:
            extra = sorted(
                set_ & {"partition", "time", "qos", "job_name", "env_command", "sbatch_args", "poll_s"}
            )
            if extra:
                raise ValueError(f"{', '.join(extra)} only apply to kind: slurm (kind is {self.kind})")
        return self

    def settings(self, stage: str) -> Any:
        """The plain settings ``ops.data`` runs with; errors name ``stage`` and this field."""
        from ops.data.pipeline import ExecutorSettings

        return ExecutorSettings(
            **self.model_dump(exclude={"sbatch_args"}),
            sbatch_args=dict(self.sbatch_args),
            setting=f"stage {stage!r}, field 'executor'",
        )


def executor_field() -> Any:
    return run_option(
        DataExecutor(),
        description="where datatrove runs the tasks: {kind: local} (default), {kind: ray, address: "
        "host:port} or {kind: slurm, partition: ..., time: ...}; not part of the version (same output)",
    )
