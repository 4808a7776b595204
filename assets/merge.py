"""Stage kind ``merge``: a linear or task-arithmetic merge of same-architecture checkpoints
(``ops.posttrain.merge``).

Key design choice: config -> one ``merge_models`` call -> a model artifact; with ``eval_tasks`` every input
and the merge are scored on the same held-out problems, so the table shows what the merge kept. Averaged
weights mean something only over one vocabulary, so models of different tokenizers are refused twice before
any weight is read: when the spec is compiled (their lineages lead to different tokenizer stages or imported
checkpoints, :func:`tokenizer_sources`) and when the stage runs (their stored tokenizers' vocabularies
differ), each naming the stage, the field and both models.
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


def source_stages(stage: str, stages: dict[str, Any]) -> list[str]:
    """The stages ``stage``'s vocabulary comes from: each ``tokenizer`` stage and each model stage with no
    model or tokenizer input (an imported checkpoint) reached upwards through model and tokenizer inputs only
    (training data does not carry a vocabulary). ``stages``: ``{name: object with .kind, .config and .deps}``
    of the whole spec."""
    names: list[str] = []
    seen: set[str] = set()
    stack = [stage]
    while stack:
        s = stack.pop()
        if s in seen or s not in stages:
            continue
        seen.add(s)
        st = stages[s]
        up = (
            []
            if st.kind.produces == "tokenizer"
            else [d for d in st.deps if d in stages and stages[d].kind.produces in ("model", "tokenizer")]
        )
        if not up:
            names.append(s)
        stack += up
    return sorted(names)


def tokenizer_sources(stage: str, stages: dict[str, Any]) -> set[str]:
    """Identities of :func:`source_stages`: two sources of the same kind and config are one (two imports of
    the same checkpoint)."""
    import json

    return {
        stages[s].kind.name
        + json.dumps(stages[s].config.model_dump(mode="json", by_alias=True), sort_keys=True, default=str)
        for s in source_stages(stage, stages)
    }


def config_problems(cfg: MergeConfig) -> list[tuple[str, str]]:
    """What the config alone says is no merge: fewer than two models, a weight count that is not one per
    model, linear weights with no positive sum, a base model missing for task arithmetic or unused by a
    linear merge."""
    n = len(cfg.models)
    if n < 2:
        return [("models", f"merging needs at least two models, got {n}: {list(cfg.models)}")]
    errs = []
    if cfg.weights is not None and len(cfg.weights) != n:
        errs.append(("weights", f"{len(cfg.weights)} weights for {n} models; give one weight per model"))
    elif cfg.weights is not None and cfg.method == "linear" and sum(cfg.weights) <= 0:
        errs.append(("weights", f"linear merge weights must sum to a positive number, got {cfg.weights}"))
    if cfg.method == "task_arithmetic" and not cfg.base:
        errs.append(("base", "method task_arithmetic needs a base model (the common starting point)"))
    if cfg.method == "linear" and cfg.base:
        errs.append(("base", "method linear uses no base model; set method: task_arithmetic or remove it"))
    return errs


def validate(cfg: MergeConfig, kinds: dict[str, str], configs: Any = None, stages: Any = None) -> list:
    """Refuse, before compute, a config that is no merge (:func:`config_problems`) and merging models whose
    lineages lead to disjoint tokenizer sources."""
    errs = config_problems(cfg)
    if errs or not stages:
        return errs
    named = [("models", m) for m in cfg.models] + ([("base", cfg.base)] if cfg.base else [])
    first = named[0][1]
    src0 = tokenizer_sources(first, stages)
    for field, m in named[1:]:
        src = tokenizer_sources(m, stages)
        if src0 and src and not (src0 & src):
            return [
                (
                    field,
                    f"{m!r} and {first!r} use different tokenizers ({m!r} from {source_stages(m, stages)}, "
                    f"{first!r} from {source_stages(first, stages)}); a weight merge needs one vocabulary",
                )
            ]
    return []


def check_tokenizers(run: StageRun) -> None:
    """Refuse models whose stored tokenizers differ in vocabulary, before any weights are loaded."""
    from ops.tokenizer import load_tokenizer

    arts = [("models", a) for a in run.inputs.get("models", [])] + [
        ("base", a) for a in run.inputs.get("base", [])
    ]
    if not arts:
        return
    vocab0 = load_tokenizer(arts[0][1].path).get_vocab()
    for field, a in arts[1:]:
        if load_tokenizer(a.path).get_vocab() != vocab0:
            raise PostTrainError(
                f"stage {run.stage!r}, field {field!r}: {a.stage!r} ({a.path}) uses a different tokenizer "
                f"than {arts[0][1].stage!r} ({arts[0][1].path}); a weight merge needs one vocabulary"
            )


def run(run: StageRun) -> StageResult:
    from ops.model import save_model
    from ops.posttrain.merge import merge_models

    c: MergeConfig = run.config
    check_template(run, "models")
    arts = run.inputs.get("models", [])
    for field, msg in config_problems(c):
        raise PostTrainError(f"stage {run.stage!r}, field {field!r}: {msg}")
    w = c.weights or [1.0 / len(arts)] * len(arts)
    check_tokenizers(run)
    loaded = [load_policy(run, "models", a) for a in arts]
    base = load_policy(run, "base")[0] if run.inputs.get("base") else None
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
        validate=validate,
        description="Linear or task-arithmetic merge of same-architecture checkpoints (Kimi's long-to-short)",
    )
)
