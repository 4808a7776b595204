"""Causal-LM pretraining on packed token shards: the objective (batch, loss, eval) and one job runner.

Key design choice: ``run_pretraining(job)`` is the single entry for both launchers. In-process it is called
by the ``pretrain`` stage; under torchrun every rank calls it from ``resources/train_entry.py`` after
``init_process_group``. The job is a plain JSON-able dict, so what a rank runs is exactly what the stage
planned. Only rank 0 writes the model directory, the training state copy and ``result.json``.

Batches are a pure function of ``(seed, step, micro)``: each optimizer step draws ``batch_size`` random windows
of ``seq_len + 1`` tokens from the train stream (documents are packed, separated by ``<|endoftext|>``); rank
``r`` of ``w`` takes rows ``[r*B/w, (r+1)*B/w)``, so any world size sees the same global batch.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

DEFAULT_PROMPTS = ["The ", "In Python, ", "A function ", "The following example "]


def lm_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, float]]:
    """Mean next-token cross-entropy (fp32 logits) + the router auxiliary loss of MoE models.

    A plain fp32 model in one process takes the head fused with the log-softmax (``ops.fused_head``): the same
    loss and gradients up to float rounding, without the ``[tokens, vocabulary]`` logits; under autocast or in
    bf16 its head's logits go through the plain cross-entropy; a compiled, wrapped or MoE model keeps its own
    forward."""
    import torch.nn.functional as F

    fused = _fused_ce(model, batch)
    if fused is not None:
        return fused, {"tokens": batch["labels"].numel()}
    out = model(input_ids=batch["input_ids"])
    logits = out.logits.float()
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch["labels"].reshape(-1))
    stats = {"tokens": batch["labels"].numel()}
    aux = getattr(out, "aux_loss", None)
    if aux is not None:
        coef = float(getattr(_unwrap(model).config, "router_aux_loss_coef", 0.0))
        stats["aux_loss"] = float(aux.detach())
        return ce + coef * aux, {**stats, "ce": float(ce.detach())}
    return ce, stats


def _fused_ce(model: Any, batch: dict[str, Any]) -> Any:
    """The mean cross-entropy from the decoder's hidden states and the head (fused where
    :func:`ops.fused_head.fused_ok`), or None for a model that must run its own forward."""
    import torch.nn.functional as F

    from ops.fused_head import fused_ok, head_logprobs
    from ops.losses import IGNORE
    from ops.posttrain.common import decoder_and_head

    if _unwrap(model) is not model or getattr(getattr(model, "config", None), "output_router_logits", False):
        return None
    parts = decoder_and_head(model)
    if parts is None:
        return None
    decoder, head = parts
    hidden = decoder(input_ids=batch["input_ids"]).last_hidden_state
    h, y = hidden.reshape(-1, hidden.shape[-1]), batch["labels"].reshape(-1)
    if not fused_ok(h, head):
        return F.cross_entropy(head(h).float(), y)
    keep = y != IGNORE
    if not bool(keep.all()):
        h, y = h[keep], y[keep]
    return -head_logprobs(h, head.weight, y).mean()


def _unwrap(m: Any) -> Any:
    """The transformers model under torch.compile / DDP wrappers."""
    while True:
        inner = getattr(m, "_orig_mod", None) or getattr(m, "module", None)
        if inner is None:
            return m
        m = inner


def make_batch_fn(
    stream: Any, *, batch_size: int, seq_len: int, seed: int, rank: int, world: int, device: Any
):
    import torch

    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} is not divisible by the number of ranks {world}")
    per = batch_size // world

    def batch_fn(step: int, micro: int) -> dict[str, Any]:
        w = stream.random_windows(batch_size, seq_len + 1, key=(seed, step, micro))[
            rank * per : (rank + 1) * per
        ]
        t = torch.from_numpy(w).to(device)
        return {"input_ids": t[:, :-1], "labels": t[:, 1:]}

    return batch_fn


def evaluate_lm(
    model: Any, stream: Any, *, seq_len: int, max_tokens: int, batch_size: int, device: Any
) -> dict:
    """Validation loss (nats/token) and bits per byte over fixed non-overlapping windows of the val split.

    Bits/byte counts only targets that decode to bytes (special tokens such as <|endoftext|> carry none).
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    nll_sum, n_tok, nll_bytes, n_bytes = 0.0, 0, 0.0, 0
    tb = (
        torch.from_numpy(np.asarray(stream.token_bytes, dtype=np.int64))
        if stream.token_bytes is not None
        else None
    )
    wins = list(stream.sequential_windows(seq_len, max_tokens))
    if not wins:
        return {}
    for i in range(0, len(wins), batch_size):
        chunk = wins[i : i + batch_size]
        for w in _same_length_groups(chunk):
            t = torch.from_numpy(np.stack(w)).to(device)
            logits = model(input_ids=t[:, :-1]).logits.float()
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), t[:, 1:].reshape(-1), reduction="none")
            nll_sum += float(nll.sum())
            n_tok += nll.numel()
            if tb is not None:
                b = tb[t[:, 1:].reshape(-1).cpu()]
                mask = (b > 0).to(nll.device)
                nll_bytes += float((nll * mask).sum())
                n_bytes += int(b.sum())
    out = {"val_loss": nll_sum / n_tok, "val_tokens": n_tok}
    if n_bytes:
        out["val_bpb"] = nll_bytes / math.log(2) / n_bytes
    return out


def _same_length_groups(ws: list[Any]) -> list[list[Any]]:
    groups: dict[int, list[Any]] = {}
    for w in ws:
        groups.setdefault(len(w), []).append(w)
    return list(groups.values())


