"""What GRPO and PPO share: prompt selection, rollout scoring, sequence tensors for a batch of samples,
per-token log-probabilities of completions, and the rollout record schema.

Key design choice: a rollout is kept as token ids exactly as sampled (never re-tokenized), and every
rollout becomes one row of the "rollouts" Parquet artifact with its reward components, advantage and the
policy version that produced it, so later stages (reward model pairs, rejection sampling, SFT) reuse them.
"""

from __future__ import annotations

import random
from typing import Any

import pyarrow as pa

from ops.generate import Sample

ROLLOUT_SCHEMA_BASE = [
    ("id", pa.string()),
    ("prompt_id", pa.string()),
    ("prompt", pa.string()),
    ("answer", pa.string()),
    ("completion", pa.string()),
    ("prompt_tokens", pa.int32()),
    ("completion_tokens", pa.int32()),
    ("finished", pa.bool_()),
    ("group", pa.int64()),
    ("reward", pa.float64()),
    ("advantage", pa.float64()),
    ("policy_version", pa.int32()),
    ("stage", pa.string()),
]


def rollout_schema(reward_names: list[str]) -> pa.Schema:
    return pa.schema(ROLLOUT_SCHEMA_BASE + [(f"reward_{n}", pa.float64()) for n in reward_names])


def write_rollouts(rows: list[dict], reward_names: list[str], path: Any) -> None:
    import pyarrow.parquet as pq

    schema = rollout_schema(reward_names)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, compression="zstd")


