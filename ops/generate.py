"""Batched sampling for rollouts, rejection sampling and evaluation: KV cache, temperature / top-p, stop at
EOS or ``<|im_end|>``, a per-sequence token budget.

Key design choice: a small hand-written decode loop over the model's own forward (``past_key_values``)
instead of ``transformers.generate``: on a CPU with a tiny model the per-step overhead of ``generate``'s
processor/stopping machinery is a large share of the step, and the loop returns exactly what RL needs -
the sampled token ids (never re-tokenized text) and, optionally, their log-probabilities under the sampling
distribution. Greedy decoding (``temperature=0``) matches ``generate(do_sample=False)`` token for token
(tested).

Stable API (used by RL, rejection sampling and the evaluation stage):

* ``chat_prompts(tokenizer, questions) -> list[list[int]]`` - prompt ids via the tokenizer's chat template
  (raises :class:`ChatTemplateError` if the tokenizer has none).
* ``sample(model, prompt_ids, *, max_new_tokens, temperature, top_p, stop_ids, pad_id, seed, batch_size,
  return_logprobs) -> list[Sample]``.
* ``generate(model, tokenizer, questions, *, n=1, ...) -> list[Sample]`` - ``n`` samples per question,
  consecutive (question ``i`` owns ``[i*n, (i+1)*n)``), with ``.text`` decoded (special tokens kept).
* ``stop_token_ids(tokenizer)``, ``turn_end(tokenizer)`` (the text that closes an assistant turn).
* ``draw_categorical(probs, generator) -> ids`` - the one sampler every decode loop draws with: one uniform
  per row through the row's inverse CDF (a draw per vocabulary entry, as ``torch.multinomial`` makes, was most
  of a decode step's sampling cost).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class ChatTemplateError(ValueError):
    """The tokenizer carries no chat template, so prompts cannot be built."""


@dataclass
class Sample:
    prompt_ids: list[int]
    ids: list[int]  # completion ids, including the stop token when one was produced
    finished: bool  # True if a stop token ended it (False: token budget exhausted)
    text: str = ""  # decoded completion (special tokens kept, stop token included)
    logprobs: list[float] = field(default_factory=list)  # of each id under the sampling distribution

    @property
    def n_tokens(self) -> int:
        return len(self.ids)


def require_chat_template(tokenizer: Any, where: str = "model") -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"{where}: the tokenizer has no chat template; post-training renders every prompt with it "
            "(lmforge tokenizers carry one; an imported model gets one from the hf_model stage)"
        )


def chat_prompts(tokenizer: Any, questions: list[str]) -> list[list[int]]:
    """Token ids of the chat template's user turn and generation prompt for each question (lmforge's:
    ``<|im_start|>user\\n{q}<|im_end|>\\n<|im_start|>assistant\\n``)."""
    require_chat_template(tokenizer)
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in questions
    ]
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


_SENTINEL = "\u2063lmforge-response\u2063"


def turn_end(tokenizer: Any) -> str:
    """The text the chat template puts after an assistant message's content (``<|im_end|>`` in the lmforge
    and ChatML formats, ``<|eot_id|>`` in Llama 3's), trailing whitespace dropped; the eos token when the
    template closes a turn with nothing. Read from the template itself, so every model's own format is
    kept, and cached on the tokenizer."""
    cached = getattr(tokenizer, "_lmforge_turn_end", None)
    if cached is not None:
        return cached
    require_chat_template(tokenizer)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SENTINEL}], tokenize=False
    )
    end = text[text.index(_SENTINEL) + len(_SENTINEL) :].rstrip() if _SENTINEL in text else ""
    end = end or (tokenizer.eos_token or "")
    tokenizer._lmforge_turn_end = end
    return end


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Tokens that end a completion: the template's turn end (when it is one token), ``<|im_end|>`` and
    ``<|endoftext|>`` where the vocabulary has them, and eos."""
    ids = []
    names = ["<|im_end|>", "<|endoftext|>"]
    if getattr(tokenizer, "chat_template", None):
        names.insert(0, turn_end(tokenizer))
    unk = tokenizer.unk_token_id if tokenizer.unk_token is not None else None
    for t in names:
        i = tokenizer.convert_tokens_to_ids(t)
        if isinstance(i, int) and i >= 0 and i != unk and i not in ids:
            ids.append(i)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def pad_token_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def sample_next(logits: Any, temperature: float, top_p: float, generator: Any = None) -> tuple[Any, Any]:
    """Draw one token per row from ``logits [B, V]``; returns ``(ids [B], log-probs [B])``.

    ``temperature == 0``: argmax (log-prob under the untempered softmax). Otherwise tokens are drawn from
    ``softmax(logits / T)`` restricted to the smallest set whose mass reaches ``top_p`` (nucleus), and the
    returned log-prob is that of ``softmax(logits / T)`` *before* truncation - the quantity the RL losses
    recompute from the model. Draws go through :func:`draw_categorical` (one uniform per row).
    """
    import torch

    logits = logits.float()
    if temperature <= 0:
        ids = logits.argmax(-1)
        return ids, torch.log_softmax(logits, -1).gather(-1, ids[:, None]).squeeze(-1)
    logp = torch.log_softmax(logits / temperature, -1)
    probs = logp.exp()
    if top_p < 1.0:
        # drawn in sorted order (same distribution, no scatter back): position j of the sorted row is token si[j]
        sp, si = probs.sort(-1, descending=True)
        drop = (sp.cumsum(-1) - sp) >= top_p  # tokens entirely beyond the nucleus (the first is always kept)
        ids = si.gather(-1, draw_categorical(sp.masked_fill(drop, 0.0), generator)[:, None]).squeeze(-1)
    else:
        ids = draw_categorical(probs, generator)
    return ids, logp.gather(-1, ids[:, None]).squeeze(-1)


