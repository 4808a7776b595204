"""Stage kind ``dpo``: Direct Preference Optimization and its variants against a frozen reference
(``ops.posttrain.dpo``, ``ops.posttrain.onpolicy``).

``loss`` picks the objective: ``dpo``, ``ipo`` (Azar et al. 2023) or ``rpo`` (DPO + ``alpha`` x NLL of the
chosen response, Iterative Reasoning Preference Optimization, Pang et al. 2024). Offline (``iterations: 0``),
pairs come from the same sources as ``reward_model`` (pairs artifacts, samples paired correct-vs-incorrect, a
user Parquet file); on-policy (``iterations: N``), each iteration samples the current policy on ``tasks``,
pairs correct against incorrect completions and trains on them, the reference being the previous iteration's
model (``reference_update: previous``, the paper's choice) or the starting reference (``initial``).

Key design choice: config -> one ``train_dpo`` or ``train_iterative_dpo`` call -> a model artifact; the
held-out chosen-minus-rejected margin is measured before and after training. Pairs whose chosen and rejected
responses are identical carry no preference: they are counted per source, dropped up to ``max_identical``
(a share, default 0) and refused above it, before any model is loaded.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ops.train.optim import OptimConfig, optim_field

from .posttrain import (
    MODEL,
    PostTrainError,
    check_template,
    ckpt_every,
    keep_last,
    keep_training_state,
    load_policy,
    pair_sources,
    pairs_path_fingerprint,
    pairs_path_problems,
    params,
    reference_policy,
    single_format,
    train_tasks,
    write_curve,
)
from .registry import CheckOutcome, CheckSpec, StageConfig, StageKind, StageResult, StageRun, ref, register


class DPOConfig(StageConfig):
    model: str = ref(
        *MODEL, description="policy to optimise (also the frozen reference unless `reference` is set)"
    )
    pairs: list[str] = ref(
        "pairs",
        "rollouts",
        "model",
        "sft_data",
        many=True,
        optional=True,
        description="preference pairs or samples paired correct-vs-incorrect (offline, iterations: 0)",
    )
    tasks: list[str] = ref(
        "tasks",
        many=True,
        optional=True,
        description="tasks whose training split the policy is sampled on (on-policy, iterations >= 1)",
    )
    reference: str | None = ref(
        *MODEL,
        optional=True,
        description="frozen reference policy (of the first iteration); default: `model`",
    )
    path: str | None = Field(None, description="optional user Parquet of pairs: prompt, chosen, rejected")
    loss: Literal["dpo", "ipo", "rpo"] = Field(
        "dpo",
        description="objective: dpo, ipo (squared loss toward 1/(2 beta)) or rpo (dpo + alpha x chosen NLL)",
    )
    beta: float = Field(0.1, gt=0, description="DPO temperature beta (ipo: regularisation tau)")
    alpha: float = Field(
        1.0, ge=0, description="rpo: weight of the chosen response's NLL, normalised by its token length"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="conservative-DPO label smoothing (dpo)")
    max_identical: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of a source's pairs allowed to have identical chosen and rejected responses "
        "(dropped and counted); above it the stage is refused",
    )
    iterations: int = Field(0, ge=0, description="on-policy iterations on `tasks` (0: offline pairs)")
    samples: int = Field(8, ge=2, description="on-policy: completions sampled per prompt and iteration")
    prompts_per_iteration: int = Field(256, ge=1, description="on-policy: prompts sampled per iteration")
    max_new_tokens: int = Field(64, ge=1, description="on-policy: completion budget in tokens")
    temperature: float = Field(1.0, gt=0, description="on-policy: sampling temperature")
    reference_update: Literal["previous", "initial"] = Field(
        "previous",
        description="on-policy: reference of each iteration, the previous iteration's model (Iterative RPO) "
        "or the starting reference",
    )
    held_out: float = Field(0.2, gt=0, lt=1, description="share of prompts held out for margins")
    max_pairs_per_prompt: int = Field(4, ge=1, description="pairs built from each prompt's samples")
    steps: int = Field(100, ge=1, description="optimizer updates (per iteration when on-policy)")
    lr: float = Field(5e-5, gt=0, description="peak learning rate")
    warmup_steps: int = Field(
        10, ge=0, description="updates of linear learning-rate warm-up (per iteration when on-policy)"
    )
    optim: OptimConfig = optim_field()
    batch_size: int = Field(16, ge=1, description="pairs per update")
    seed: int = Field(0, description="split and order seed")
    eval_problems: int = Field(100, ge=0, description="held-out task problems for greedy accuracy")
    ckpt_every: int = ckpt_every(100)
    keep_last: int = keep_last()


def validate(cfg, refs):
    out = pairs_path_problems(cfg)
    if cfg.iterations and (cfg.pairs or cfg.path):
        out.append(
            (
                "iterations",
                "on-policy DPO trains on pairs sampled from `tasks`; leave `pairs` and `path` unset",
            )
        )
    if cfg.iterations and not cfg.tasks:
        out.append(("tasks", f"iterations: {cfg.iterations} samples the policy on tasks; name a tasks stage"))
    if not cfg.iterations and cfg.tasks:
        out.append(
            ("tasks", "tasks are sampled only on-policy (iterations >= 1); offline pairs come from `pairs`")
        )
    if not cfg.iterations and not (cfg.pairs or cfg.path):
        out.append(
            (
                "pairs",
                "no preference pairs: name pairs or sample stages, a pairs file `path`, or set iterations",
            )
        )
    return out


def offline_pairs(run: StageRun) -> tuple[list, int]:
    """The pairs of every source with the identical chosen/rejected ones dropped, and how many were dropped;
    a source with more than ``max_identical`` of them is refused, naming it, before any model is loaded."""
    from ops.posttrain.pairs import identical_pairs

    c: DPOConfig = run.config
    kept, dropped = [], 0
    for field, name, pairs in pair_sources(run, "pairs", c.max_pairs_per_prompt, c.seed, c.path):
        same = identical_pairs(pairs)
        if pairs and len(same) / len(pairs) > c.max_identical:
            raise PostTrainError(
                f"stage {run.stage!r}, field {field!r}: {name}: {len(same)} of {len(pairs)} pairs have identical "
                f"chosen and rejected responses (first: id {same[0].id!r}); such a pair carries no preference. "
                f"Fix the source, or set max_identical >= {len(same) / len(pairs):.3f} to drop them"
            )
        ids = {id(p) for p in same}
        kept += [p for p in pairs if id(p) not in ids]
        dropped += len(same)
    return kept, dropped


def run(run: StageRun) -> StageResult:
    from ops.model import save_model

    c: DPOConfig = run.config
    check_template(run, "model")
    if c.iterations:
        tasks = train_tasks(run, "tasks")
        single_format(run, "tasks", tasks)  # refuses task sets of different formats before compute
        policy, tok, metrics, curve = _on_policy(run, tasks)
    else:
        policy, tok, metrics, curve = _offline(run)
    save_model(policy, tok, run.out)
    keep_training_state(run)
    md = write_curve(run.out, curve, ["loss", "margin", "accuracy"])
    before, after = metrics["held_out_margin_before"], metrics["held_out_margin_after"]
    return StageResult(
        metrics=metrics,
        metadata=md,
        checks=[
            CheckOutcome(
                "margin_rises",
                after > before,
                f"held-out chosen-minus-rejected margin {before:.3f} -> {after:.3f}",
            )
        ],
    )


def _offline(run: StageRun):
    """One training run on the pairs of ``pairs``/``path``, split by prompt for held-out margins."""
    from ops.posttrain.dpo import DPOParams, pair_margins, train_dpo
    from ops.posttrain.rm import split_pairs

    c: DPOConfig = run.config
    pairs, dropped = offline_pairs(run)
    train_p, held = split_pairs(pairs, c.held_out, c.seed)
    if not train_p:
        raise PostTrainError(f"stage {run.stage!r}, field 'pairs': no training pairs")
    policy, tok = load_policy(run, "model")
    reference = reference_policy(run)
    before = pair_margins(policy, reference, tok, held, c.beta)
    p = params(DPOParams, c)
    fp = {"stage_version": run.version}
    info = train_dpo(policy, reference, tok, train_p, p, work_dir=run.work, fingerprint=fp, log=run.log)
    after = pair_margins(policy, reference, tok, held, c.beta)
    metrics = {
        "train_pairs": info["pairs"],
        "held_out_pairs": after["pairs"],
        "identical_pairs_dropped": dropped,
        "held_out_margin_before": before["margin"],
        "held_out_margin_after": after["margin"],
        "held_out_accuracy_after": after["accuracy"],
        "final_loss": info["losses"][-1],
    }
    return policy, tok, metrics, info["curve"]


def _on_policy(run: StageRun, tasks: list):
    """``iterations`` rounds of sampling the policy on ``tasks``, pairing and training (Iterative RPO)."""
    from ops.posttrain.dpo import DPOParams
    from ops.posttrain.onpolicy import OnPolicyParams, train_iterative_dpo

    c: DPOConfig = run.config
    policy, tok = load_policy(run, "model")
    reference = reference_policy(run)
    fp = {"stage_version": run.version}
    info = train_iterative_dpo(
        policy,
        reference,
        tok,
        tasks,
        params(DPOParams, c),
        params(OnPolicyParams, c),
        work_dir=run.work,
        fingerprint=fp,
        log=run.log,
    )
    its = info["iterations"]
    metrics = {
        "iterations": len(its),
        "train_pairs": sum(r["train_pairs"] for r in its),
        "held_out_pairs": its[-1]["held_out_pairs"],
        "held_out_margin_before": its[-1]["margin_before"],
        "held_out_margin_after": its[-1]["margin_after"],
        "held_out_accuracy_after": its[-1]["accuracy_after"],
        "final_loss": info["losses"][-1],
        **{f"sample_accuracy_{r['iteration']}": r["sample_accuracy"] for r in its},
        **{f"pairs_{r['iteration']}": r["pairs"] for r in its},
    }
    return policy, tok, metrics, info["curve"]


DPO = register(
    StageKind(
        name="dpo",
        config=DPOConfig,
        produces="model",
        run=run,
        pool="gpu",
        description="Direct Preference Optimization (dpo, ipo, rpo) on offline or on-policy pairs",
        checks=(CheckSpec("margin_rises", "held-out chosen-minus-rejected margin rises"),),
        validate=validate,
        fingerprint=pairs_path_fingerprint,
    )
)
