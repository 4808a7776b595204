"""Post-training stage kinds: ``sft``, ``reward_model``, ``dpo``, ``ppo``, ``grpo``, ``rejection_sample``,
``distill`` and ``merge`` (the R1 recipe after pretraining).

Key design choice: each kind is config -> one ``ops.posttrain`` / ``ops.rl`` call -> a model or dataset
artifact; everything heavy is imported inside ``run``. Models are ``save_pretrained`` directories with the
tokenizer; RL stages also keep their rollouts as ``rollouts.parquet`` inside the model artifact, so a later
``reward_model`` or ``rejection_sample`` stage can name an RL stage as its source of samples. Inputs that
cannot work (a tokenizer without the chat template, an unknown reward name, a user pairs file with missing
columns) fail with one error naming the stage and field before any training starts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .registry import (
    CheckOutcome,
    CheckSpec,
    Image,
    InputArtifact,
    Json,
    StageConfig,
    StageKind,
    StageResult,
    StageRun,
    Table,
    ref,
    register,
    run_option,
)

MODEL = ("model",)
SAMPLES = ("rollouts", "model", "sft_data")  # a model artifact from grpo/ppo carries rollouts.parquet


class PostTrainError(ValueError):
    """Bad input to a post-training stage (raised before any compute)."""


# ------------------------------------------------------------------------------------------ shared helpers
def _load_policy(run: StageRun, field: str, art: InputArtifact | None = None, device: str = "cpu"):
    from ops.generate import ChatTemplateError
    from ops.posttrain.common import load_policy

    a = art or run.input(field)
    try:
        return load_policy(a.path, device=device)
    except (ChatTemplateError, FileNotFoundError) as e:
        raise PostTrainError(f"stage {run.stage!r}, field {field!r} (stage {a.stage!r}): {e}") from None


def _check_template(run: StageRun, field: str) -> None:
    """Refuse a model whose tokenizer lacks the chat template, before anything is loaded or trained."""
    for a in run.inputs.get(field, []):
        cfg = a.path / "tokenizer_config.json"
        tmpl = None
        if cfg.is_file():
            tmpl = json.loads(cfg.read_text()).get("chat_template")
        if not tmpl and not (a.path / "chat_template.jinja").is_file():
            raise PostTrainError(
                f"stage {run.stage!r}, field {field!r}: model {a.stage!r} ({a.path}) has a tokenizer "
                "without a chat template; post-training needs the lmforge chat format"
            )


def _eval_tasks(run: StageRun, fields: tuple[str, ...], n: int):
    from ops.tasks import read_tasks

    for f in fields:
        for a in run.inputs.get(f, []):
            if a.produces == "tasks" and (a.path / "eval.parquet").is_file():
                ev = read_tasks(a.path / "eval.parquet")
                if ev:  # a prompt set generated with eval: 0 has an empty held-out split: try the next
                    return ev[:n]
    return []


def _train_tasks(run: StageRun, field: str):
    from ops.tasks import read_tasks

    out = []
    for a in run.inputs.get(field, []):
        if a.produces != "tasks":
            raise PostTrainError(
                f"stage {run.stage!r}, field {field!r}: {a.stage!r} is {a.produces!r}, not tasks"
            )
        out += read_tasks(a.path / "train.parquet")
    return out


def _rollout_rows(run: StageRun, field: str) -> list[dict]:
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for a in run.inputs.get(field, []):
        p = a.path / "rollouts.parquet"
        if not p.is_file():
            raise PostTrainError(
                f"stage {run.stage!r}, field {field!r}: {a.stage!r} ({a.kind}) has no "
                "rollouts.parquet; name a grpo/ppo/rejection_sample stage"
            )
        rows += pq.read_table(p).to_pylist()
    return rows


def _write_curve(out: Path, records: list[dict], keys: list[str], name: str = "curve") -> dict:
    """``curve.parquet`` + a PNG of the named series; returns the metadata entries."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not records:
        return {}
    cols = sorted({k for r in records for k, v in r.items() if isinstance(v, int | float)})
    pq.write_table(
        pa.table(
            {c: [float(r[c]) if isinstance(r.get(c), int | float) else None for r in records] for c in cols}
        ),
        out / f"{name}.parquet",
    )
    md: dict[str, Any] = {}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = [k for k in keys if any(k in r for r in records)]
        if keys:
            fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6))
            for ax, k in zip(axes if len(keys) > 1 else [axes], keys):
                xs = [r["step"] for r in records if k in r]
                ax.plot(xs, [r[k] for r in records if k in r], marker=".")
                ax.set_title(k, fontsize=9)
                ax.set_xlabel("step", fontsize=8)
            fig.tight_layout()
            fig.savefig(out / f"{name}.png", dpi=80)
            plt.close(fig)
            md[f"{name}_plot"] = Image(f"{name}.png")
    except Exception as e:  # noqa: BLE001 - a missing plot never fails a stage
        md[f"{name}_plot_error"] = str(e)
    return md


def _keep_training_state(run: StageRun) -> None:
    from ops.train.checkpoint import latest

    found = latest(run.work / "checkpoints")
    if found:
        shutil.copytree(found[1], run.out / "training_state", dirs_exist_ok=True)


def _accuracy(model, tok, tasks, n_samples: int, max_new: int, seed: int = 0) -> dict[str, float]:
    from ops.posttrain.common import task_accuracy

    if not tasks:
        return {}
    g = task_accuracy(model, tok, tasks, temperature=0.0, max_new_tokens=max_new)
    out = {
        "eval_accuracy": g["accuracy"],
        "eval_parse_rate": g["parse_rate"],
        "eval_format_rate": g["format_rate"],
        "eval_tokens": g["mean_tokens"],
    }
    if n_samples > 0:
        s = task_accuracy(
            model, tok, tasks, samples=n_samples, temperature=1.0, max_new_tokens=max_new, seed=seed
        )
        out.update({"eval_sampled_accuracy": s["accuracy"], f"eval_pass_at_{n_samples}": s["pass_at_k"]})
    return out


