"""Stage kind ``report``: the report card of a pipeline (nanochat-style ``report.md``), built from the stored
artifacts of every ancestor stage and every partition of the evaluate stage(s).

Key design choice: the report computes nothing new about models; it reads eval records and manifests, so it
is cheap, versioned like any stage (a new eval partition or a changed ancestor gives a new report) and every
number in it can be traced to an artifact version. Changes between models are tested paired, item by item,
and marked beyond noise only when their 95% interval excludes zero (``ops/eval/report.py``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .registry import (
    CheckOutcome,
    CheckSpec,
    Image,
    InputArtifact,
    Json,
    Markdown,
    StageConfig,
    StageKind,
    StageResult,
    StageRun,
    Table,
    empty_ref_problems,
    ref,
    register,
)


class ControlPair(BaseModel):
    """One real-reward RL model and its control (same parent, settings and seeds; random or format-only
    rewards); a model in a seed group stands for its whole group."""

    model_config = ConfigDict(extra="forbid")
    treatment: str = Field(description="The RL model stage trained with the real rewards.")
    control: str = Field(description="The same RL with a control reward (e.g. rewards: [random]).")


class LongShortPair(BaseModel):
    """A long-thinking model and a short-thinking model derived from it (Kimi k1.5's long-to-short): the
    report plots both at (mean response tokens, accuracy) and tests the change paired over items."""

    model_config = ConfigDict(extra="forbid")
    long: str = Field(description="The long-thinking model stage (e.g. rl2).")
    short: str = Field(description="The short-thinking model stage made from it (e.g. l2s_sft).")


class ReportConfig(StageConfig):
    """Build the report card from evaluate stage(s) and the lineage above them."""

    from_: list[str] = ref(
        "eval",
        many=True,
        alias="from",
        description="Evaluate stage(s) whose partitions (one per model) are reported.",
    )
    title: str | None = Field(None, description="Report title (default: '<pipeline> report card').")
    hourly_price: float = Field(
        2.0,
        ge=0,
        description="Price of one machine-hour for the cost ledger (e.g. a cloud GPU's hourly rate).",
    )
    currency: str = Field("USD", description="Currency label of hourly_price.")
    stages: list[str] = Field(
        default_factory=list,
        description="Restrict the ledger and lineage sections to "
        "these stage names (default: every ancestor).",
    )
    controls: list[ControlPair] = Field(
        default_factory=list,
        description="RL models to compare with their controls: [{treatment: rl1, control: rl1_random}]; "
        "default: pairs found in the lineage (same kind, inputs and settings apart from rewards and seed, "
        "one rewarded at random or for the format alone).",
    )
    long_to_short: list[LongShortPair] = Field(
        default_factory=list,
        description="Long- and short-thinking models to compare: [{long: rl2, short: l2s_sft}]; plotted as "
        "accuracy vs mean response tokens (long_to_short.png) with the paired token ratio and accuracy change.",
    )


def validate(cfg: ReportConfig, kinds: dict[str, str], configs: dict[str, Any] | None = None) -> list:
    """At least one ``from`` stage; every model named in ``controls`` and ``long_to_short`` must be evaluated
    by one of them, and each pair must name two different models."""
    problems = empty_ref_problems(cfg, "from_")
    if problems:  # with no evaluate stage, every named model would also be reported as not evaluated
        return problems
    evaluated = {m for c in (configs or {}).values() for m in (getattr(c, "models", None) or [])}
    for field, pairs, (a, b) in (
        ("long_to_short", cfg.long_to_short, ("long", "short")),
        ("controls", cfg.controls, ("treatment", "control")),
    ):
        for i, pair in enumerate(pairs):
            if getattr(pair, a) == getattr(pair, b):
                problems.append((f"{field}.{i}", f"{a} and {b} are both {getattr(pair, a)!r}"))
            for role in (a, b):
                name = getattr(pair, role)
                if configs is not None and name not in evaluated:
                    problems.append(
                        (f"{field}.{i}.{role}", f"{name!r} is not a model evaluated by {cfg.from_}: {sorted(evaluated)}")
                    )
    return problems


def _ancestors(run: StageRun) -> dict[str, InputArtifact]:
    """Every ancestor artifact (``run.upstream``, which the factory and ``run_kind`` fill with the whole
    lineage) and the inputs, keyed by stage and partition: every partition of a partitioned stage is its
    own ledger row."""
    out: dict[str, InputArtifact] = {}
    for a in [*run.upstream.values(), *(x for arts in run.inputs.values() for x in arts)]:
        out.setdefault(f"{a.stage}/{a.partition}" if a.partition else a.stage, a)
    return out


def run(r: StageRun) -> StageResult:
    from ops.eval import report as R
    from resources.manifest import git_state

    cfg: ReportConfig = r.config
    evals_in = r.inputs.get("from_") or []
    if not evals_in:
        raise ValueError(f"stage {r.stage!r}, field 'from': no evaluate partitions were given")
    evals = []
    for a in evals_in:
        if not (a.path / "metrics.json").is_file():
            raise ValueError(
                f"stage {r.stage!r}, field 'from' ({a.stage!r}): {a.path}/metrics.json is missing; "
                "is it an evaluate artifact?"
            )
        evals.append(R.load_eval(a.stage, a.path, a.version, a.manifest))
    anc = _ancestors(r)
    stages = {}
    for name, a in anc.items():
        base = name.split("/")[0]
        if cfg.stages and base not in cfg.stages and a.produces != "model":
            continue
        stages[name] = R.StageInfo(name, a.kind, a.produces, a.version, a.manifest)
    # model stages are also keyed by their plain name for lineage lookups
    title = cfg.title or f"{r.pipeline} report card"
    rep = R.build(
        title=title,
        evals=evals,
        stages=stages,
        out=r.out,
        hourly_price=cfg.hourly_price,
        currency=cfg.currency,
        env=R.environment(git=git_state()),
        controls=[(c.treatment, c.control) for c in cfg.controls],
        long_to_short=[(p.long, p.short) for p in cfg.long_to_short],
    )
    md = (r.out / "report.md").read_text()
    beyond = [c for c in rep["comparisons"] if c["beyond_noise"]]
    metadata: dict[str, Any] = {
        "report": Markdown(md),
        "report_json": Json({k: rep[k] for k in ("models", "comparisons", "controls", "long_to_short")}),
    }
    for png in rep["images"]:
        metadata[png.removesuffix(".png")] = Image(png)
    metadata["ledger"] = Table(rep["ledger"])
    missing = [
        m
        for m, d in rep["models"].items()
        if (d["metrics"].get("greedy_accuracy") or {}).get("low") is None
        and (d["metrics"].get("bits_per_byte") or {}).get("low") is None
    ]
    total_wall = sum(x["wall_time_s"] for x in rep["ledger"])
    extra = (
        {"long_to_short_holds": sum(bool(p.get("holds")) for p in rep["long_to_short"])}
        if rep["long_to_short"]
        else {}
    )
    return StageResult(
        metrics={
            "models": len(rep["models"]),
            "comparisons": len(rep["comparisons"]),
            "controls_exceeded": sum(c["exceeds"] for c in rep["controls"]),
            "changes_beyond_noise": len(beyond),
            "total_wall_time_s": round(total_wall, 3),
            "total_cost": round(sum(x["cost"] for x in rep["ledger"]), 6),
            "contaminated_items": sum(a.get("n_flagged", 0) for a in rep["audit"].values()),
            **extra,
        },
        metadata=metadata,
        checks=[
            CheckOutcome(
                "every_model_has_uncertainty",
                not missing,
                "every reported model metric carries a 95% interval",
                {"missing": missing},
            )
        ],
    )


REPORT = register(
    StageKind(
        name="report",
        config=ReportConfig,
        produces="report",
        run=run,
        validate=validate,
        description="Report card: per-model metrics with 95% intervals and paired beyond-noise tests, budget "
        "curves, cost ledger, environment and lineage (report.md, report.json, PNGs).",
        checks=(
            CheckSpec("every_model_has_uncertainty", "every reported model metric carries a 95% interval"),
        ),
    )
)
