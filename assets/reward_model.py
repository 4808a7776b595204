"""Stage kind ``reward_model``: a Bradley-Terry reward model on preference pairs (``ops.posttrain.rm``).

Key design choice: two heads behind one config. ``classifier`` trains a score head at the last token and
the trunk (a sequence-classification checkpoint); ``likelihood`` keeps the trunk untrained and fits one
scale on its mean log-likelihood of the response (a causal-LM checkpoint + ``reward.json``). Pairs come
from pairs artifacts, samples paired correct-vs-incorrect, or a user Parquet file checked when the spec is
compiled; both heads are judged on held-out prompts against chance and a length-only baseline.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from ops.train.optim import OptimConfig, optim_field

from .posttrain import (
    MODEL,
    PostTrainError,
    check_template,
    ckpt_every,
    collect_pairs,
    keep_last,
    keep_training_state,
    load_policy,
    pairs_path_fingerprint,
    pairs_path_problems,
    params,
    plot_metadata,
    write_curve,
)
from .registry import CheckOutcome, CheckSpec, StageConfig, StageKind, StageResult, StageRun, ref, register


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
    lr: float = Field(1e-3, gt=0, description="peak learning rate (classifier head)")
    optim: OptimConfig = optim_field()
    batch_size: int = Field(32, ge=1, description="pairs per update (classifier head)")
    seed: int = Field(0, description="split and order seed")
    ckpt_every: int = ckpt_every(100)
    keep_last: int = keep_last()


def head_problems(cfg) -> list[tuple[str, str]]:
    if cfg.head != "likelihood":
        return []
    return [
        (f, f"head 'likelihood' does not train the trunk (it fits one scale); remove {f!r}")
        for f in ("steps", "lr", "batch_size")
        if f in cfg.model_fields_set
    ]


def validate(cfg, refs):
    errs = head_problems(cfg) + pairs_path_problems(cfg)
    if not (cfg.pairs or cfg.path):
        errs.append(("pairs", "no preference pairs: name pairs or sample stages, or a pairs file `path`"))
    return errs


def checks(acc: dict) -> list[CheckOutcome]:
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


def run(run: StageRun) -> StageResult:
    from ops.posttrain.rm import RMParams, init_reward_model, pair_accuracy, split_pairs, train_reward_model

    c: RewardModelConfig = run.config
    errs = head_problems(c)  # also when run directly, not through a compiled spec
    if errs:
        raise PostTrainError(f"stage {run.stage!r}, field {errs[0][0]!r}: {errs[0][1]}")
    check_template(run, "model")
    pairs = collect_pairs(run, "pairs", c.max_pairs_per_prompt, c.seed, c.path)
    train_p, held = split_pairs(pairs, c.held_out, c.seed)
    if not train_p:
        raise PostTrainError(
            f"stage {run.stage!r}, field 'pairs': no training pairs (need prompts with both a "
            "correct and an incorrect sample)"
        )
    lm, tok = load_policy(run, "model")
    if c.head == "likelihood":
        return run_likelihood(run, lm, tok, train_p, held)
    del lm  # the classifier is loaded with its new score head below
    rm = init_reward_model(run.input("model").path)
    rm.config.pad_token_id = tok.pad_token_id
    before = pair_accuracy(rm, tok, held)
    info = train_reward_model(
        rm,
        tok,
        train_p,
        params(RMParams, c),
        work_dir=run.work,
        fingerprint={"stage_version": run.version},
        log=run.log,
    )
    after = pair_accuracy(rm, tok, held)
    rm.save_pretrained(str(run.out), safe_serialization=True)
    tok.save_pretrained(str(run.out), save_jinja_files=False)
    keep_training_state(run)
    md = write_curve(run.out, info["curve"], ["loss", "accuracy"])
    metrics = {
        "train_pairs": len(train_p),
        "held_out_pairs": len(held),
        "held_out_accuracy": after["accuracy"],
        "held_out_accuracy_before": before["accuracy"],
        "length_baseline_accuracy": after["length_baseline"],
        "held_out_margin": after.get("margin", float("nan")),
        "final_loss": info["losses"][-1],
    }
    return StageResult(metrics=metrics, metadata=md, checks=checks(after))


def run_likelihood(run: StageRun, lm, tok, train_p, held) -> StageResult:
    from ops.eval.plots import reward_histogram
    from ops.posttrain.rm import fit_likelihood_reward, pair_accuracy

    rm, fit = fit_likelihood_reward(lm, tok, train_p)
    after = pair_accuracy(rm, tok, held, with_rewards=True)
    rm.save(tok, run.out)
    md: dict[str, Any] = {}
    if held:
        drawn = reward_histogram(run.out, after["chosen_rewards"], after["rejected_rewards"])
        md.update(plot_metadata("rewards", drawn))
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
    return StageResult(metrics=metrics, metadata=md, checks=checks(after))


REWARD_MODEL = register(
    StageKind(
        name="reward_model",
        config=RewardModelConfig,
        produces="model",
        run=run,
        pool="gpu",
        description="Bradley-Terry reward model on preference pairs: a sequence classifier (1 label) or a likelihood head",
        checks=(
            CheckSpec("beats_chance", "held-out pair accuracy above 60%"),
            CheckSpec("beats_length_baseline", "better than preferring the longer/shorter response"),
        ),
        validate=validate,
        fingerprint=pairs_path_fingerprint,
    )
)