_CDF_BITS = 52  # a row's mass in integer units: the total stays below 2**53, exact in the float64 target


def shares_cdf(probs: Any) -> Any:
    """The integer CDF :func:`draw_categorical` inverts: each row's prefix sums of ``floor(w / sum(w) * 2**52)``."""
    mass = probs.sum(-1, keepdim=True)
    if not bool(((mass > 0) & mass.isfinite()).all()):
        raise ValueError("draw_categorical: a row has no positive finite mass (NaN/inf logits or all-zero weights)")
    return probs.div(mass).mul_(2.0**_CDF_BITS).long().cumsum(-1)


def draw_categorical(probs: Any, generator: Any = None, uniforms: Any = None) -> Any:
    """One index per row of ``probs [B, V]`` (non-negative weights, any positive row sum), drawn with
    probability proportional to its weight by inverting the row's CDF with ONE uniform per row.

    The CDF is an integer prefix sum of the weights in units of ``2**-52`` of the row's mass, so it is exact
    on every device (a float scan on a GPU may round one prefix two ways): a zero weight adds nothing, its
    interval ``[cdf[i-1], cdf[i])`` is empty and it is never drawn, and the target ``floor(u * total)`` is
    clamped below ``total``, so a product that rounds up to the total (or ``u == 1``) lands on the last
    positive weight, never on a zero after it. A weight below ``2**-52`` of its row's mass is never drawn
    either (the float32 weights themselves carry ``2**-24``). The uniforms come from ``generator`` on its own
    device (CPU for a seeded loop, whatever the weights' device), one per row: the random stream depends on
    ``B`` only.
    ``uniforms [B]`` in ``[0, 1)`` replaces them (the tests put them on the CDF's edges).
    """
    import torch

    cdf = shares_cdf(probs)
    total = cdf[:, -1:]
    if uniforms is None:
        dev = generator.device if generator is not None else probs.device
        uniforms = torch.rand(probs.shape[0], dtype=torch.float64, generator=generator, device=dev)
    u = uniforms.to(probs.device, torch.float64)[:, None]
    target = torch.minimum((u * total).long(), total - 1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)


def sample(
    model: Any,
    prompt_ids: list[list[int]],
    *,
    max_new_tokens: int,
    stop_ids: list[int],
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    batch_size: int = 256,
    return_logprobs: bool = False,
    share_prefix: bool = True,
    drop_finished: bool = True,
) -> list[Sample]:
    """Sample one completion per prompt (repeat a prompt to get several), in batches, with a KV cache.

    Prompts are left-padded; position ids follow the attention mask so padding never shifts positions.
    A row stops at its first stop token or after ``max_new_tokens``; the batch stops when every row has.
    ``share_prefix`` (prefill a repeated prompt once) and ``drop_finished`` (finished rows leave the decode
    batch) change the cost, not the tokens (see :func:`_sample_batch`); turning them off gives the plain
    loop the benchmark measures them against.
    """
    import torch

    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    out: list[Sample] = []
    stop = torch.tensor(stop_ids, dtype=torch.long)
    dev = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for s in range(0, len(prompt_ids), batch_size):
                chunk = prompt_ids[s : s + batch_size]
                out.extend(
                    _sample_batch(
                        model,
                        chunk,
                        max_new_tokens,
                        stop.to(dev),
                        pad_id,
                        temperature,
                        top_p,
                        gen,
                        return_logprobs,
                        dev,
                        share_prefix,
                        drop_finished,
                    )
                )
    finally:
        model.train(was_training)
    return out