def _samples_table(model, tok, tasks, k: int = 8, max_new: int = 96) -> Table:
    from ops.generate import generate
    from ops.tasks import is_correct

    outs = generate(model, tok, [t.question for t in tasks[:k]], temperature=0.0, max_new_tokens=max_new)
    return Table(
        [
            {
                "question": t.question,
                "response": s.text,
                "gold": t.answer,
                "correct": is_correct(s.text, t.answer),
            }
            for t, s in zip(tasks[:k], outs)
        ]
    )


def _validate_rewards(cfg, refs) -> list[tuple[str, str]]:
    from ops.rewards import parse_specs

    try:
        parse_specs(list(cfg.rewards))
    except ValueError as e:
        return [("rewards", str(e))]
    return []


# ------------------------------------------------------------------------------------------ sft
class SFTConfig(StageConfig):
    model: str = ref(
        *MODEL, description="the model to fine-tune (a model artifact with a chat-template tokenizer)"
    )
    data: list[str] = ref(
        "tasks",
        "sft_data",
        "rollouts",
        many=True,
        description="training data: tasks (worked solutions), sft_data, or rollouts (correct only)",
    )
    steps: int = Field(300, ge=1, description="optimizer updates")
    lr: float = Field(2e-3, gt=0, description="peak learning rate (cosine schedule after warm-up)")
    batch_size: int = Field(32, ge=1, description="examples per update (rows when packing)")
    warmup_steps: int = Field(20, ge=0, description="linear warm-up updates")
    max_len: int = Field(256, ge=8, description="examples longer than this (tokens) are dropped and counted")
    pack: bool = Field(False, description="pack several examples per row (block-diagonal attention, exact)")
    seq_len: int = Field(512, ge=8, description="row length when packing")
    lora_r: int = Field(0, ge=0, description="LoRA rank; 0 = full fine-tuning")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r)")
    seed: int = Field(0, description="data order and initialisation seed")
    eval_problems: int = Field(
        100, ge=0, description="held-out problems (eval split of a tasks input) scored at the end"
    )
    eval_samples: int = Field(
        0, ge=0, description="also sample this many answers per problem at T=1 (pass@k)"
    )
    max_new_tokens: int = Field(96, ge=1, description="generation budget for evaluation")
    format: Literal["think_answer"] = Field(
        "think_answer", description="response format (<think>..</think><answer>..</answer>)"
    )
    ckpt_every: int = run_option(
        100,
        ge=0,
        description="checkpoint every N steps (and at the end) in the work directory; 0 = at the end",
    )
    keep_last: int = run_option(2, ge=1, description="checkpoints kept in the work directory")


def _run_sft(run: StageRun) -> StageResult:
    import torch

    from ops.posttrain.common import examples_from_artifact
    from ops.posttrain.sft import SFTParams, train_sft

    c: SFTConfig = run.config
    _check_template(run, "model")
    examples = []
    for a in run.inputs.get("data", []):
        examples += examples_from_artifact(a.produces, a.path)
    if not examples:
        raise PostTrainError(
            f"stage {run.stage!r}, field 'data': no training examples in {[a.stage for a in run.inputs['data']]}"
        )
    torch.manual_seed(c.seed)
    model, tok = _load_policy(run, "model")
    ev = _eval_tasks(run, ("data",), c.eval_problems)
    p = SFTParams(
        steps=c.steps,
        lr=c.lr,
        batch_size=c.batch_size,
        max_len=c.max_len,
        pack=c.pack,
        seq_len=c.seq_len,
        warmup_steps=c.warmup_steps,
        seed=c.seed,
        lora_r=c.lora_r,
        lora_alpha=c.lora_alpha,
        ckpt_every=c.ckpt_every,
        keep_last=c.keep_last,
    )
    fp = {"stage_version": run.version}
    merged, peft_model, info = train_sft(
        model, tok, examples, p, work_dir=run.work, fingerprint=fp, log=run.log
    )
    from ops.model import save_model

    save_model(merged, tok, run.out)
    if peft_model is not None:
        peft_model.save_pretrained(str(run.out / "adapter"))
    _keep_training_state(run)
    acc = _accuracy(merged, tok, ev, c.eval_samples, c.max_new_tokens)
    md = _write_curve(run.out, info["curve"], ["loss", "lr"])
    if ev:
        md["samples"] = _samples_table(merged, tok, ev, max_new=c.max_new_tokens)
    metrics = {
        "final_loss": info["losses"][-1],
        "examples": info["examples"],
        "dropped_too_long": info["dropped_too_long"],
        "trainable_params": info["trainable_params"],
        "train_wall_s": round(info["wall_s"], 2),
        **acc,
    }
    checks = [
        CheckOutcome("loss_finite", all(x == x for x in info["losses"]), "every step's loss is finite"),
        CheckOutcome(
            "answers_parse",
            acc.get("eval_parse_rate", 1.0) >= 0.9,
            f"{acc.get('eval_parse_rate', float('nan')):.3f} of eval responses parse (>= 0.9)",
        ),
    ]
    return StageResult(metrics=metrics, metadata=md, checks=checks, tokens=info["tokens"])


SFT = register(
    StageKind(
        name="sft",
        config=SFTConfig,
        produces="model",
        run=_run_sft,
        pool="gpu",
        description="Supervised fine-tuning on chat examples (assistant-token loss, packing, full or LoRA)",
        checks=(
            CheckSpec("loss_finite", "training loss stayed finite", blocking=True),
            CheckSpec("answers_parse", ">= 90% of held-out responses contain a parsable <answer>"),
        ),
    )
)


# ------------------------------------------------------------------------------------------ grpo
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
    beta: float = Field(0.04, ge=0, description="k3 KL coefficient (0: no reference forward)")
    clip_eps: float = Field(0.2, gt=0, description="ratio clip epsilon")
    norm: Literal["token", "sequence", "unbiased"] = Field(
        "token",
        description="loss normalisation: token-level, per-sequence mean (original), or unbiased Dr. GRPO",
    )
    scale_rewards: bool = Field(True, description="divide advantages by the group std (False: Dr. GRPO)")
    updates_per_batch: int = Field(
        1, ge=1, description="optimizer passes per rollout batch (1 = fully on-policy)"
    )
    seed: int = Field(0, description="sampling and data-order seed")
    eval_problems: int = Field(200, ge=0, description="held-out problems scored before and after")
    eval_samples: int = Field(
        4, ge=0, description="sampled answers per held-out problem (sampled accuracy, pass@k)"
    )
    ckpt_every: int = run_option(
        10,
        ge=0,
        description="checkpoint every N steps (and at the end) in the work directory; 0 = at the end",
    )
    keep_last: int = run_option(2, ge=1, description="checkpoints kept in the work directory")


