"""SFT tokens/s on an imported tiny Llama and Qwen2 checkpoint: lmforge's ``train_sft`` vs TRL's
``SFTTrainer`` on the same model, examples, batch shape and step count, in the same process.

``run(out_dir) -> dict``. Key design choice: each architecture is a ``save_pretrained`` directory the way a
user's checkpoint looks (safetensors, config, a byte-level BPE tokenizer with the family's special tokens and
chat template: Llama 3's header/``<|eot_id|>`` format, Qwen's ChatML with a default system turn), built here
from generated task text (nothing is downloaded), then imported through lmforge's path (``ops.hf_import``:
checks, content hashes, verified copy) and loaded with ``load_policy``, the loader every post-training kind
uses. Both sides get a fresh load of that same artifact in every round, so the initial weights are identical.
Throughput counts the same tokens on both sides, the non-pad input tokens of each step (attention-mask
sum), over the steps after the first two (warm-up), timed from the start of one step's loss to the start of
the next step's loss (batch building, forward, backward, clipping, optimiser step and logging all fall in the
interval). Rounds alternate ours, TRL, TRL, ours per architecture and the best round of each side counts, so
a load change on the shared machine hits both sides. TRL is a bench-only extra (``pip install
lmforge[bench]``); a failure to import or run it is reported in the result instead of a number.

Same on both sides: fp32 on the CPU, ``THREADS`` torch threads, batch of ``BATCH`` conversations, no packing,
right padding to the longest row of the batch (TRL's default collator; lmforge's ``collate``), loss on the
assistant tokens only (TRL: prompt/completion conversations, ``completion_only_loss``), AdamW with the same
lr, betas (0.9, 0.95), weight decay 0, gradient clip 1.0, cosine schedule with the same warm-up, a log record
every step, no activation checkpointing (TRL's ``SFTConfig`` turns it on by default, which recomputes every
layer's forward in the backward; one extra TRL round per architecture with that default is reported beside the
headline ratio, as ``ratio_vs_trl_default_checkpointing``). What differs, as each trainer allows: TRL
tokenizes prompt + completion as one string and its completion ends with the template's text after the turn
end (``<|im_end|>\\n`` for ChatML: one token more per example than lmforge, which ends at ``<|im_end|>``); TRL
shuffles with its own sampler, so the batches hold other examples (hence tokens/s, not step time); TRL's loss
runs its chunked fused LM head and also computes entropy and top-1 accuracy for its metrics; lmforge's applies
the head only at labelled positions.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

THREADS, BATCH, STEPS, WARM, MAX_LEN, N_EXAMPLES = 1, 16, 30, 2, 256, 512
LR, WARMUP, VOCAB = 5e-4, 2, 1000
SHAPE = {
    "hidden_size": 128,
    "intermediate_size": 344,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}

FAMILIES = ("llama", "qwen2")


def _checkpoint(family: str, texts: list[str], out: Path) -> Path:
    """A user-style checkpoint directory: random init (seed 0), tokenizer with the family's chat template;
    built by the same code as the import tests' checkpoints, at this benchmark's vocabulary and shape."""
    from testkit.hf_checkpoints import write_checkpoint

    return write_checkpoint(family, out, shape=SHAPE, texts=texts, vocab_size=VOCAB, max_len=1024)


def _import(src: Path, out: Path) -> Path:
    """lmforge's import path for a local checkpoint: refusals, content identity, verified copy."""
    from ops.hf_import import HashCache, content_identity, copy_checkpoint, problems

    bad = problems(src)
    if bad:
        raise RuntimeError(f"import refused {src}: {bad}")
    copy_checkpoint(src, out, content_identity(src, HashCache(out.parent / "sha256")))
    return out


def _throughput(marks: list[tuple[float, int]]) -> dict:
    """tokens/s over the steps after ``WARM``; ``marks`` = (start time, non-pad tokens) of each step."""
    timed = marks[WARM:]
    dt = timed[-1][0] - timed[0][0]
    toks = sum(n for _, n in timed[:-1])
    return {
        "tokens_per_s": toks / dt,
        "step_s": dt / (len(timed) - 1),
        "tokens_per_step": toks / (len(timed) - 1),
    }


def _ours(model_dir: Path, examples) -> dict:
    from unittest import mock

    import ops.posttrain.sft as sft
    from ops.posttrain.common import load_policy

    model, tok = load_policy(model_dir)
    marks: list[tuple[float, int]] = []
    inner = sft.sft_loss_fn

    def timed_loss(m, batch):
        marks.append((time.perf_counter(), int(batch["attention_mask"].sum())))
        return inner(m, batch)

    p = sft.SFTParams(steps=STEPS, lr=LR, batch_size=BATCH, max_len=MAX_LEN, warmup_steps=WARMUP)
    with mock.patch.object(sft, "sft_loss_fn", timed_loss):
        _, _, info = sft.train_sft(model, tok, examples, p, work_dir=None, log=lambda s: None)
    if len(marks) != STEPS:
        raise RuntimeError(f"expected {STEPS} loss calls, saw {len(marks)}")
    return {
        **_throughput(marks),
        "first_loss": info["losses"][0],
        "dropped_too_long": info["dropped_too_long"],
    }