def _sample_batch(
    model, chunk, max_new, stop, pad_id, temperature, top_p, gen, want_lp, dev, share_prefix=True, drop_finished=True
):
    """One batch of the decode loop. Two savings leave every row's tokens unchanged (log-probs up to float rounding):

    * each distinct prompt is prefilled once and its KV cache copied to every row that repeats it (a GRPO
      group, ``generate(n=...)``): the prefill costs ``distinct prompts x P`` instead of ``rows x P``;
    * rows that have produced their stop token leave the forward batch (their cache rows are dropped) once
      they are a quarter of it, so the decode steps cost about the rows still running, not the whole batch.

    Sampling still draws for all ``B`` rows every step (a finished row's draw is discarded): the sampler's
    random stream then depends on the batch shape only, never on which rows are still running, so a seed
    gives the same tokens as a loop that keeps every row in the batch. A row's logits are computed by the
    same kernels whichever other rows share its batch, up to the matrix-multiply blocking of the batch
    size (tested: equal tokens, log-probs within float tolerance, against the plain loop).
    """
    import torch

    B = len(chunk)
    first: dict[tuple[int, ...], int] = {}
    if share_prefix:
        inv = [first.setdefault(tuple(p), len(first)) for p in chunk]
        uniq = [list(k) for k in first]
    else:
        inv, uniq = list(range(B)), [list(p) for p in chunk]
    ids, mask = _left_pad(uniq, pad_id, dev)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    extra = decode_kwargs(model)
    res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1, **extra)
    past, logits = _cache(res), res.logits[:, -1].float()
    if len(uniq) < B:
        rows = torch.tensor(inv, dtype=torch.long, device=dev)
        past.batch_select_indices(rows)
        logits, mask, pos = logits[rows], mask[rows], pos[rows]
    last_pos = pos[:, -1]
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    active = torch.arange(B, device=dev)  # the rows in the forward batch, in order
    ck = _cache_kwarg(model)
    toks, lps = [], []
    for step in range(max_new):
        nxt, lp = sample_next(logits, temperature, top_p, gen)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        toks.append(nxt)
        lps.append(lp)
        done = done | torch.isin(nxt, stop)
        if step == max_new - 1 or bool(done.all()):  # no forward for a token that will not be drawn
            break
        mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=dev)], 1)
        last_pos = last_pos + 1
        running = (~done[active]).nonzero().squeeze(1) if drop_finished else active
        # gathering the cache copies it: worth it once a quarter of the batch has finished, not per row
        if 4 * len(running) <= 3 * len(active):
            past.batch_select_indices(running)
            active = active[running]
        res = model(
            input_ids=nxt[active, None],
            attention_mask=mask[active],
            position_ids=last_pos[active, None],
            use_cache=True,
            **{ck: past},
            **extra,
        )
        past = _cache(res)
        # finished rows keep stale logits: their draws are replaced by padding above
        logits = logits.index_copy(0, active, res.logits[:, -1].float())
    T = torch.stack(toks, 1).cpu() if toks else torch.zeros((B, 0), dtype=torch.long)
    L = torch.stack(lps, 1).float().cpu() if lps else torch.zeros((B, 0))
    stop_set = set(stop.tolist())
    out = []
    for i in range(B):
        row = T[i].tolist()
        n, fin = len(row), False
        for j, t in enumerate(row):
            if t in stop_set:
                n, fin = j + 1, True
                break
        out.append(Sample(list(chunk[i]), row[:n], fin, "", L[i, :n].tolist() if want_lp else []))
    return out


def decode_kwargs(model: Any) -> dict[str, Any]:
    """Extra forward arguments for decoding: an MoE model's router logits off. Decoding never uses the load
    balancing loss, and transformers computes it against the whole attention mask while a decode step routes
    only the new token (MiniMax, Qwen2-MoE: a shape error as soon as the batch has a mask)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    if getattr(cfg, "output_router_logits", False) and (
        "output_router_logits" in inspect.signature(base.forward).parameters
    ):
        return {"output_router_logits": False}
    return {}


def _left_pad(prompts: list[list[int]], pad_id: int, dev: Any) -> tuple[Any, Any]:
    import torch

    B, P = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, P), pad_id, dtype=torch.long)
    mask = torch.zeros((B, P), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p) :] = 1
    return ids.to(dev), mask.to(dev)


def _cache_kwarg(model: Any) -> str:
    # transformers >= 5.2x names the KV-cache argument ``cache``; earlier versions ``past_key_values``.
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache(res: Any) -> Any:
    # transformers 5.x returns the KV cache as ``cache`` (``past_key_values`` in 4.x).
    c = getattr(res, "cache", None)
    return c if c is not None else res.past_key_values


def generate(
    model: Any,
    tokenizer: Any,
    questions: list[str],
    *,
    n: int = 1,
    max_new_tokens: int = 96,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = 0,
    batch_size: int = 256,
    return_logprobs: bool = False,
) -> list[Sample]:
    """``n`` samples for each question through the chat template, consecutive per question, texts decoded."""
    prompts = chat_prompts(tokenizer, questions)
    rep = [p for p in prompts for _ in range(n)]
    samples = sample(
        model,
        rep,
        max_new_tokens=max_new_tokens,
        stop_ids=stop_token_ids(tokenizer),
        pad_id=pad_token_id(tokenizer),
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
        return_logprobs=return_logprobs,
    )
    texts = tokenizer.batch_decode([s.ids for s in samples], skip_special_tokens=False)
    for s, t in zip(samples, texts):
        s.text = t
    return samples
