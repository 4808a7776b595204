"""Would a preallocated KV buffer beat transformers' ``DynamicCache`` (which grows by ``torch.cat`` every decode
step) in lmforge's decode loop? Same tokens and log-probs, and CPU seconds, on the default pipeline's policy.

``python -m experiments.kv_buffer_probe OUT_JSON MODEL_DIR TASKS_DIR [--rounds 10] [--threads 1] [--max-new 64]
[--prompts 64] [--group 8]``

The probe's cache (``BufferCache``) is a ``DynamicCache`` whose layers write each step's keys and values into a
``[B, H, prompt + max_new, D]`` buffer and hand attention views of its filled part; ``batch_select_indices``
(dropped rows, the prefix shared across a group) gathers the buffer's rows. It is passed to the prefill by
wrapping the model's ``forward``, so ``ops.generate.sample`` runs unchanged: rl1's rollout shape (``--prompts``
x ``--group`` rows, T=1, seeded), both caches in alternating order per round, ``time.process_time`` per
rollout. Reported: whether tokens and log-probs are equal, each round's CPU seconds and the ratios buffer /
dynamic. The buffer is not part of lmforge (see ``experiments/LEDGER.md``).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def buffer_cache(capacity: int):
    """A ``DynamicCache`` whose layers preallocate ``capacity`` positions."""
    from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

    class BufferLayer(DynamicLayer):
        def lazy_initialization(self, k, v):
            super().lazy_initialization(k, v)
            self._n, self._kb, self._vb = 0, None, None

        def update(self, k, v, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(k, v)
            n0, n = self._n, self._n + k.shape[-2]
            if self._kb is None or n > self._kb.shape[-2]:
                kb = k.new_empty((k.shape[0], k.shape[1], max(n, capacity), k.shape[3]))
                vb = v.new_empty((v.shape[0], v.shape[1], max(n, capacity), v.shape[3]))
                if n0:
                    kb[:, :, :n0], vb[:, :, :n0] = self._kb[:, :, :n0], self._vb[:, :, :n0]
                self._kb, self._vb = kb, vb
            self._kb[:, :, n0:n], self._vb[:, :, n0:n] = k, v
            self._n = n
            self.keys, self.values = self._kb[:, :, :n], self._vb[:, :, :n]
            return self.keys, self.values

        def batch_select_indices(self, indices):
            if self._n:
                self._kb, self._vb = self._kb[indices], self._vb[indices]
                self.keys, self.values = self._kb[:, :, : self._n], self._vb[:, :, : self._n]

    class BufferCache(DynamicCache):
        def __init__(self):
            Cache.__init__(self, layer_class_to_replicate=BufferLayer)

    return BufferCache()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("model")
    ap.add_argument("tasks")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--group", type=int, default=8)
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    import ops.generate as G
    from ops.posttrain.common import load_policy
    from ops.tasks import read_tasks

    model, tok = load_policy(a.model)
    model.eval()
    tasks = read_tasks(Path(a.tasks) / "train.parquet")
    rows = [p for p in G.chat_prompts(tok, [t.question for t in tasks[: a.prompts]]) for _ in range(a.group)]
    capacity = max(len(r) for r in rows) + a.max_new
    orig, ck = model.forward, G._cache_kwarg(model)

    @functools.wraps(orig)  # keeps the signature ops.generate reads the cache argument's name from
    def with_buffer(*args, **kwargs):
        if kwargs.get(ck) is None:
            kwargs[ck] = buffer_cache(capacity)
        return orig(*args, **kwargs)

    kw = dict(
        max_new_tokens=a.max_new, stop_ids=G.stop_token_ids(tok), pad_id=G.pad_token_id(tok), temperature=1.0,
        seed=3, return_logprobs=True, batch_size=len(rows),
    )  # fmt: skip
    cpu: dict[str, list[float]] = {"dynamic": [], "buffer": []}
    outs = {}
    try:
        for r in range(a.rounds):
            for v in ("dynamic", "buffer") if r % 2 == 0 else ("buffer", "dynamic"):
                model.forward = with_buffer if v == "buffer" else orig
                t = time.process_time()
                outs[v] = G.sample(model, rows, **kw)
                cpu[v].append(time.process_time() - t)
                print(f"round {r} {v}: {cpu[v][-1]:.3f} CPU s", flush=True)
    finally:
        model.forward = orig
    d, b = outs["dynamic"], outs["buffer"]
    ratios = [x / y for x, y in zip(cpu["buffer"], cpu["dynamic"], strict=True)]
    result = {
        "model": a.model,
        "tasks": a.tasks,
        "rows": len(rows),
        "max_new_tokens": a.max_new,
        "threads": a.threads,
        "same_tokens": all(x.ids == y.ids for x, y in zip(d, b, strict=True)),
        "max_logprob_diff": max(
            (
                abs(p - q)
                for x, y in zip(d, b, strict=True)
                for p, q in zip(x.logprobs, y.logprobs, strict=True)
            ),
            default=0.0,
        ),
        "completion_tokens": sum(x.n_tokens for x in d),
        "cpu_s": cpu,
        "ratios": ratios,
        "median_ratio": statistics.median(ratios),
        "mean_ratio": statistics.mean(ratios),
        "se_ratio": statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else None,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(
        json.dumps({k: result[k] for k in ("same_tokens", "max_logprob_diff", "median_ratio", "mean_ratio")})
    )
    return result


if __name__ == "__main__":
    main()
