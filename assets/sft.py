"""Stage kind ``sft``: supervised fine-tuning of a chat model on worked solutions, SFT data or correct
rollouts (``ops.posttrain.sft``).

Key design choice: config -> one ``train_sft`` call -> a model artifact; the loss covers assistant tokens
only, examples longer than ``max_len`` are dropped and counted, and held-out problems of a tasks input are
scored at the end (greedy, optionally sampled).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ops.train.optim import OptimConfig, Precision, optim_field, precision_field

from .posttrain import (
    MODEL,
    AnswerFormatName,
    PostTrainError,
    PromptTemplate,
    accuracy,
    check_template,
    ckpt_every,
    eval_tasks,
    keep_last,
    keep_training_state,
    load_policy,
    params,
    prompt_template_field,
    samples_table,
    training_examples,
    write_curve,
)
from .registry import (
    CheckOutcome,
    CheckSpec,
    StageConfig,
    StageKind,
    StageResult,
    StageRun,
    empty_ref_problems,
    ref,
    register,
)


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
    lr: float = Field(2e-3, gt=0, description="peak learning rate (schedule after warm-up: optim.schedule)")
    batch_size: int = Field(32, ge=1, description="examples per update (rows when packing)")
    warmup_steps: int = Field(20, ge=0, description="linear warm-up updates")
    optim: OptimConfig = optim_field()
    precision: Precision = precision_field()
    max_len: int = Field(256, ge=8, description="examples longer than this (tokens) are dropped and counted")
    pack: bool = Field(False, description="pack several examples per row (block-diagonal attention, exact)")
    loss_mask: Literal["none", "wait_slips"] = Field(
        "none",
        description="'wait_slips': leave out of the loss what a Wait-style worked solution deliberately gets "
        "wrong (a verify or recheck trace's slipped results; a review or longhand trace's first chain from its "
        "first wrong step on, and the ' Wait' itself, so the model's own stop stays the plain chain and only a "
        "forced Wait starts a check); needs pack: false",
    )
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
    format: AnswerFormatName = Field(
        None,
        description="answer format worked solutions of tasks inputs are written in, and held-out answers "
        "scored in (think_answer, boxed, gsm8k, last_number, exact); default: each task set's own",
    )
    prompt_template: PromptTemplate = prompt_template_field()
    ckpt_every: int = ckpt_every(100)
    keep_last: int = keep_last()


def _validate(cfg: SFTConfig, refs: dict[str, str]) -> list[tuple[str, str]]:
    errs = empty_ref_problems(cfg, "data")
    if cfg.loss_mask != "none" and cfg.pack:
        errs.append(("loss_mask", f"{cfg.loss_mask} masks one example per row; set pack: false"))
    return errs


def _loss_spans(run: StageRun, examples: list) -> list | None:
    """Per example, the character spans of its response that ``loss_mask`` leaves out of the loss (None: none)."""
    if run.config.loss_mask == "none":
        return None
    from ops.solutions import wait_masked_spans

    spans = [wait_masked_spans(e.response) for e in examples]
    if not any(spans):
        raise PostTrainError(
            f"stage {run.stage!r}, field 'loss_mask': wait_slips, but no training example in "
            f"{[a.stage for a in run.inputs['data']]} has a Wait-style trace to mask (solution_style plain?)"
        )
    return spans


def run(run: StageRun) -> StageResult:
    import torch

    from ops.model import save_model
    from ops.posttrain.sft import SFTParams, packing_refusal, train_sft

    c: SFTConfig = run.config
    check_template(run, "model")
    examples = training_examples(run)
    if not examples:
        raise PostTrainError(
            f"stage {run.stage!r}, field 'data': no training examples in {[a.stage for a in run.inputs['data']]}"
        )
    torch.manual_seed(c.seed)
    model, tok = load_policy(run, "model")
    refusal = packing_refusal(model) if c.pack else None
    if refusal:
        raise PostTrainError(
            f"stage {run.stage!r}, field 'pack' (model from stage {run.input('model').stage!r}): {refusal}"
        )
    ev = eval_tasks(run, ("data",), c.eval_problems)
    p = params(SFTParams, c)
    spans = _loss_spans(run, examples)
    merged, peft_model, info = train_sft(
        model,
        tok,
        examples,
        p,
        work_dir=run.work,
        fingerprint={"stage_version": run.version},
        log=run.log,
        spans=spans,
    )
    save_model(merged, tok, run.out)
    if peft_model is not None:
        peft_model.save_pretrained(str(run.out / "adapter"))
    keep_training_state(run)
    acc = accuracy(merged, tok, ev, c.eval_samples, c.max_new_tokens)
    md = write_curve(run.out, info["curve"], ["loss", "lr"])
    if ev:
        md["samples"] = samples_table(merged, tok, ev, max_new=c.max_new_tokens)
    metrics = {
        "final_loss": info["losses"][-1],
        "examples": info["examples"],
        "dropped_too_long": info["dropped_too_long"],
        "trainable_params": info["trainable_params"],
        **({"masked_tokens": info["masked_tokens"]} if spans else {}),
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
        run=run,
        pool="gpu",
        validate=_validate,
        description="Supervised fine-tuning on chat examples (assistant-token loss, packing, full or LoRA)",
        checks=(
            CheckSpec("loss_finite", "training loss stayed finite", blocking=True),
            CheckSpec("answers_parse", ">= 90% of held-out responses contain a parsable answer (task set's format)"),
        ),
    )
)
