"""Stage kind ``grpo``: Group Relative Policy Optimization with rule rewards (``ops.rl.grpo``).

Key design choice: config -> one ``train_grpo`` call -> a model artifact that also keeps its rollouts
(``rollouts.parquet``), so a later ``reward_model`` or ``rejection_sample`` stage can use them as samples.
Reward names are checked when the spec is compiled; held-out problems are scored before and after.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ops.train.optim import OptimConfig, RLOptimConfig, optim_field

from .posttrain import (
    MODEL,
    AnswerFormatName,
    PromptTemplate,
    accuracy,
    answer_format_field,
    check_template,
    ckpt_every,
    eval_tasks,
    keep_last,
    keep_training_state,
    load_policy,
    params,
    prompt_template_field,
    reference_policy,
    single_format,
    train_tasks,
    validate_rewards,
    write_curve,
)
from .registry import (
    CheckOutcome,
    CheckSpec,
    Json,
    StageConfig,
    StageKind,
    StageResult,
    StageRun,
    Table,
    empty_ref_problems,
    ref,
    register,
)


class GRPOConfig(StageConfig):
    model: str = ref(*MODEL, description="starting policy (usually a cold-start SFT model)")
    prompts: list[str] = ref(
        "tasks", many=True, description="tasks whose training split provides the prompts"
    )
    reference: str | None = ref(
        *MODEL, optional=True, description="frozen KL reference; default: the starting model"
    )
    rewards: list[Any] = Field(
        ["accuracy", "format"],
        description="rule rewards: names or {name: {weight, ...}} "
        "(accuracy, format, language, length, or any registered reward)",
    )
    steps: int = Field(30, ge=1, description="GRPO steps (one rollout batch each)")
    prompts_per_step: int = Field(32, ge=1, description="distinct prompts per step")
    group_size: int = Field(8, ge=2, description="samples per prompt (the group)")
    max_new_tokens: int = Field(64, ge=1, description="completion budget in tokens")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (also used for log-probs)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    lr: float = Field(
        3e-5, gt=0, description="learning rate (keep <= 5e-5: larger first steps blow up the KL)"
    )
    warmup_steps: int = Field(5, ge=0, description="linear warm-up steps")
    optim: OptimConfig = optim_field(RLOptimConfig)
    beta: float = Field(0.04, ge=0, description="k3 KL coefficient (0: no reference forward)")
    clip_eps: float = Field(0.2, gt=0, description="ratio clip epsilon")
    clip_eps_high: float | None = Field(
        None,
        gt=0,
        description="upper ratio clip epsilon (DAPO clip-higher, >= clip_eps; acts only with updates_per_batch > 1)"
        "; default: clip_eps",
    )
    dynamic_sampling: bool = Field(
        False,
        description="DAPO dynamic sampling: replace groups whose rewards are all equal by groups of further "
        "prompts, up to prompts_per_step groups with signal per update",
    )
    max_refill: int = Field(
        2, ge=1, description="with dynamic_sampling: extra sampling rounds per step (each <= prompts_per_step prompts)"
    )
    norm: Literal["token", "sequence", "unbiased"] = Field(
        "token",
        description="loss normalisation: token-level, per-sequence mean (original), or unbiased Dr. GRPO",
    )
    scale_rewards: bool = Field(True, description="divide advantages by the group std (False: Dr. GRPO)")
    updates_per_batch: int = Field(
        1, ge=1, description="optimizer passes per rollout batch (1 = fully on-policy)"
    )
    answer_format: AnswerFormatName = answer_format_field()
    prompt_template: PromptTemplate = prompt_template_field()
    seed: int = Field(0, description="sampling and data-order seed")
    eval_problems: int = Field(200, ge=0, description="held-out problems scored before and after")
    eval_samples: int = Field(
        4, ge=0, description="sampled answers per held-out problem (sampled accuracy, pass@k)"
    )
    ckpt_every: int = ckpt_every(10)
    keep_last: int = keep_last()


def validate(cfg: GRPOConfig, refs) -> list[tuple[str, str]]:
    errs = empty_ref_problems(cfg, "prompts") + validate_rewards(cfg, refs)
    if cfg.clip_eps_high is not None:
        if cfg.clip_eps_high < cfg.clip_eps:
            errs.append(
                (
                    "clip_eps_high",
                    f"{cfg.clip_eps_high} is below clip_eps {cfg.clip_eps}: clip-higher widens the upper bound; "
                    "use a value >= clip_eps",
                )
            )
        elif cfg.updates_per_batch == 1:
            errs.append(
                (
                    "clip_eps_high",
                    "has no effect with updates_per_batch 1 (fully on-policy: the ratio is exactly 1); "
                    "set updates_per_batch >= 2 or remove it",
                )
            )
    if "max_refill" in cfg.model_fields_set and not cfg.dynamic_sampling:
        errs.append(("max_refill", "applies to dynamic sampling; set `dynamic_sampling: true` or remove it"))
    return errs


def run(run: StageRun) -> StageResult:
    import torch

    from ops.model import save_model
    from ops.rewards import parse_specs, reward_versions, with_answer_format
    from ops.rl.common import write_rollouts
    from ops.rl.grpo import GRPOParams, train_grpo
    from ops.rl.summary import all_finite, grpo_summary, training_steps

    c: GRPOConfig = run.config
    check_template(run, "model")
    tasks = train_tasks(run, "prompts")
    specs = with_answer_format(parse_specs(list(c.rewards)), single_format(run, "prompts", tasks))
    ev = eval_tasks(run, ("prompts",), c.eval_problems)
    policy, tok = load_policy(run, "model")
    reference = reference_policy(run)
    p = params(GRPOParams, c)
    torch.manual_seed(c.seed)

    def eval_fn(m, step):
        return accuracy(m, tok, ev, c.eval_samples, c.max_new_tokens, seed=10_000 + c.seed)

    st = train_grpo(
        policy,
        reference,
        tok,
        tasks,
        specs,
        p,
        eval_fn=eval_fn if ev else None,
        log=run.log,
        stage=run.stage,
        work_dir=run.work,
        fingerprint={"stage_version": run.version},
    )
    save_model(policy, tok, run.out)
    keep_training_state(run)
    write_rollouts(st.rollouts, [s.name for s in specs], run.out / "rollouts.parquet")
    h = training_steps(st.history)
    metrics = grpo_summary(st.history, len(st.rollouts))
    md = write_curve(run.out, h, ["reward", "reward_accuracy", "kl", "completion_tokens"])
    md["reward_versions"] = Json(reward_versions(specs))
    md["history"] = Table(
        [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in st.history]
    )
    return StageResult(
        metrics=metrics,
        metadata=md,
        checks=[
            CheckOutcome("no_nan", all_finite(h), "all step statistics finite"),
            CheckOutcome(
                "kl_bounded", metrics["kl_max"] < 1.0, f"max per-token k3 KL {metrics['kl_max']:.4f} < 1"
            ),
            CheckOutcome(
                "reward_not_falling",
                metrics["reward_last_quarter"] >= metrics["reward_first_quarter"] - 0.05,
                f"reward {metrics['reward_first_quarter']:.3f} -> {metrics['reward_last_quarter']:.3f}",
            ),
        ],
    )


GRPO = register(
    StageKind(
        name="grpo",
        config=GRPOConfig,
        produces="model",
        run=run,
        pool="gpu",
        description="GRPO with rule rewards: group-normalised advantages, clipped ratio, k3 KL to a reference",
        checks=(
            CheckSpec("no_nan", "no NaN in any step", blocking=True),
            CheckSpec("kl_bounded", "per-token KL to the reference stays below 1"),
            CheckSpec("reward_not_falling", "training reward does not fall"),
        ),
        validate=validate,
    )
)
