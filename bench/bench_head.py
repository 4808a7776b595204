"""The output head fused with the log-softmax (``ops.fused_head``) against the head's full logits and a separate
log-softmax, on the default pipeline's decoder (d=128, 4 layers, 2048 tokens).

Two figures, each a ratio of the two sides' times measured alternately in the same process (best of ``ROUNDS``;
forward and backward of the loss, no optimizer): a GRPO update's completion log-probabilities
(``ops.rl.common.completion_logprobs``; 32 prompts x a group of 8, 40-token prompts, 20-40-token completions)
and an SFT batch's loss (``ops.posttrain.sft.sft_loss_fn``; 64 rows of 90 tokens, the last 30 labelled). The
plain side is the same code with the fused path switched off, so the ratio is the fusion alone.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

from bench import best_alternating

ARCH = {"arch": "qwen2", "d_model": 128, "layers": 4, "heads": 4, "kv_heads": 2, "max_seq_len": 128}
VOCAB = 2048
ROUNDS = 5
STEPS = 4


def _rollout(prompts: int, group: int, gen):
    """GRPO-shaped samples: each prompt repeated ``group`` times, completions of 20-40 tokens."""
    import torch

    from ops.generate import Sample

    out = []
    for _ in range(prompts):
        prompt = torch.randint(2, VOCAB, (40,), generator=gen).tolist()
        for _ in range(group):
            n = int(torch.randint(20, 41, (1,), generator=gen))
            out.append(Sample(prompt, torch.randint(2, VOCAB, (n,), generator=gen).tolist(), True, "", []))
    return out


def run(out_dir: Path, rounds: int = ROUNDS, steps: int = STEPS, prompts: int = 32, sft_rows: int = 64) -> dict:
    import torch

    from ops import fused_head
    from ops.model import build_model
    from ops.posttrain.sft import sft_loss_fn
    from ops.rl.common import completion_logprobs, completion_tensors

    res: dict = {"threads": torch.get_num_threads()}
    model = build_model(ARCH, VOCAB, seed=0, pad_token_id=1, eos_token_id=0)
    gen = torch.Generator().manual_seed(0)
    t = completion_tensors(_rollout(prompts, 8, gen), 1, "cpu")
    ids = torch.randint(2, VOCAB, (sft_rows, 90), generator=gen)
    labels = ids.clone()
    labels[:, :60] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    res["grpo_rows"], res["sft_batch"] = int(t["comp_mask"].sum()), [sft_rows, 90]

    def grpo():
        model.zero_grad(set_to_none=True)
        (completion_logprobs(model, t) * t["comp_mask"]).sum().backward()

    def sft():
        model.zero_grad(set_to_none=True)
        sft_loss_fn(model, batch)[0].backward()

    def unfused(fn):
        def f():
            with mock.patch.object(fused_head, "fused_ok", lambda *a: False):
                fn()

        return f

    for name, fn in (("grpo_update", grpo), ("sft_step", sft)):
        best = best_alternating({"fused": fn, "plain": unfused(fn)}, rounds, steps)
        fused, plain = best["fused"], best["plain"]
        res[f"{name}_plain_ms"] = round(plain * 1e3, 2)
        res[f"{name}_fused_ms"] = round(fused * 1e3, 2)
        res[f"{name}_speedup_fused_vs_plain"] = round(plain / fused, 3)
    return res