def _run_grpo(run: StageRun) -> StageResult:
    import torch

    from ops.rewards import parse_specs, reward_versions
    from ops.rl.common import write_rollouts
    from ops.rl.grpo import GRPOParams, train_grpo

    c: GRPOConfig = run.config
    specs = parse_specs(list(c.rewards))
    _check_template(run, "model")
    tasks = _train_tasks(run, "prompts")
    ev = _eval_tasks(run, ("prompts",), c.eval_problems)
    policy, tok = _load_policy(run, "model")
    ref_art = run.inputs.get("reference") or run.inputs["model"]
    ref, _ = _load_policy(run, "reference" if run.inputs.get("reference") else "model", ref_art[0])
    p = GRPOParams(
        steps=c.steps,
        prompts_per_step=c.prompts_per_step,
        group_size=c.group_size,
        max_new_tokens=c.max_new_tokens,
        temperature=c.temperature,
        top_p=c.top_p,
        lr=c.lr,
        warmup_steps=c.warmup_steps,
        beta=c.beta,
        clip_eps=c.clip_eps,
        norm=c.norm,
        scale_rewards=c.scale_rewards,
        updates_per_batch=c.updates_per_batch,
        seed=c.seed,
        ckpt_every=c.ckpt_every,
        keep_last=c.keep_last,
    )
    torch.manual_seed(c.seed)

    def eval_fn(m, step):
        return _accuracy(m, tok, ev, c.eval_samples, c.max_new_tokens, seed=10_000 + c.seed)

    st = train_grpo(
        policy,
        ref,
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
    from ops.model import save_model

    save_model(policy, tok, run.out)
    _keep_training_state(run)
    write_rollouts(st.rollouts, [s.name for s in specs], run.out / "rollouts.parquet")
    h = [r for r in st.history if r["step"] > 0]
    first, last = h[: max(len(h) // 4, 1)], h[-max(len(h) // 4, 1) :]
    mean = lambda rs, k: sum(r.get(k, 0.0) for r in rs) / len(rs)  # noqa: E731
    start = st.history[0] if st.history and st.history[0]["step"] == 0 else {}
    end = st.history[-1]
    metrics = {
        "reward_first_quarter": mean(first, "reward"),
        "reward_last_quarter": mean(last, "reward"),
        "accuracy_first_quarter": mean(first, "reward_accuracy"),
        "accuracy_last_quarter": mean(last, "reward_accuracy"),
        "kl_max": max(r.get("kl", 0.0) for r in h),
        "kl_last": h[-1].get("kl", 0.0),
        "step_s": mean(h, "step_s"),
        "gen_share": mean(h, "gen_s") / max(mean(h, "step_s"), 1e-9),
        "rollouts": len(st.rollouts),
    }
    for k in ("eval_accuracy", "eval_sampled_accuracy", "eval_parse_rate"):
        if k in start:
            metrics[f"{k}_start"], metrics[f"{k}_end"] = start[k], end.get(k)
    md = _write_curve(run.out, h, ["reward", "reward_accuracy", "kl", "completion_tokens"])
    md["reward_versions"] = Json(reward_versions(specs))
    md["history"] = Table(
        [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in st.history]
    )
    finite = all(all(v == v for v in r.values() if isinstance(v, float)) for r in h)
    return StageResult(
        metrics=metrics,
        metadata=md,
        checks=[
            CheckOutcome("no_nan", finite, "all step statistics finite"),
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
        run=_run_grpo,
        pool="gpu",
        description="GRPO with rule rewards: group-normalised advantages, clipped ratio, k3 KL to a reference",
        checks=(
            CheckSpec("no_nan", "no NaN in any step", blocking=True),
            CheckSpec("kl_bounded", "per-token KL to the reference stays below 1"),
            CheckSpec("reward_not_falling", "training reward does not fall"),
        ),
        validate=_validate_rewards,
    )
)


# ------------------------------------------------------------------------------------------ rejection sampling
class RejectionConfig(StageConfig):
    model: str = ref(*MODEL, description="the model to sample from")
    prompts: list[str] = ref(
        "tasks", many=True, description="tasks whose training split provides the prompts"
    )
    reward_model: str | None = ref(*MODEL, optional=True, description="scores samples for keep=best_of_k")
    samples: int = Field(8, ge=1, description="samples per prompt (k)")
    keep: Literal["correct", "best_of_k"] = Field(
        "correct",
        description="'correct': every verified-correct "
        "distinct sample (up to max_per_prompt); 'best_of_k': the verified "
        "sample the reward model scores highest",
    )
    max_prompts: int = Field(1000, ge=1, description="prompts to sample (the first N of the training split)")
    max_per_prompt: int = Field(2, ge=1, description="kept responses per prompt after de-duplication")
    max_response_tokens: int = Field(96, ge=1, description="length cap: longer samples are rejected")
    temperature: float = Field(1.0, gt=0, description="sampling temperature")
    seed: int = Field(0, description="sampling seed")


def _run_rejection(run: StageRun) -> StageResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ops.posttrain.rejection import RejectionParams, rejection_sample
    from ops.rl.common import write_rollouts
    from ops.tasks import is_correct

    c: RejectionConfig = run.config
    _check_template(run, "model")
    if c.keep == "best_of_k" and not run.inputs.get("reward_model"):
        raise PostTrainError(
            f"stage {run.stage!r}, field 'reward_model': keep=best_of_k needs a reward_model"
        )
    tasks = _train_tasks(run, "prompts")[: c.max_prompts]
    model, tok = _load_policy(run, "model")
    rm = None
    if run.inputs.get("reward_model"):
        from ops.posttrain.rm import load_reward_model

        rm = load_reward_model(run.input("reward_model").path)
    p = RejectionParams(
        samples=c.samples,
        keep=c.keep,
        max_per_prompt=c.max_per_prompt,
        max_response_tokens=c.max_response_tokens,
        temperature=c.temperature,
        seed=c.seed,
    )
    sft, rollouts, stats = rejection_sample(model, tok, tasks, p, reward_model=rm, stage=run.stage)
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("prompt", pa.string()),
            ("response", pa.string()),
            ("answer", pa.string()),
            ("parent_ids", pa.list_(pa.string())),
        ]
    )
    pq.write_table(pa.Table.from_pylist(sft, schema=schema), run.out / "sft.parquet", compression="zstd")
    write_rollouts(rollouts, ["accuracy", "format", "model"], run.out / "rollouts.parquet")
    ids = {r["id"] for r in rollouts}
    verified = all(is_correct(r["response"], r["answer"]) for r in sft)
    linked = all(r["parent_ids"][0] in ids for r in sft)
    metrics = {
        **stats,
        "keep_rate": stats["kept"] / max(stats["sampled"], 1),
        "sample_accuracy": stats["correct"] / max(stats["sampled"], 1),
    }
    return StageResult(
        metrics=metrics,
        metadata={"kept": Table(sft[:10])},
        checks=[
            CheckOutcome("only_verified", verified, "every kept response passes ops.tasks.is_correct"),
            CheckOutcome("provenance", linked, "every kept row's parent id is a rollout in rollouts.parquet"),
            CheckOutcome("non_empty", len(sft) > 0, f"{len(sft)} examples kept"),
        ],
    )


REJECTION = register(
    StageKind(
        name="rejection_sample",
        config=RejectionConfig,
        produces="sft_data",
        run=_run_rejection,
        pool="gpu",
        description="k samples per prompt, verified (or best-of-k by a reward model), de-duplicated -> SFT data",
        checks=(
            CheckSpec("only_verified", "only verified-correct answers are kept", blocking=True),
            CheckSpec("provenance", "kept rows point at their rollouts", blocking=True),
            CheckSpec("non_empty", "at least one example kept", blocking=True),
        ),
    )
)


# ------------------------------------------------------------------------------------------ reward model
class RewardModelConfig(StageConfig):
    model: str = ref(
        *MODEL, description="initialisation of the reward model's trunk (usually the SFT policy)"
    )
    pairs: list[str] = ref(
        "pairs",
        "rollouts",
        "model",
        "sft_data",
        many=True,
        description="preference pairs (a pairs artifact) or samples to pair correct vs incorrect "
        "(rollouts, or a grpo/ppo/rejection_sample stage)",
    )
    path: str | None = Field(
        None, description="optional user Parquet of pairs: prompt, chosen, rejected (id optional)"
    )
    held_out: float = Field(0.2, gt=0, lt=1, description="share of prompts held out for pair accuracy")
    max_pairs_per_prompt: int = Field(4, ge=1, description="pairs built from each prompt's samples")
    head: Literal["classifier", "likelihood"] = Field(
        "classifier",
        description="classifier: a score head at the last token, trunk and head trained by Bradley-Terry "
        "(a sequence-classification checkpoint); likelihood: the trunk's mean log-likelihood of the "
        "response times a Bradley-Terry-fitted scale, trunk untrained (a causal-LM checkpoint + reward.json)",
    )
    steps: int = Field(200, ge=1, description="optimizer updates (classifier head)")
    lr: float = Field(1e-3, gt=0, description="learning rate (classifier head)")
    batch_size: int = Field(32, ge=1, description="pairs per update (classifier head)")
    seed: int = Field(0, description="split and order seed")
    ckpt_every: int = run_option(
        100,
        ge=0,
        description="checkpoint every N steps (and at the end) in the work directory; 0 = at the end",
    )
    keep_last: int = run_option(2, ge=1, description="checkpoints kept in the work directory")


def _pairs_problems(path: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        return [f"{path}: file not found"]
    try:
        schema = pq.read_schema(path)
    except Exception as e:  # noqa: BLE001
        return [f"{path}: not a readable Parquet file ({e})"]
    out = []
    for col in ("prompt", "chosen", "rejected"):
        if col not in schema.names:
            out.append(f"{path}: missing column {col!r} (has {schema.names})")
        elif schema.field(col).type not in (pa.string(), pa.large_string()):
            out.append(f"{path}: column {col!r} has type {schema.field(col).type}, expected string")
    return out


def _head_problems(cfg) -> list[tuple[str, str]]:
    if getattr(cfg, "head", "classifier") != "likelihood":  # dpo shares _validate_rm and has no head
        return []
    return [
        (f, f"head 'likelihood' does not train the trunk (it fits one scale); remove {f!r}")
        for f in ("steps", "lr", "batch_size")
        if f in cfg.model_fields_set
    ]


def _validate_rm(cfg, refs):
    errs = _head_problems(cfg)
    if cfg.path:
        errs += [("path", m) for m in _pairs_problems(Path(cfg.path).expanduser())]
    return errs


def _fp_path(cfg):
    import hashlib

    if cfg.path and Path(cfg.path).expanduser().is_file():
        return {"path_sha256": hashlib.sha256(Path(cfg.path).expanduser().read_bytes()).hexdigest()}
    return None


def _collect_pairs(run: StageRun, field: str, max_per_prompt: int, seed: int, path: str | None):
    import pyarrow.parquet as pq

    from ops.posttrain.rm import pairs_from_rollouts, pairs_from_table

    pairs = []
    samples = []
    for a in run.inputs.get(field, []):
        if a.produces == "pairs":
            pairs += pairs_from_table(pq.read_table(a.path / "pairs.parquet").to_pylist())
        else:
            samples.append(a)
    if samples:
        rows = _rollout_rows(StageRun(**{**run.__dict__, "inputs": {field: samples}}), field)
        pairs += pairs_from_rollouts(rows, max_per_prompt, seed)
    if path:
        probs = _pairs_problems(Path(path).expanduser())
        if probs:
            raise PostTrainError(f"stage {run.stage!r}, field 'path': " + "; ".join(probs))
        pairs += pairs_from_table(
            [
                {**r, "id": r.get("id") or f"user-{i}"}
                for i, r in enumerate(pq.read_table(Path(path).expanduser()).to_pylist())
            ]
        )
    return pairs


def _run_rm(run: StageRun) -> StageResult:
    from ops.posttrain.rm import RMParams, init_reward_model, pair_accuracy, split_pairs, train_reward_model

    c: RewardModelConfig = run.config
    errs = _head_problems(c)  # also when run directly, not through a compiled spec
    if errs:
        raise PostTrainError(f"stage {run.stage!r}, field {errs[0][0]!r}: {errs[0][1]}")
    _check_template(run, "model")
    pairs = _collect_pairs(run, "pairs", c.max_pairs_per_prompt, c.seed, c.path)
    train_p, held = split_pairs(pairs, c.held_out, c.seed)
    if not train_p:
        raise PostTrainError(
            f"stage {run.stage!r}, field 'pairs': no training pairs (need prompts with both a "
            "correct and an incorrect sample)"
        )
    lm, tok = _load_policy(run, "model")
    if c.head == "likelihood":
        return _run_likelihood_rm(run, lm, tok, train_p, held)
    del lm  # the classifier is loaded with its new score head below
    rm = init_reward_model(run.input("model").path)
    rm.config.pad_token_id = tok.pad_token_id
    before = pair_accuracy(rm, tok, held)
    info = train_reward_model(
        rm,
        tok,
        train_p,
        RMParams(
            steps=c.steps,
            lr=c.lr,
            batch_size=c.batch_size,
            seed=c.seed,
            ckpt_every=c.ckpt_every,
            keep_last=c.keep_last,
        ),
        work_dir=run.work,
        fingerprint={"stage_version": run.version},
        log=run.log,
    )
    after = pair_accuracy(rm, tok, held)
    rm.save_pretrained(str(run.out), safe_serialization=True)
    tok.save_pretrained(str(run.out), save_jinja_files=False)
    _keep_training_state(run)
    md = _write_curve(run.out, info["curve"], ["loss", "accuracy"])
    metrics = {
        "train_pairs": len(train_p),
        "held_out_pairs": len(held),
        "held_out_accuracy": after["accuracy"],
        "held_out_accuracy_before": before["accuracy"],
        "length_baseline_accuracy": after["length_baseline"],
        "held_out_margin": after.get("margin", float("nan")),
        "final_loss": info["losses"][-1],
    }
    return StageResult(
        metrics=metrics,
        metadata=md,
        checks=_rm_checks(after),
    )


def _rm_checks(acc: dict) -> list[CheckOutcome]:
    return [
        CheckOutcome(
            "beats_chance", acc["accuracy"] > 0.6, f"held-out pair accuracy {acc['accuracy']:.3f} > 0.6"
        ),
        CheckOutcome(
            "beats_length_baseline",
            acc["accuracy"] > acc["length_baseline"],
            f"{acc['accuracy']:.3f} vs length-only {acc['length_baseline']:.3f}",
        ),
    ]


def _run_likelihood_rm(run: StageRun, lm, tok, train_p, held) -> StageResult:
    from ops.posttrain.rm import fit_likelihood_reward, pair_accuracy

    rm, fit = fit_likelihood_reward(lm, tok, train_p)
    after = pair_accuracy(rm, tok, held, with_rewards=True)
    rm.save(tok, run.out)
    md: dict[str, Any] = {}
    if held:
        md.update(_reward_histogram(run.out, after["chosen_rewards"], after["rejected_rewards"]))
    metrics = {
        "train_pairs": len(train_p),
        "held_out_pairs": len(held),
        "held_out_accuracy": after["accuracy"],
        "train_accuracy": fit["train_accuracy"],
        "length_baseline_accuracy": after["length_baseline"],
        "held_out_margin": after.get("margin", float("nan")),
        "scale": fit["scale"],
        "center": fit["center"],
    }
    return StageResult(metrics=metrics, metadata=md, checks=_rm_checks(after))


def _reward_histogram(out: Path, chosen: list[float], rejected: list[float]) -> dict:
    """A PNG of the held-out chosen and rejected rewards (how far apart the two distributions are)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3))
        lo, hi = min(chosen + rejected), max(chosen + rejected)
        bins = [lo + (hi - lo) * i / 40 for i in range(41)] if hi > lo else 10
        ax.hist(chosen, bins=bins, alpha=0.6, label="chosen (correct)")
        ax.hist(rejected, bins=bins, alpha=0.6, label="rejected (incorrect)")
        ax.set_xlabel("reward")
        ax.set_ylabel("held-out responses")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "rewards.png", dpi=80)
        plt.close(fig)
        return {"rewards_plot": Image("rewards.png")}
    except Exception as e:  # noqa: BLE001 - a missing plot never fails a stage
        return {"rewards_plot_error": str(e)}


REWARD_MODEL = register(
    StageKind(
        name="reward_model",
        config=RewardModelConfig,
        produces="model",
        run=_run_rm,
        pool="gpu",
        description="Bradley-Terry reward model on preference pairs: a sequence classifier (1 label) or a likelihood head",
        checks=(
            CheckSpec("beats_chance", "held-out pair accuracy above 60%"),
            CheckSpec("beats_length_baseline", "better than preferring the longer/shorter response"),
        ),
        validate=_validate_rm,
        fingerprint=_fp_path,
    )
)


# ------------------------------------------------------------------------------------------ dpo
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
        description="preference pairs or samples paired correct-vs-incorrect",
    )
    reference: str | None = ref(
        *MODEL, optional=True, description="frozen reference policy; default: `model`"
    )
    path: str | None = Field(None, description="optional user Parquet of pairs: prompt, chosen, rejected")
    beta: float = Field(0.1, gt=0, description="DPO temperature beta")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="conservative-DPO label smoothing")
    held_out: float = Field(0.2, gt=0, lt=1, description="share of prompts held out for margins")
    max_pairs_per_prompt: int = Field(4, ge=1, description="pairs built from each prompt's samples")
    steps: int = Field(100, ge=1, description="optimizer updates")
    lr: float = Field(5e-5, gt=0, description="learning rate")
    batch_size: int = Field(16, ge=1, description="pairs per update")
    seed: int = Field(0, description="split and order seed")
    eval_problems: int = Field(100, ge=0, description="held-out task problems for greedy accuracy")
    ckpt_every: int = run_option(
        100,
        ge=0,
        description="checkpoint every N steps (and at the end) in the work directory; 0 = at the end",
    )
    keep_last: int = run_option(2, ge=1, description="checkpoints kept in the work directory")


def _run_dpo(run: StageRun) -> StageResult:
    from ops.posttrain.dpo import DPOParams, pair_margins, train_dpo
    from ops.posttrain.rm import split_pairs

    c: DPOConfig = run.config
    _check_template(run, "model")
    pairs = _collect_pairs(run, "pairs", c.max_pairs_per_prompt, c.seed, c.path)
    train_p, held = split_pairs(pairs, c.held_out, c.seed)
    if not train_p:
        raise PostTrainError(f"stage {run.stage!r}, field 'pairs': no training pairs")
    policy, tok = _load_policy(run, "model")
    ref, _ = _load_policy(
        run,
        "reference" if run.inputs.get("reference") else "model",
        (run.inputs.get("reference") or run.inputs["model"])[0],
    )
    before = pair_margins(policy, ref, tok, held, c.beta)
    info = train_dpo(
        policy,
        ref,
        tok,
        train_p,
        DPOParams(
            steps=c.steps,
            lr=c.lr,
            beta=c.beta,
            label_smoothing=c.label_smoothing,
            batch_size=c.batch_size,
            seed=c.seed,
            ckpt_every=c.ckpt_every,
            keep_last=c.keep_last,
        ),
        work_dir=run.work,
        fingerprint={"stage_version": run.version},
        log=run.log,
    )
    after = pair_margins(policy, ref, tok, held, c.beta)
    from ops.model import save_model

    save_model(policy, tok, run.out)
    _keep_training_state(run)
    md = _write_curve(run.out, info["curve"], ["loss", "margin", "accuracy"])
    metrics = {
        "train_pairs": info["pairs"],
        "held_out_pairs": after["pairs"],
        "held_out_margin_before": before["margin"],
        "held_out_margin_after": after["margin"],
        "held_out_accuracy_after": after["accuracy"],
        "final_loss": info["losses"][-1],
    }
    return StageResult(
        metrics=metrics,
        metadata=md,
        checks=[
            CheckOutcome(
                "margin_rises",
                after["margin"] > before["margin"],
                f"held-out chosen-minus-rejected margin {before['margin']:.3f} -> {after['margin']:.3f}",
            )
        ],
    )


DPO = register(
    StageKind(
        name="dpo",
        config=DPOConfig,
        produces="model",
        run=_run_dpo,
        pool="gpu",
        description="Direct Preference Optimization against a frozen reference",
        checks=(CheckSpec("margin_rises", "held-out chosen-minus-rejected margin rises"),),
        validate=_validate_rm,
        fingerprint=_fp_path,
    )
)


# ------------------------------------------------------------------------------------------ ppo
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
    kl_coef: float = Field(0.05, ge=0, description="per-token KL penalty coefficient in the reward")
    clip_eps: float = Field(0.2, gt=0, description="policy ratio clip")
    value_clip_eps: float = Field(0.2, gt=0, description="value clip around the old values")
    vf_coef: float = Field(0.1, ge=0, description="value loss weight")
    gamma: float = Field(1.0, gt=0, le=1, description="discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    epochs: int = Field(2, ge=1, description="passes over each rollout batch")
    minibatch_size: int = Field(32, ge=1, description="samples per optimizer step")
    seed: int = Field(0, description="sampling seed")
    eval_problems: int = Field(100, ge=0, description="held-out problems scored before and after")
    ckpt_every: int = run_option(
        5, ge=0, description="checkpoint every N steps (and at the end) in the work directory; 0 = at the end"
    )
    keep_last: int = run_option(2, ge=1, description="checkpoints kept in the work directory")


def _validate_ppo(cfg, refs):
    errs = _validate_rewards(cfg, refs) if cfg.rewards else []
    if not cfg.rewards and cfg.reward_model is None:
        errs.append(("rewards", "PPO needs rule rewards, a reward_model, or both"))
    return errs


def _run_ppo(run: StageRun) -> StageResult:
    from safetensors.torch import save_file

    from ops.rewards import parse_specs
    from ops.rl.common import write_rollouts
    from ops.rl.ppo import PPOParams, train_ppo

    c: PPOConfig = run.config
    specs = parse_specs(list(c.rewards)) if c.rewards else []
    _check_template(run, "model")
    tasks = _train_tasks(run, "prompts")
    ev = _eval_tasks(run, ("prompts",), c.eval_problems)
    policy, tok = _load_policy(run, "model")
    ref, _ = _load_policy(run, "model")
    rm = None
    if run.inputs.get("reward_model"):
        from ops.posttrain.rm import load_reward_model

        rm = load_reward_model(run.input("reward_model").path)
    p = PPOParams(
        steps=c.steps,
        prompts_per_step=c.prompts_per_step,
        max_new_tokens=c.max_new_tokens,
        lr=c.lr,
        kl_coef=c.kl_coef,
        clip_eps=c.clip_eps,
        value_clip_eps=c.value_clip_eps,
        vf_coef=c.vf_coef,
        gamma=c.gamma,
        lam=c.lam,
        epochs=c.epochs,
        minibatch_size=c.minibatch_size,
        seed=c.seed,
        ckpt_every=c.ckpt_every,
        keep_last=c.keep_last,
    )

    def eval_fn(m, step):
        return _accuracy(m, tok, ev, 0, c.max_new_tokens)

    st, vh = train_ppo(
        policy,
        ref,
        tok,
        tasks,
        specs,
        p,
        reward_model=rm,
        eval_fn=eval_fn if ev else None,
        log=run.log,
        stage=run.stage,
        work_dir=run.work,
        fingerprint={"stage_version": run.version},
    )
    from ops.model import save_model

    save_model(policy, tok, run.out)
    _keep_training_state(run)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in vh.state_dict().items()},
        str(run.out / "value_head.safetensors"),
    )
    names = [s.name for s in specs] + (["model"] if rm is not None else [])
    write_rollouts(st.rollouts, names, run.out / "rollouts.parquet")
    h = [r for r in st.history if r["step"] > 0]
    q = max(len(h) // 4, 1)
    metrics = {
        "score_first_quarter": sum(r["score"] for r in h[:q]) / q,
        "score_last_quarter": sum(r["score"] for r in h[-q:]) / q,
        "kl_max": max(r["kl"] for r in h),
        "kl_last": h[-1]["kl"],
    }
    if st.history[0]["step"] == 0 and "eval_accuracy" in st.history[0]:
        metrics["eval_accuracy_start"], metrics["eval_accuracy_end"] = (
            st.history[0]["eval_accuracy"],
            h[-1].get("eval_accuracy"),
        )
    finite = all(all(v == v for v in r.values() if isinstance(v, float)) for r in h)
    md = _write_curve(run.out, h, ["score", "kl", "value_loss"])
    return StageResult(
        metrics=metrics,
        metadata=md,
        checks=[
            CheckOutcome("no_nan", finite, "all statistics finite"),
            CheckOutcome(
                "kl_bounded", metrics["kl_max"] < 10.0, f"max sequence KL {metrics['kl_max']:.3f} < 10"
            ),
        ],
    )


PPO = register(
    StageKind(
        name="ppo",
        config=PPOConfig,
        produces="model",
        run=_run_ppo,
        pool="gpu",
        description="PPO with a value head, GAE, clipping and a per-token KL penalty; reward model and/or rule rewards",
        checks=(
            CheckSpec("no_nan", "no NaN in any step", blocking=True),
            CheckSpec("kl_bounded", "sequence KL to the reference stays below 10"),
        ),
        validate=_validate_ppo,
    )
)


# ------------------------------------------------------------------------------------------ distill
class PruneConfig(BaseModel):
    """How the teacher is pruned into the student (``ops.posttrain.prune``); an axis left out is kept whole."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    layers: int | None = Field(None, ge=1, description="decoder layers kept (largest block influence)")
    d_model: int | None = Field(None, ge=1, description="residual channels kept (largest mean |RMSNorm(x)|)")
    ffn: int | None = Field(None, ge=1, description="MLP neurons kept per layer (largest mean activation)")
    calibration_batches: int = Field(8, ge=1, description="batches of the distillation data scored")


class DistillConfig(StageConfig):
    teacher: str = ref(*MODEL, description="the teacher model (its tokenizer is shared by the student)")
    data: list[str] = ref("tasks", "sft_data", "rollouts", many=True, description="examples to distil on")
    student: dict[str, Any] = Field(
        {"d_model": 64, "layers": 2},
        description="student architecture "
        "(ops.model.build_model keys: arch, d_model, layers, heads, kv_heads, ...); ignored with student_init",
    )
    student_init: str | None = ref(
        *MODEL,
        optional=True,
        description="start the student from this (smaller, pretrained) model instead of a random "
        "`student` architecture; it must use the teacher's tokenizer",
    )
    prune: PruneConfig | None = Field(
        None,
        description="start the student by pruning the teacher (Minitron): keep the most important "
        "layers / residual channels / MLP neurons by activations on the distillation data; "
        "instead of `student` or `student_init`",
    )
    mode: Literal["logit", "sequence"] = Field(
        "logit",
        description="'logit': KL to the teacher's softened "
        "distribution mixed with CE; 'sequence': SFT on teacher samples",
    )
    temperature: float = Field(2.0, gt=0, description="softening temperature T (loss scaled by T^2)")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the KD term; 1 - alpha on cross-entropy")
    steps: int = Field(300, ge=1, description="optimizer updates")
    lr: float = Field(2e-3, gt=0, description="learning rate")
    batch_size: int = Field(32, ge=1, description="examples per update")
    seed: int = Field(0, description="student initialisation and order seed")
    eval_problems: int = Field(100, ge=0, description="held-out problems for teacher and student accuracy")
    max_new_tokens: int = Field(96, ge=1, description="generation budget (evaluation and teacher samples)")
    max_examples: int | None = Field(
        None,
        ge=1,
        description="distil on only the first N examples of `data`, in the order its stages are listed",
    )
    ckpt_every: int = run_option(
        100,
        ge=0,
        description="checkpoint every N steps (and at the end) in the work directory; 0 = at the end",
    )
    keep_last: int = run_option(2, ge=1, description="checkpoints kept in the work directory")


def _validate_distill(cfg, refs):
    errs = []
    if cfg.prune is not None:
        if cfg.student_init:
            errs.append(
                ("prune", "give either prune (start from the pruned teacher) or student_init, not both")
            )
        if cfg.prune.layers is None and cfg.prune.d_model is None and cfg.prune.ffn is None:
            errs.append(("prune", "name at least one of layers, d_model, ffn to prune"))
    return errs


def _run_distill(run: StageRun) -> StageResult:
    from ops.model import build_model, count_params, save_model
    from ops.posttrain.common import examples_from_artifact
    from ops.posttrain.distill import DistillParams, teacher_samples, train_distill
    from ops.posttrain.sft import SFTParams

    c: DistillConfig = run.config
    _check_template(run, "teacher")
    teacher, tok = _load_policy(run, "teacher")
    # the student's size is checked before any sampling or training (an oversized student is a config error)
    s_field = "student_init" if c.student_init else "prune" if c.prune else "student"
    prune_sizes = c.prune.model_dump(exclude={"calibration_batches"}) if c.prune else {}
    if c.prune:  # the pruned student is built after the data are read (importance is measured on them)
        from ops.posttrain.prune import pruned_params

        try:
            n_s = pruned_params(teacher, **prune_sizes)
        except ValueError as e:
            raise PostTrainError(f"stage {run.stage!r}, field 'prune': {e}") from None
    elif c.student_init:
        student, s_tok = _load_policy(run, "student_init")
        if s_tok.get_vocab() != tok.get_vocab():
            raise PostTrainError(
                f"stage {run.stage!r}, field 'student_init': {run.input('student_init').path} uses a different "
                f"tokenizer than the teacher {run.input('teacher').path}; distillation needs a shared vocabulary"
            )
        n_s = count_params(student)
    else:
        try:
            student = build_model(
                c.student, len(tok), seed=c.seed, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
            )
        except ValueError as e:
            raise PostTrainError(f"stage {run.stage!r}, field 'student': {e}") from None
        n_s = count_params(student)
    n_t = count_params(teacher)
    if n_s * 2 > n_t:
        raise PostTrainError(
            f"stage {run.stage!r}, field {s_field!r}: {n_s:,} parameters is more than half the teacher's "
            f"{n_t:,} (limit {n_t // 2:,}); make d_model/layers{'/ffn' if c.prune else ''} smaller"
        )
    examples = []
    for a in run.inputs.get("data", []):
        examples += examples_from_artifact(a.produces, a.path)
    examples = examples[: c.max_examples]
    if c.mode == "sequence":
        examples = teacher_samples(
            teacher, tok, sorted({e.question for e in examples}), max_new_tokens=c.max_new_tokens
        )
    if not examples:
        raise PostTrainError(f"stage {run.stage!r}, field 'data': no examples")
    ev = _eval_tasks(run, ("data",), c.eval_problems)
    sp = SFTParams(
        steps=c.steps,
        lr=c.lr,
        batch_size=c.batch_size,
        seed=c.seed,
        ckpt_every=c.ckpt_every,
        keep_last=c.keep_last,
    )
    prune_md: dict[str, Any] = {}
    if c.prune:
        from ops.posttrain.prune import importance_on, prune

        # importance from the teacher's activations on the data the student is distilled on
        imp = importance_on(teacher, tok, examples, sp, c.prune.calibration_batches)
        student, kept = prune(teacher, imp, **prune_sizes)
        pruning = {"sizes": prune_sizes, **kept, "block_influence": imp["block_influence"]}
        prune_md = {
            "pruned_layers_kept": json.dumps(kept["layers"]),
            "block_influence": json.dumps([round(x, 4) for x in imp["block_influence"]]),
            "calibration_tokens": imp["tokens"],
            "accuracy_after_pruning": _accuracy(student, tok, ev, 0, c.max_new_tokens).get("eval_accuracy"),
        }
    info = train_distill(
        student,
        teacher,
        tok,
        examples,
        DistillParams(c.mode, c.temperature, c.alpha, sp),
        work_dir=run.work,
        fingerprint={"stage_version": run.version},
        log=run.log,
    )
    save_model(student, tok, run.out)
    if c.prune:
        # which layers, channels and neurons of the teacher the student started from
        (run.out / "pruning.json").write_text(json.dumps(pruning))
    _keep_training_state(run)
    t_acc = _accuracy(teacher, tok, ev, 0, c.max_new_tokens)
    s_acc = _accuracy(student, tok, ev, 0, c.max_new_tokens)
    # The share of the teacher's accuracy the student keeps is undefined when the teacher scores 0: reported
    # as missing (None) and the check fails, rather than a huge ratio.
    t_a = t_acc.get("eval_accuracy") or 0.0
    keep = s_acc.get("eval_accuracy", 0.0) / t_a if ev and t_a > 0 else None
    metrics = {
        "student_params": n_s,
        "teacher_params": n_t,
        "param_ratio": n_s / n_t,
        "teacher_accuracy": t_acc.get("eval_accuracy"),
        "student_accuracy": s_acc.get("eval_accuracy"),
        "accuracy_kept": keep,
        "final_loss": info["losses"][-1],
        "examples": info["examples"],
        **prune_md,
    }
    md = _write_curve(run.out, info["curve"], ["loss", "kl", "ce"])
    return StageResult(
        metrics=metrics,
        metadata=md,
        checks=[
            CheckOutcome("student_smaller", n_s * 2 <= n_t, f"student {n_s} params vs teacher {n_t}"),
            CheckOutcome(
                "keeps_accuracy",
                keep is not None and keep >= 0.8,
                f"student keeps {keep:.2f} of the teacher's accuracy"
                if keep is not None
                else "undefined: the teacher scored 0 on the held-out problems",
            ),
        ],
    )


DISTILL = register(
    StageKind(
        name="distill",
        config=DistillConfig,
        produces="model",
        run=_run_distill,
        validate=_validate_distill,
        pool="gpu",
        description="Distil a teacher into a smaller student (logit KD with temperature, or SFT on teacher samples)",
        checks=(
            CheckSpec("student_smaller", "student has at most half the teacher's parameters"),
            CheckSpec("keeps_accuracy", "student keeps >= 80% of the teacher's accuracy"),
        ),
    )
)


# ------------------------------------------------------------------------------------------ merge
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


def _run_merge(run: StageRun) -> StageResult:
    from ops.model import save_model
    from ops.posttrain.merge import merge_models

    c: MergeConfig = run.config
    _check_template(run, "models")
    arts = run.inputs.get("models", [])
    if len(arts) < 2:
        raise PostTrainError(f"stage {run.stage!r}, field 'models': merging needs at least two models")
    w = c.weights or [1.0 / len(arts)] * len(arts)
    if len(w) != len(arts):
        raise PostTrainError(f"stage {run.stage!r}, field 'weights': {len(w)} weights for {len(arts)} models")
    loaded = [_load_policy(run, "models", a) for a in arts]
    base = _load_policy(run, "base")[0] if run.inputs.get("base") else None
    if c.method == "task_arithmetic" and base is None:
        raise PostTrainError(f"stage {run.stage!r}, field 'base': task_arithmetic needs a base model")
    try:
        merged = merge_models([m for m, _ in loaded], [a.stage for a in arts], w, c.method, base)
    except ValueError as e:
        raise PostTrainError(f"stage {run.stage!r}, field 'models': {e}") from None
    tok = loaded[0][1]
    save_model(merged, tok, run.out)
    metrics: dict[str, Any] = {"models": len(arts)}
    ev = _eval_tasks(run, ("eval_tasks",), c.eval_problems)
    rows = []
    for (m, _), a in zip(loaded, arts):
        acc = _accuracy(m, tok, ev, 0, 96)
        rows.append({"model": a.stage, **acc})
    acc = _accuracy(merged, tok, ev, 0, 96)
    rows.append({"model": "merged", **acc})
    metrics.update({f"merged_{k}": v for k, v in acc.items()})
    return StageResult(metrics=metrics, metadata={"accuracy": Table(rows)} if ev else {})


MERGE = register(
    StageKind(
        name="merge",
        config=MergeConfig,
        produces="model",
        run=_run_merge,
        description="Linear or task-arithmetic merge of same-architecture checkpoints (Kimi's long-to-short)",
    )
)
