"""Stage kind ``ppo``: PPO with a value head, GAE, clipping and a per-token KL penalty (``ops.rl.ppo``).

Key design choice: config -> one ``train_ppo`` call -> a model artifact with its value head
(``value_head.safetensors``) and rollouts; the reward is a reward-model stage's score, rule rewards, or
both, and a spec that gives neither is refused when it is compiled. A reward model whose tokenizer differs
from the policy's is refused before anything is loaded. The metadata shows the reward model's score and the
rollouts' rule-based accuracy per step side by side (``rewards.png``): a score that rises while the accuracy
falls is the reward model being gamed, and the ``no_reward_hacking`` check says so.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ops.train.optim import OptimConfig, RLOptimConfig, optim_field

from .posttrain import (
    MODEL,
    AnswerFormatName,
    PromptTemplate,
    accuracy,
    answer_format_field,
    check_same_tokenizer,
    check_template,
    ckpt_every,
    eval_tasks,
    keep_last,
    keep_training_state,
    load_policy,
    params,
    prompt_template_field,
    single_format,
    train_tasks,
    validate_rewards,
    write_curve,
)
from .registry import (
    CheckOutcome,
    CheckSpec,
    StageConfig,
    StageKind,
    StageResult,
    StageRun,
    Table,
    empty_ref_problems,
    ref,
    register,
)


class PPOConfig(StageConfig):
    model: str = ref(*MODEL, description="starting policy (also the frozen KL reference)")
    prompts: list[str] = ref(
        "tasks", many=True, description="tasks whose training split provides the prompts"
    )
    reward_model: str | None = ref(
        *MODEL, optional=True, description="a reward_model stage scoring completions"
    )
    rewards: list[Any] = Field(
        [],
        description="rule rewards added to the reward model's score (names or "
        "{name: {weight}}); at least one of rewards / reward_model",
    )
    steps: int = Field(20, ge=1, description="PPO iterations (rollout batch + epochs of minibatches)")
    prompts_per_step: int = Field(64, ge=1, description="prompts per rollout batch")
    max_new_tokens: int = Field(64, ge=1, description="completion budget")
    lr: float = Field(2e-5, gt=0, description="policy learning rate (value head: x value_lr_mult)")
    optim: OptimConfig = optim_field(RLOptimConfig)
    kl_coef: float = Field(
        0.05,
        gt=0,
        description="per-token KL penalty coefficient in the reward (> 0: the penalty is what keeps the policy "
        "where the reward model was fitted, and adaptive control scales it multiplicatively)",
    )
    kl_target: float | None = Field(
        None,
        gt=0,
        description="adaptive KL (Ziegler et al. 2019): steer kl_coef towards this mean sequence KL "
        "(None: fixed kl_coef)",
    )
    kl_horizon: int = Field(
        10000, ge=1, description="adaptive KL: rollout samples over which kl_coef moves by at most e^(+-0.2)"
    )
    rm_weight: float = Field(
        1.0, gt=0, description="weight of the reward model's score beside the rule rewards (their mix)"
    )
    rm_clip: float | None = Field(
        None,
        gt=0,
        description="clip the reward model's score to [-rm_clip, rm_clip]: its extremes are where it is least "
        "reliable and easiest to exploit (None: no clipping)",
    )
    reward_whiten: bool = Field(
        False,
        description="whiten each rollout batch's sequence scores (mean 0, std 1) so the KL penalty and the "
        "value targets see one scale whatever the reward model's",
    )
    value_warmup_steps: int = Field(
        0,
        ge=0,
        description="the first N of `steps` fit only the fresh value head (policy frozen), so the first policy "
        "updates use a fitted baseline",
    )
    clip_eps: float = Field(0.2, gt=0, description="policy ratio clip")
    value_clip_eps: float = Field(0.2, gt=0, description="value clip around the old values")
    vf_coef: float = Field(0.1, ge=0, description="value loss weight")
    gamma: float = Field(1.0, gt=0, le=1, description="discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    epochs: int = Field(2, ge=1, description="passes over each rollout batch")
    minibatch_size: int = Field(32, ge=1, description="samples per optimizer step")
    answer_format: AnswerFormatName = answer_format_field()
    prompt_template: PromptTemplate = prompt_template_field()
    seed: int = Field(0, description="sampling seed")
    eval_problems: int = Field(100, ge=0, description="held-out problems scored before and after")
    ckpt_every: int = ckpt_every(5)
    keep_last: int = keep_last()


def validate(cfg, refs):
    errs = empty_ref_problems(cfg, "prompts") + (validate_rewards(cfg, refs) if cfg.rewards else [])
    if not cfg.rewards and cfg.reward_model is None:
        errs.append(("rewards", "PPO needs rule rewards, a reward_model, or both"))
    if cfg.value_warmup_steps >= cfg.steps:
        errs.append(
            (
                "value_warmup_steps",
                f"{cfg.value_warmup_steps} value-only steps leave none of the {cfg.steps} steps to train the "
                "policy; use fewer than `steps`",
            )
        )
    if cfg.reward_model is None:
        for f in ("rm_clip", "rm_weight"):
            if f in cfg.model_fields_set:
                errs.append((f, "applies to a reward model's score; set `reward_model` or remove it"))
    return errs


def run(run: StageRun) -> StageResult:
    from safetensors.torch import save_file

    from ops.model import save_model
    from ops.posttrain.rm import load_reward_model
    from ops.rewards import parse_specs, with_answer_format
    from ops.rl.common import write_rollouts
    from ops.rl.ppo import PPOParams, train_ppo
    from ops.rl.summary import all_finite, ppo_summary, reward_hacking, training_steps

    c: PPOConfig = run.config
    check_template(run, "model")
    check_same_tokenizer(run, "reward_model")
    tasks = train_tasks(run, "prompts")
    fmt = single_format(run, "prompts", tasks)
    specs = parse_specs(list(c.rewards)) if c.rewards else []
    specs = with_answer_format(specs, fmt)
    ev = eval_tasks(run, ("prompts",), c.eval_problems)
    policy, tok = load_policy(run, "model")
    reference, _ = load_policy(run, "model")
    rm = load_reward_model(run.input("reward_model").path) if run.inputs.get("reward_model") else None

    def eval_fn(m, step):
        return accuracy(m, tok, ev, 0, c.max_new_tokens)

    st, vh = train_ppo(
        policy,
        reference,
        tok,
        tasks,
        specs,
        params(PPOParams, c, monitor_format=fmt),
        reward_model=rm,
        eval_fn=eval_fn if ev else None,
        log=run.log,
        stage=run.stage,
        work_dir=run.work,
        fingerprint={"stage_version": run.version},
    )
    save_model(policy, tok, run.out)
    keep_training_state(run)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in vh.state_dict().items()},
        str(run.out / "value_head.safetensors"),
    )
    names = [s.name for s in specs] + (["model"] if rm is not None else [])
    write_rollouts(st.rollouts, names, run.out / "rollouts.parquet")
    h = training_steps(st.history)
    metrics = ppo_summary(st.history)
    md = write_curve(run.out, h, ["score", "kl", "kl_coef", "value_loss"])
    # the two curves that tell learning from reward hacking: the reward model's score and the rule accuracy
    md.update(write_curve(run.out, h, ["reward_model", "rule_accuracy"], name="rewards"))
    md["history"] = Table(
        [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in st.history]
    )
    hacked = reward_hacking(h)
    return StageResult(
        metrics=metrics,
        metadata=md,
        checks=[
            CheckOutcome("no_nan", all_finite(h), "all statistics finite"),
            CheckOutcome(
                "kl_bounded", metrics["kl_max"] < 10.0, f"max sequence KL {metrics['kl_max']:.3f} < 10"
            ),
            CheckOutcome("no_reward_hacking", hacked is None, hacked or "rule accuracy did not fall"),
        ],
    )


PPO = register(
    StageKind(
        name="ppo",
        config=PPOConfig,
        produces="model",
        run=run,
        pool="gpu",
        description="PPO with a value head, GAE, clipping and a per-token KL penalty; reward model and/or rule rewards",
        checks=(
            CheckSpec("no_nan", "no NaN in any step", blocking=True),
            CheckSpec("kl_bounded", "sequence KL to the reference stays below 10"),
            CheckSpec(
                "no_reward_hacking",
                "the rollouts' rule accuracy does not fall (beyond 2 SE, first vs last quarter) while the reward "
                "model's score rises",
            ),
        ),
        validate=validate,
    )
)