def _trl(model_dir: Path, examples, tmp: Path, *, checkpointing: bool = False) -> dict:
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from ops.posttrain.common import load_policy

    model, tok = load_policy(model_dir)
    ds = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": e.question}],
                "completion": [{"role": "assistant", "content": e.response}],
            }
            for e in examples
        ]
    )
    marks: list[tuple[float, int]] = []

    class Timed(SFTTrainer):
        def training_step(self, model, inputs, *a, **kw):
            marks.append((time.perf_counter(), int(inputs["attention_mask"].sum())))
            return super().training_step(model, inputs, *a, **kw)

    cfg = SFTConfig(
        output_dir=str(tmp / "trl"),
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        learning_rate=LR,
        warmup_steps=WARMUP,
        lr_scheduler_type="cosine",
        adam_beta1=0.9,
        adam_beta2=0.95,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        activation_checkpointing=checkpointing,  # TRL's default is on; lmforge's SFT default is off
        max_length=MAX_LEN,
        packing=False,
        padding_free=False,
        completion_only_loss=True,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        fp16=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    tr = Timed(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    # a log record every step, as lmforge's, but not printed (lmforge's log is a no-op here)
    tr.remove_callback(PrinterCallback)
    tr.train()
    if len(marks) != STEPS:
        raise RuntimeError(f"expected {STEPS} training steps, saw {len(marks)}")
    losses = [x["loss"] for x in tr.state.log_history if "loss" in x]
    return {**_throughput(marks), "first_loss": losses[0] if losses else None}


def _best(rounds: list[dict]) -> dict:
    return max(rounds, key=lambda r: r["tokens_per_s"])


def run(out_dir: str | Path) -> dict:
    import tempfile

    import torch

    from ops.posttrain.common import Example
    from ops.tasks import make_splits
    from testkit.hf_checkpoints import task_texts

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    torch.set_num_threads(THREADS)
    train, _ = make_splits(N_EXAMPLES, 10, seed=0, difficulties=(1, 2))
    examples = [Example(t.id, t.question, t.response, t.answer) for t in train]
    texts = task_texts(N_EXAMPLES, seed=0)
    res: dict = {
        "threads": THREADS,
        "batch_size": BATCH,
        "steps": STEPS,
        "timed_steps": STEPS - WARM - 1,
        "max_len": MAX_LEN,
        "examples": len(examples),
        "shape": SHAPE,
        "load_avg_start": list(os.getloadavg()),
    }
    try:
        import trl

        res["trl_version"] = trl.__version__
    except Exception as e:  # noqa: BLE001 - the honest answer when TRL is not installed
        res["trl_error"] = f"{type(e).__name__}: {e}"
    lines = ["| arch | lmforge tok/s | TRL tok/s | ratio | notes |", "|---|---|---|---|---|"]
    for family in FAMILIES:
        src = _checkpoint(family, texts, tmp / f"{family}-src")
        model_dir = _import(src, tmp / f"{family}-imported")
        r: dict = {"parameters": _load(model_dir).num_parameters()}
        ours_rounds, trl_rounds = [], []
        for side in ("ours", "trl", "trl", "ours"):
            if side == "ours":
                ours_rounds.append(_ours(model_dir, examples))
            elif "trl_error" not in res and "trl_error" not in r:
                try:
                    trl_rounds.append(_trl(model_dir, examples, tmp))
                except Exception as e:  # noqa: BLE001 - reported in the result instead of a number
                    r["trl_error"] = f"{type(e).__name__}: {e}"
                    r["trl_traceback"] = traceback.format_exc()[-2000:]
        if trl_rounds:
            # one more round with TRL's own default (activation checkpointing on): what a user gets out of the box
            try:
                r["trl_default_checkpointing"] = _trl(model_dir, examples, tmp, checkpointing=True)
            except Exception as e:  # noqa: BLE001 - reported in the result instead of a number
                r["trl_default_checkpointing_error"] = f"{type(e).__name__}: {e}"
        r["lmforge_rounds"] = ours_rounds
        r["lmforge"] = _best(ours_rounds)
        if trl_rounds:
            r["trl_rounds"] = trl_rounds
            r["trl"] = _best(trl_rounds)
            r["ratio_tokens_per_s"] = r["lmforge"]["tokens_per_s"] / r["trl"]["tokens_per_s"]
            if "trl_default_checkpointing" in r:
                r["ratio_vs_trl_default_checkpointing"] = (
                    r["lmforge"]["tokens_per_s"] / r["trl_default_checkpointing"]["tokens_per_s"]
                )
            lines.append(
                f"| {family} | {r['lmforge']['tokens_per_s']:.0f} | {r['trl']['tokens_per_s']:.0f} | "
                f"{r['ratio_tokens_per_s']:.2f}x | {r['lmforge']['tokens_per_step']:.0f} / "
                f"{r['trl']['tokens_per_step']:.0f} tokens/step; vs TRL with its default activation "
                f"checkpointing {r.get('ratio_vs_trl_default_checkpointing', float('nan')):.2f}x |"
            )
        else:
            err = r.get("trl_error") or res.get("trl_error", "")
            lines.append(f"| {family} | {r['lmforge']['tokens_per_s']:.0f} | - | - | {err[:120]} |")
        res[family] = r
    res["load_avg_end"] = list(os.getloadavg())
    (out / "bench_sft.json").write_text(json.dumps(res, indent=1))
    (out / "bench_sft.md").write_text("\n".join(lines) + "\n")
    return res


def _load(model_dir: Path):
    from ops.posttrain.common import load_policy

    return load_policy(model_dir)[0]


if __name__ == "__main__":
    print(json.dumps(run("bench_out"), indent=1)[:3000])