def pick_prompts(n_tasks: int, k: int, step: int, seed: int) -> list[int]:
    """``k`` task indices for ``step``: walks a seeded permutation epoch by epoch (pure function of step)."""
    per_epoch = max(n_tasks // k, 1)
    epoch, j = divmod(step, per_epoch)
    perm = list(range(n_tasks))
    random.Random(seed * 7919 + epoch).shuffle(perm)
    if n_tasks < k:
        return [perm[i % n_tasks] for i in range(k)]
    return perm[j * k : (j + 1) * k]


def completion_tensors(samples: list[Sample], pad_id: int, device: Any) -> dict[str, Any]:
    """Right-padded ``prompt + completion`` ids with the completion mask aligned for log-prob gathering.

    Returns ``input_ids [N, T]``, ``attention_mask [N, T]``, ``start`` (prompt lengths), ``comp_ids [N, L]``,
    ``comp_mask [N, L]`` (L = longest completion): ``comp_ids[i, j]`` is predicted by position
    ``start[i] + j - 1`` of ``input_ids``. Also the distinct prompts, left-padded (``prompt_ids [U, P]``,
    ``prompt_mask``), and each sample's prompt row ``prompt_row [N]``, for :func:`completion_logprobs`'s
    shared-prefix forward.
    """
    import torch

    from ops.generate import _left_pad

    N = len(samples)
    T = max(len(s.prompt_ids) + len(s.ids) for s in samples)
    L = max(max(len(s.ids) for s in samples), 1)
    ids = torch.full((N, T), pad_id, dtype=torch.long)
    att = torch.zeros((N, T), dtype=torch.long)
    comp = torch.full((N, L), pad_id, dtype=torch.long)
    cmask = torch.zeros((N, L), dtype=torch.float32)
    start = torch.zeros(N, dtype=torch.long)
    for i, s in enumerate(samples):
        seq = s.prompt_ids + s.ids
        ids[i, : len(seq)] = torch.tensor(seq)
        att[i, : len(seq)] = 1
        comp[i, : len(s.ids)] = torch.tensor(s.ids, dtype=torch.long)
        cmask[i, : len(s.ids)] = 1
        start[i] = len(s.prompt_ids)
    first: dict[tuple[int, ...], int] = {}
    row = torch.tensor([first.setdefault(tuple(s.prompt_ids), len(first)) for s in samples], dtype=torch.long)
    pids, pmask = _left_pad([list(k) for k in first], pad_id, "cpu")
    return {
        k: v.to(device)
        for k, v in {
            "input_ids": ids,
            "attention_mask": att,
            "comp_ids": comp,
            "comp_mask": cmask,
            "start": start,
            "prompt_ids": pids,
            "prompt_mask": pmask,
            "prompt_row": row,
        }.items()
    }


def gather_completion(x: Any, t: dict[str, Any]) -> Any:
    """Pick ``x[i, start[i] - 1 + j]`` for every completion position j: ``[N, T, ...] -> [N, L, ...]``."""
    import torch

    N, L = t["comp_ids"].shape
    idx = (t["start"][:, None] - 1 + torch.arange(L, device=x.device)[None]).clamp(max=x.shape[1] - 1)
    if x.dim() == 2:
        return x.gather(1, idx)
    return x.gather(1, idx[..., None].expand(N, L, x.shape[-1]))


def completion_logprobs(
    model: Any, t: dict[str, Any], temperature: float = 1.0, with_hidden: bool = False, share_prefix: bool = True
) -> Any:
    """Per-token ``log pi(comp_ids | ...)`` ``[N, L]`` under ``softmax(logits / temperature)`` (the
    distribution the sampler drew from); with ``with_hidden`` also the last hidden states ``[N, L, d]``.

    When samples repeat a prompt (a GRPO group) and the model allows it, each distinct prompt runs through the
    decoder once and its KV cache is gathered to the samples that share it; the completions then run on that
    cache. Gradients reach the shared prompt from every sample, so the result is the same function (values
    equal up to float rounding, tested) at a fraction of the cost: the prompt is often half of every row.
    """
    from ops.fused_head import fused_ok
    from ops.losses import token_logprobs
    from ops.posttrain.common import decoder_and_head

    parts = decoder_and_head(model)
    hidden = None
    if parts is not None and share_prefix and "prompt_ids" in t and len(t["prompt_ids"]) < len(t["comp_ids"]):
        hidden = _shared_prefix_hidden(parts[0], t)
    kw = {"input_ids": t["input_ids"], "attention_mask": t["attention_mask"]}
    if parts is not None and hidden is None:
        # the vocabulary head only on the completion positions (the prompt's logits are never used)
        hidden = gather_completion(parts[0](**kw).last_hidden_state, t)
    if parts is not None and fused_ok(hidden, parts[1]):
        lp = _fused_logprobs(hidden, parts[1].weight, t, temperature)
        return (lp, hidden) if with_hidden else lp
    if parts is not None:
        logits = parts[1](hidden)
    else:
        out = model(**kw, output_hidden_states=with_hidden)
        logits = gather_completion(out.logits, t)
        hidden = gather_completion(out.hidden_states[-1], t) if with_hidden else None
    if temperature != 1.0:
        logits = logits / temperature
    lp = token_logprobs(logits, t["comp_ids"]) * t["comp_mask"]
    if with_hidden:
        return lp, hidden
    return lp


def _fused_logprobs(hidden: Any, weight: Any, t: dict[str, Any], temperature: float) -> Any:
    """:func:`ops.fused_head.head_logprobs` on the real completion tokens only, zeros at the padding ``[N, L]``
    (rows are picked and placed with index_select / index_copy, whose backward adds in a fixed order)."""
    import torch

    from ops.fused_head import head_logprobs

    N, L = t["comp_ids"].shape
    idx = t["comp_mask"].reshape(-1).nonzero().squeeze(1)
    h = hidden.reshape(N * L, -1).index_select(0, idx)
    lp = head_logprobs(h, weight, t["comp_ids"].reshape(-1).index_select(0, idx), temperature)
    return torch.zeros(N * L, dtype=lp.dtype, device=lp.device).index_copy(0, idx, lp).view(N, L)


def _shared_prefix_hidden(decoder: Any, t: dict[str, Any]) -> Any:
    """The last hidden states at the completion positions ``[N, L, d]``: the distinct prompts (left-padded, so
    each ends at the last column) through ``decoder`` once, their cache gathered to the samples, then the
    completions' first ``L - 1`` tokens on that cache. ``None`` (use the full forward) under activation
    checkpointing (no cache in training) and for layers other than full attention."""
    import torch

    from ops.generate import _cache, _cache_kwarg

    if decoder.training and getattr(decoder, "gradient_checkpointing", False):
        return None
    # a plain key/value cache only: a sliding window drops prompt keys, and a linear-attention layer's state
    # (MiniMax) decodes the completions token by token, slower than its full forward
    if any(x != "full_attention" for x in getattr(decoder.config, "layer_types", None) or []):
        return None
    pmask, row = t["prompt_mask"], t["prompt_row"]
    pos = (pmask.cumsum(-1) - 1).clamp(min=0)
    out = decoder(input_ids=t["prompt_ids"], attention_mask=pmask, position_ids=pos, use_cache=True)
    cache = _cache(out)
    if type(cache).__name__ != "DynamicCache" or any(type(x).__name__ != "DynamicLayer" for x in cache.layers):
        return None
    # rows are gathered with index_select, never tensor indexing (``x[row]``, as the cache's
    # batch_select_indices does): on CPU the backward of ``x[row]`` (index_put_ with accumulate) adds the rows
    # of a prompt with atomic float adds from several threads, in an order that depends on thread timing, so
    # the gradients changed with the machine's load; index_select's backward (index_add_) adds them in order
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys.index_select(0, row), layer.values.index_select(0, row)
    # the prompt's last position predicts the first completion token
    first = out.last_hidden_state[:, -1:].index_select(0, row)
    N, L = t["comp_ids"].shape
    if L == 1:
        return first
    mask = torch.cat([pmask[row], torch.ones((N, L - 1), dtype=pmask.dtype, device=pmask.device)], 1)
    cpos = t["start"][:, None] + torch.arange(L - 1, device=pmask.device)[None]
    rest = decoder(
        input_ids=t["comp_ids"][:, :-1], attention_mask=mask, position_ids=cpos, use_cache=True,
        **{_cache_kwarg(decoder): cache},
    ).last_hidden_state
    return torch.cat([first, rest], 1)
