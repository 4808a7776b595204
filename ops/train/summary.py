"""Summary figures of a finished pretraining run, from the ``result`` dict ``run_pretraining`` returns.

Key design choice: everything here reads what the run already wrote (the result's curve, losses, spikes and
sample generations, the saved model directory) and never trains or changes it, so the ``pretrain`` stage
reports the same figures whichever launcher ran the job. The curve's numbers are written as Parquet next to
the plot; the reload probe runs the saved directory exactly as a user would load it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def write_curve_table(curve: list[dict[str, Any]], path: Path) -> None:
    """The curve records as one Parquet table: a column per key (``step`` first), numbers as floats."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{k: (float(v) if isinstance(v, int | float) else v) for k, v in r.items()} for r in curve]
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "step", k))
    pq.write_table(pa.table({k: [r.get(k) for r in rows] for k in keys}), path)


def plot_loss_curve(result: dict[str, Any], path: Path, title: str) -> None:
    """Train loss per step, val loss at each evaluation, loss spikes as red lines; a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    losses = result["losses"]
    ax.plot(range(1, len(losses) + 1), losses, lw=0.8, alpha=0.7, label="train loss")
    ev = [(r["step"], r["val_loss"]) for r in result["curve"] if "val_loss" in r]
    if ev:
        ax.plot(*zip(*ev), "o-", label="val loss")
    for s in result["spikes"]:
        ax.axvline(s["step"], color="red", alpha=0.3, lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def corpus_word_frac(gens: list[dict[str, Any]], stream_tokens: Any, tokenizer: Any) -> float:
    """Fraction of words in the generations that occur in (the first 200k tokens of) the training text."""
    vocab = set(re.findall(r"[A-Za-z]{2,}", tokenizer.decode(list(map(int, stream_tokens[:200_000])))))
    words = [w for g in gens for w in re.findall(r"[A-Za-z]{2,}", g["completion"])]
    return sum(w in vocab for w in words) / len(words) if words else 0.0


def reload_probe(model_dir: Path, tokens: Any) -> bool:
    """Whether the saved directory loads with ``from_pretrained`` and gives finite logits on ``tokens``."""
    import numpy as np
    import torch

    from ops.model import load_model

    reloaded = load_model(model_dir)
    with torch.no_grad():
        probe = torch.from_numpy(np.asarray(tokens, dtype=np.int64))[None]
        ok = bool(torch.isfinite(reloaded(input_ids=probe).logits).all())
    del reloaded
    return ok


def pretrain_metrics(
    result: dict[str, Any], plan: Any, val_entropy: float, word_frac: float
) -> dict[str, Any]:
    """The stage metrics of a run planned by ``plan`` (an ``ops.planner.Plan``): size, tokens, losses, the
    final val loss against the unigram entropy ``val_entropy`` of the val tokens, throughput, FLOPs
    (estimated and actual), spikes, resume, world size and ``word_frac`` (:func:`corpus_word_frac`)."""
    import numpy as np

    final = result.get("final_eval") or {}
    val_loss = final.get("val_loss", float("nan"))
    ratio = val_loss / val_entropy if val_entropy and val_entropy == val_entropy else float("nan")
    tokens_done = int(result["tokens"])
    tps = [r["tokens_per_s"] for r in result["curve"][1:] if "tokens_per_s" in r] or [0.0]
    metrics = {
        "params": int(result["params"]),
        "active_params": plan.active_params,
        "steps": result["steps_done"],
        "tokens": tokens_done,
        "final_train_loss": result["losses"][-1] if result["losses"] else None,
        "val_loss": val_loss,
        "val_bpb": final.get("val_bpb"),
        "val_unigram_entropy": val_entropy,
        "val_loss_vs_unigram": ratio,
        "tokens_per_s": float(np.median(tps)),
        "flops_estimated": plan.flops,
        "flops_actual": plan.flops_per_token * tokens_done,
        "est_seconds": plan.est_seconds,
        "train_wall_s": result["train_wall_s"],
        "spikes": len(result["spikes"]),
        "resumed_from": result["resumed_from"] or 0,
        "world_size": result["world_size"],
        "generation_corpus_word_frac": word_frac,
    }
    mfu = [r["mfu"] for r in result["curve"] if "mfu" in r]
    if mfu:
        metrics["mfu"] = float(np.median(mfu))
    return metrics


def losses_finite(result: dict[str, Any]) -> bool:
    """Every training loss and the final val loss are finite."""
    import numpy as np

    val_loss = (result.get("final_eval") or {}).get("val_loss", float("nan"))
    return bool(all(np.isfinite(result["losses"])) and val_loss == val_loss)