def sample_generations(
    model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int, device: Any, seed: int = 0
) -> list[dict[str, Any]]:
    """Greedy continuations of fixed prompts (deterministic: the same weights give the same text)."""
    import torch

    model.eval()
    rows = []
    for p in prompts:
        ids = tokenizer(p, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        rows.append(
            {"prompt": p, "completion": tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=False)}
        )
    return rows


def run_pretraining(job: dict[str, Any], *, log=print, on_log=None, progress: bool = True) -> dict[str, Any]:
    """Train one model as described by ``job`` (built by the ``pretrain`` stage); returns the result dict.

    Job keys: tokens_dir, tokenizer_dir, out_dir, work_dir, arch, train (TrainConfig fields), seq_len,
    batch_size, eval_tokens, eval_batch_size, prompts, sample_tokens, seed, device, fingerprint,
    flops_per_token, peak_flops, threads.
    """
    import torch

    from ops.model import build_model, count_params, save_model
    from ops.tokenizer import load_tokenizer
    from ops.tokens import TokenStream

    from .core import TrainConfig, dist_info, full_model_state, train

    rank, world = dist_info()
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    device = torch.device(_device(job.get("device", "auto"), rank))
    tokenizer = load_tokenizer(job["tokenizer_dir"])
    train_stream = TokenStream(Path(job["tokens_dir"]), "train")
    val_stream = TokenStream(Path(job["tokens_dir"]), "val")
    vocab = len(tokenizer)
    if train_stream.vocab_size != vocab:
        raise ValueError(
            f"token shards were made with a vocabulary of {train_stream.vocab_size}, "
            f"the tokenizer has {vocab}"
        )
    model = build_model(
        job["arch"],
        vocab,
        seed=job["seed"],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        device=str(device),
    )
    cfg = TrainConfig(**{**job["train"], "betas": tuple(job["train"].get("betas", (0.9, 0.95)))})
    batch_fn = make_batch_fn(
        train_stream,
        batch_size=job["batch_size"],
        seq_len=job["seq_len"],
        seed=job["seed"],
        rank=rank,
        world=world,
        device=device,
    )
    eval_fn = None
    if len(val_stream) > 1:

        def eval_fn(m: Any, step: int) -> dict[str, Any]:
            return evaluate_lm(
                m,
                val_stream,
                seq_len=job["seq_len"],
                max_tokens=job["eval_tokens"],
                batch_size=job.get("eval_batch_size", 16),
                device=device,
            )

    t0 = time.perf_counter()
    outcome = train(
        model,
        lm_loss,
        batch_fn,
        cfg,
        work_dir=Path(job["work_dir"]),
        fingerprint=job["fingerprint"],
        eval_fn=eval_fn,
        log=log,
        flops_per_token=job.get("flops_per_token"),
        peak_flops=job.get("peak_flops"),
        progress=progress,
        on_log=on_log,
    )
    wall = time.perf_counter() - t0
    result: dict[str, Any] = {}
    if cfg.fsdp and world > 1:
        # Sharded parameters are gathered by every rank; rank 0 saves and samples from an unsharded copy,
        # so the artifact is a plain transformers directory.
        state = full_model_state(model)
        if rank == 0:
            model = build_model(
                job["arch"],
                vocab,
                seed=job["seed"],
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                device=str(device),
            )
            model.load_state_dict(state, strict=True)
    if rank == 0:
        out = Path(job["out_dir"])
        save_model(model, tokenizer, out)
        if (
            outcome.last_checkpoint is not None
        ):  # resumable state beside the weights (never read by from_pretrained)
            shutil.copytree(outcome.last_checkpoint, out / "training_state", dirs_exist_ok=True)
        gens = sample_generations(
            model,
            tokenizer,
            job.get("prompts") or DEFAULT_PROMPTS,
            max_new_tokens=job.get("sample_tokens", 48),
            device=device,
        )
        result = {
            "curve": outcome.curve,
            "losses": outcome.losses,
            "spikes": outcome.spikes,
            "steps_done": outcome.steps_done,
            "resumed_from": outcome.resumed_from,
            "tokens": outcome.tokens,
            "train_wall_s": wall,
            "final_eval": outcome.final_eval,
            "params": count_params(model),
            "generations": gens,
            "world_size": world,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        }
        (Path(job["work_dir"]) / "result.json").write_text(json.dumps(result))
    return result


def _file_sha(p: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def resume_fingerprint(tokens_dir: Path, tokenizer_dir: Path) -> dict[str, Any]:
    """What a pretraining checkpoint must agree with to be resumed: data, tokenizer and training code bytes
    (``ops/train``, ``ops/model.py``, ``ops/tokens.py``), torch and transformers versions."""
    import hashlib

    import torch
    import transformers

    from ops.tokens import shard_files

    meta = json.loads((tokens_dir / "meta.json").read_text())
    shards = [f for split in ("train", "val") for f in shard_files(tokens_dir, split, meta)]
    code = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for f in sorted([*(code / "train").glob("*.py"), code / "model.py", code / "tokens.py"]):
        h.update(f.read_bytes())
    return {
        "tokens_meta": _file_sha(tokens_dir / "meta.json"),
        "tokens_shards": hashlib.sha256("".join(_file_sha(s) for s in shards).encode()).hexdigest()[:16],
        "tokenizer": _file_sha(tokenizer_dir / "tokenizer.json"),
        "code": h.hexdigest()[:16],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _device(spec: str, rank: int) -> str:
    import os

    import torch

    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return "cpu"
    local = int(os.environ.get("LOCAL_RANK", rank))
    return f"cuda:{local}"
