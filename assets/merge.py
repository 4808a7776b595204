"""Stage kind ``merge``: a linear or task-arithmetic merge of same-architecture checkpoints
(``ops.posttrain.merge``).

Key design choice: config -> one ``merge_models`` call -> a model artifact; with ``eval_tasks`` every input
and the merge are scored on the same held-out problems, so the table shows what the merge kept.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .posttrain import MODEL, PostTrainError, accuracy, check_template, eval_tasks, load_policy
from .registry import StageConfig, StageKind, StageResult, StageRun, Table, ref, register


class MergeConfig(StageConfig):
    models: list[str] = ref(*MODEL, many=True, description="same-architecture models to merge")
    base: str | None = ref(*MODEL, optional=True, description="task_arithmetic: the common base model")
    method: Literal["linear", "task_arithmetic"] = Field(
        "linear", description="weighted average, or base + weighted sum of task vectors"
    )
    weights: list[float] | None = Field(None, description="one weight per model (default: equal)")
    eval_tasks: str | None = ref(
        "tasks", optional=True, description="tasks to score the inputs and the merge on"
    )
    eval_problems: int = Field(100, ge=0, description="held-out problems scored per model")


def run(run: StageRun) -> StageResult:
    from ops.model import save_model
    from ops.posttrain.merge import merge_models

    c: MergeConfig = run.config
    check_template(run, "models")
    arts = run.inputs.get("models", [])
    if len(arts) < 2:
        raise PostTrainError(f"stage {run.stage!r}, field 'models': merging needs at least two models")
    w = c.weights or [1.0 / len(arts)] * len(arts)
    if len(w) != len(arts):
        raise PostTrainError(f"stage {run.stage!r}, field 'weights': {len(w)} weights for {len(arts)} models")
    loaded = [load_policy(run, "models", a) for a in arts]
    base = load_policy(run, "base")[0] if run.inputs.get("base") else None
    if c.method == "task_arithmetic" and base is None:
        raise PostTrainError(f"stage {run.stage!r}, field 'base': task_arithmetic needs a base model")
    try:
        merged = merge_models([m for m, _ in loaded], [a.stage for a in arts], w, c.method, base)
    except ValueError as e:
        raise PostTrainError(f"stage {run.stage!r}, field 'models': {e}") from None
    tok = loaded[0][1]
    save_model(merged, tok, run.out)
    metrics: dict[str, Any] = {"models": len(arts)}
    ev = eval_tasks(run, ("eval_tasks",), c.eval_problems)
    rows = [{"model": a.stage, **accuracy(m, tok, ev, 0, 96)} for (m, _), a in zip(loaded, arts)]
    acc = accuracy(merged, tok, ev, 0, 96)
    rows.append({"model": "merged", **acc})
    metrics.update({f"merged_{k}": v for k, v in acc.items()})
    return StageResult(metrics=metrics, metadata={"accuracy": Table(rows)} if ev else {})


MERGE = register(
    StageKind(
        name="merge",
        config=MergeConfig,
        produces="model",
        run=run,
        description="Linear or task-arithmetic merge of same-architecture checkpoints (Kimi's long-to-short)",
    )
)
