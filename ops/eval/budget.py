"""s1-style test-time scaling: a batched, KV-cached token-level decode loop with budget forcing and "Wait".

Key design choice: every step feeds exactly one token per sequence, whether the model chose it or the loop
forced it, so forcing never breaks batching or the KV cache. Per sequence a small state machine tracks the
phase (thinking, answering, done):

* the response starts with a forced ``<think>`` (the chat format's response prefix, as s1 prefills its
  thinking marker), so thinking tokens are exactly the tokens between ``<think>`` and ``</think>``;
* budget forcing: once a sequence has ``budget`` thinking tokens, the next tokens are forced to
  ``</think><answer>`` and the model then writes its answer. The cap is checked before every thinking token,
  so thinking can never exceed the budget, forced "Wait" tokens included;
* "Wait" extension: when the model itself emits ``</think>`` and fewer than ``wait_extensions`` Waits were
  used, that token is replaced by the tokens of ``wait_text`` (counted as thinking) and thinking goes on.

A tokenizer without ``<think>``/``</think>``/``<answer>`` tokens (an imported model's own) gets plain
decoding in its own chat format for the unbudgeted runs (nothing forced, thinking tokens counted from the
text); budget forcing and Wait on it are refused with the reason.

:func:`wait_effect` scores a Wait sweep against the model's own stop, paired over items.

Generation is greedy at ``temperature == 0`` and sampled with a seeded ``torch.Generator`` otherwise, so a
record set is reproducible on the same hardware.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

THINK, ANSWER, DONE = 0, 1, 2


def check_sweep(name: str, v: list[int], minimum: int, unit: str) -> list[int]:
    """``v`` if every value is at least ``minimum`` and the values strictly increase, else a ValueError naming
    ``name``: a sweep is a curve, so a repeated or out-of-order value is a typo, not a request."""
    if any(x < minimum for x in v):
        raise ValueError(f"{name} must be >= {minimum} {unit}, got {v}")
    bad = next((i for i in range(1, len(v)) if v[i] <= v[i - 1]), None)
    if bad is not None:
        raise ValueError(f"{name} must be strictly increasing, got {v} ({v[bad]} after {v[bad - 1]})")
    return v


@dataclass
class Generated:
    """One completion: the text after the prompt (starting at ``<think>``) and its token accounting."""

    completion: str
    token_ids: list[int]
    thinking_tokens: int
    answer_tokens: int
    waits_used: int
    forced_end: bool  # the budget (or the thinking cap) ended thinking, not the model
    finished: bool  # the model closed the turn (``<|im_end|>`` / eos) within the limits


@dataclass
class _Seq:
    phase: int = THINK
    think: int = 0
    answer: int = 0
    waits: int = 0
    forced: bool = False
    finished: bool = False
    queue: deque = field(default_factory=deque)
    out: list = field(default_factory=list)


@dataclass(frozen=True)
class SpecialIds:
    think_open: int
    think_close: int
    answer_open: int
    stops: frozenset[int]
    pad: int
    wait: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tok, wait_text: str = "Wait") -> SpecialIds:
        ids = {}
        from ops.generate import stop_token_ids

        for t in ("<think>", "</think>", "<answer>"):
            i = tok.convert_tokens_to_ids(t)
            if i is None or i == tok.unk_token_id or not isinstance(i, int):
                raise ValueError(
                    f"the model's tokenizer has no {t!r} token; budget forcing needs <think>, </think> and "
                    "<answer> as single tokens (an imported model gets them from the hf_model stage's "
                    "special_tokens field)"
                )
            ids[t] = i
        stops = set(stop_token_ids(tok))
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        wait = tuple(tok.encode(wait_text, add_special_tokens=False))
        if not wait:
            raise ValueError(f"wait_text {wait_text!r} encodes to no tokens")
        return cls(ids["<think>"], ids["</think>"], ids["<answer>"], frozenset(stops), int(pad), wait)


NO_THINK_TOKENS = ("has no <think>, </think> and <answer> tokens to force; import it with hf_model's "
                   "special_tokens to add them")


def has_think_tokens(tok) -> bool:
    try:
        SpecialIds.from_tokenizer(tok)
    except ValueError:
        return False
    return True


def _generate_plain(model, tok, prompt_ids, max_new: int, temperature: float, seed: int, batch_size: int):
    """Unforced decoding (``ops.generate.sample``) with the same accounting as the forced loop."""
    from ops.generate import pad_token_id, sample, stop_token_ids

    outs = sample(model, prompt_ids, max_new_tokens=max_new, stop_ids=stop_token_ids(tok), pad_id=pad_token_id(tok),
                  temperature=temperature, seed=seed, batch_size=batch_size)
    res = []
    for o in outs:
        text = tok.decode(o.ids, skip_special_tokens=False)
        think = 0
        if "<think>" in text and "</think>" in text.split("<think>", 1)[1]:
            inner = text.split("<think>", 1)[1].split("</think>", 1)[0]
            think = min(len(tok(inner, add_special_tokens=False)["input_ids"]), len(o.ids))
        res.append(Generated(text, list(o.ids), think, len(o.ids) - think, 0, False, o.finished))
    return res


def generate_with_budget(
    model,
    tok,
    prompt_ids: list[list[int]],
    *,
    budget: int | None = None,
    max_think_tokens: int = 256,
    max_answer_tokens: int = 32,
    wait_extensions: int = 0,
    wait_text: str = "Wait",
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 32,
) -> list[Generated]:
    """Generate a think/answer response for each prompt (token ids ending with the generation prompt).

    ``budget``: at most this many thinking tokens (``None``: only ``max_think_tokens``, which also caps
    Wait-extended thinking). ``wait_extensions``: how many times a self-emitted ``</think>`` is replaced by
    ``wait_text``. Returns one :class:`Generated` per prompt, in order.
    """
    if budget is not None and budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if budget is None and not wait_extensions and not has_think_tokens(tok):
        return _generate_plain(
            model, tok, prompt_ids, max_think_tokens + max_answer_tokens, temperature, seed, batch_size
        )
    return _generate_settings(
        model,
        tok,
        prompt_ids,
        [(budget, wait_extensions)],
        max_think_tokens,
        max_answer_tokens,
        wait_text,
        temperature,
        seed,
        batch_size,
    )[0]


def generate_sweep(
    model,
    tok,
    prompt_ids: list[list[int]],
    settings: list[tuple[int | None, int]],
    *,
    max_think_tokens: int = 256,
    max_answer_tokens: int = 32,
    wait_text: str = "Wait",
    batch_size: int = 32,
) -> list[list[Generated]]:
    """Greedy :func:`generate_with_budget` for each ``(budget, wait_extensions)`` setting: one list per setting,
    equal result for result to a separate call per setting, with the prefill and every decode step the
    settings share (before their first differing token) computed once (:func:`_decode_batch`)."""
    if not has_think_tokens(tok):  # plain decoding, or the refusal, setting by setting
        return [
            generate_with_budget(
                model,
                tok,
                prompt_ids,
                budget=b,
                max_think_tokens=max_think_tokens,
                max_answer_tokens=max_answer_tokens,
                wait_extensions=w,
                wait_text=wait_text,
                batch_size=batch_size,
            )
            for b, w in settings
        ]
    for b, _ in settings:
        if b is not None and b < 0:
            raise ValueError(f"budget must be >= 0, got {b}")
    return _generate_settings(
        model,
        tok,
        prompt_ids,
        list(settings),
        max_think_tokens,
        max_answer_tokens,
        wait_text,
        0.0,
        0,
        batch_size,
    )


def _generate_settings(
    model,
    tok,
    prompt_ids,
    settings,
    max_think_tokens,
    max_answer_tokens,
    wait_text,
    temperature,
    seed,
    batch_size,
) -> list[list[Generated]]:
    import torch

    sp = SpecialIds.from_tokenizer(tok, wait_text)
    caps = [(max_think_tokens if b is None else min(b, max_think_tokens), w) for b, w in settings]
    gen = torch.Generator().manual_seed(seed)
    results: list[list[Generated]] = [[] for _ in settings]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(prompt_ids), batch_size):
                chunk = prompt_ids[s : s + batch_size]
                for res, gens in zip(
                    results, _decode_batch(model, tok, chunk, sp, caps, max_answer_tokens, temperature, gen)
                ):
                    res.extend(gens)
    finally:
        model.train(was_training)
    return results


def _decode_batch(
    model,
    tok,
    prompts,
    sp: SpecialIds,
    settings: list[tuple[int, int]],
    max_answer: int,
    temperature: float,
    gen,
) -> list[list[Generated]]:
    """One batch of prompts decoded under each ``(thinking cap, Wait count)`` setting; one list per setting.

    Settings that feed the same tokens share one forward: they start as one branch (one prefill) and a branch
    forks, its KV cache copied, at the first step where its settings' tokens differ (a budget forcing
    ``</think>``, a Wait replacing it). Every forward of a setting therefore gets exactly the inputs (tokens,
    cache, mask, positions) of a decode of that setting alone, so its tokens and counts are the same. Sampling
    (``temperature > 0``) draws once per step from ``gen`` and takes one setting."""
    import copy

    import torch

    from ops.generate import decode_kwargs

    if temperature > 0 and len(settings) != 1:
        raise ValueError("a sampled decode takes one setting: settings share steps only when greedy")
    b = len(prompts)
    # the response prefix <think> is part of the prefill: left-pad so every row ends at the same column
    rows = [list(p) + [sp.think_open] for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((b, width), sp.pad, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    # the model makes its own cache on the prefill (a MiniMax model keeps its lightning layers' state in a
    # cache class of its own and refuses any other); it is passed back on every step
    extra = decode_kwargs(model)
    ck = _cache_kwarg(model)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1, **extra
    )
    seqs = [[_Seq(out=[sp.think_open]) for _ in range(b)] for _ in settings]
    limits = [cap + len(sp.wait) + 2 + max_answer + 1 for cap, _ in settings]
    # a branch: the settings that have fed the same tokens so far, their cache, last logits, mask, next
    # positions and step count
    branches = [(list(range(len(settings))), _out_cache(out), out.logits[:, -1, :], mask, pos[:, -1:] + 1, 0)]
    while branches:
        live, cache, logits, mask, next_pos, step = branches.pop()
        while True:
            live = [k for k in live if step < limits[k]]
            if not live:
                break
            chosen = _choose(logits, temperature, gen)
            groups: dict[tuple[int, ...], list[int]] = {}
            for k in live:
                cap, n_wait = settings[k]
                toks = tuple(
                    sp.pad if q.phase == DONE else _advance(q, int(chosen[i]), sp, cap, max_answer, n_wait)
                    for i, q in enumerate(seqs[k])
                )
                if not all(q.phase == DONE for q in seqs[k]):
                    groups.setdefault(toks, []).append(k)
            if not groups:
                break
            mask = torch.cat([mask, torch.ones((b, 1), dtype=torch.long)], dim=1)
            forks = list(groups.items())
            for toks, ks in forks[1:]:  # each fork continues from a copy of the cache before this step
                c = copy.deepcopy(cache)
                o = model(
                    input_ids=torch.tensor(toks, dtype=torch.long).unsqueeze(1),
                    attention_mask=mask,
                    position_ids=next_pos,
                    use_cache=True,
                    **{ck: c},
                    **extra,
                )
                branches.append((ks, _out_cache(o), o.logits[:, -1, :], mask, next_pos + 1, step + 1))
            toks, live = forks[0]
            out = model(
                input_ids=torch.tensor(toks, dtype=torch.long).unsqueeze(1),
                attention_mask=mask,
                position_ids=next_pos,
                use_cache=True,
                **{ck: cache},
                **extra,
            )
            cache, logits = _out_cache(out), out.logits[:, -1, :]
            next_pos, step = next_pos + 1, step + 1
    return [
        [
            Generated(
                completion=tok.decode(q.out, skip_special_tokens=False),
                token_ids=list(q.out),
                thinking_tokens=q.think,
                answer_tokens=q.answer,
                waits_used=q.waits,
                forced_end=q.forced,
                finished=q.finished,
            )
            for q in qs
        ]
        for qs in seqs
    ]


def _out_cache(out):
    # transformers 5.2x returns the cache as ``cache``; older releases as ``past_key_values``
    c = getattr(out, "cache", None)
    return c if c is not None else out.past_key_values


def _cache_kwarg(model) -> str:
    """transformers 5.2x names the KV-cache argument ``cache``; older releases ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _choose(logits, temperature: float, gen):
    import torch

    if temperature <= 0:
        return logits.argmax(-1)
    from ops.generate import draw_categorical

    return draw_categorical(torch.softmax(logits.float() / temperature, dim=-1), gen)


def _advance(q: _Seq, model_tok: int, sp: SpecialIds, cap: int, max_answer: int, n_wait: int) -> int:
    """Decide the token this sequence emits now (model's choice or forced) and update its state."""
    if q.phase == THINK:
        if q.think >= cap:
            # budget reached: force the end of thinking and the start of the answer (drops pending Waits)
            q.queue.clear()
            q.queue.append(sp.answer_open)
            q.forced = True
            q.phase = ANSWER
            q.out.append(sp.think_close)
            return sp.think_close
        t = q.queue.popleft() if q.queue else model_tok
        if t == sp.think_close and q.waits < n_wait:
            q.waits += 1
            q.queue.extend(sp.wait)
            t = q.queue.popleft()
        q.out.append(t)
        if t == sp.think_close:
            q.phase = ANSWER
        elif t in sp.stops:
            q.phase, q.finished = DONE, True
        else:
            q.think += 1
        return t
    # ANSWER phase: forced <answer> first if queued, then the model's tokens until a stop token
    t = q.queue.popleft() if q.queue else model_tok
    q.out.append(t)
    if t in sp.stops:
        q.phase, q.finished = DONE, True
    else:
        q.answer += 1
        if q.answer >= max_answer:
            q.phase = DONE
    return t


def wait_effect(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per Wait count: accuracy with that many forced Waits minus accuracy when thinking stops at the model's
    own ``</think>`` (the unbudgeted greedy run, same thinking cap), paired over the items both runs scored
    (``metrics.paired_difference``: the interval, p and ``beyond_noise``)."""
    from .metrics import paired_difference

    own = {(r["task"], r["item_id"]): float(r["correct"]) for r in records if r["mode"] == "greedy"}
    by_w: dict[int, dict[tuple[str, str], float]] = {}
    for r in records:
        if r["mode"] == "wait":
            by_w.setdefault(int(r["wait_extensions"]), {})[(r["task"], r["item_id"])] = float(r["correct"])
    out = []
    for w in sorted(by_w):
        keys = sorted(set(by_w[w]) & set(own))
        d = paired_difference([own[k] for k in keys], [by_w[w][k] for k in keys])
        out.append({"wait_extensions": w, **d})
    return out
