"""Why GRPO's weights changed with the machine's load: the CPU backward of tensor indexing (``x[row]``).

``python -m experiments.grpo_thread_determinism OUT SFT_DIR TASKS_DIR [--reps=N] [--seconds=S] [--update-threads=T]``:

1. Minimal reproduction: ``x[row]`` with repeated rows (8 samples per prompt, the layout of a GRPO batch's
   prompt cache; and the same rows interleaved), backward at 2 torch threads, repeated for ``--seconds`` per
   variant; counts the distinct gradients (bit patterns) against ``x.index_select(0, row)``, and against 1
   thread. torch's CPU ``index_put_`` with ``accumulate=True`` (the backward of ``x[row]``) runs in parallel
   with atomic float adds once the tensor has >= 32768 elements, so the order of a prompt's sum follows the
   threads' timing; ``index_add_`` (the backward of ``index_select``) adds in index order.
2. The GRPO update itself: the step-0 rollout batch of the default ``rl1`` settings from ``SFT_DIR`` (e.g. the
   demo's cold_sft) on ``TASKS_DIR``'s training split (``rl_prompts``), then ``--reps`` loss + backward passes
   at 2 threads, alternating the shared-prefix forward as it was (the cache's ``batch_select_indices`` and
   ``hidden[row]``) and as it is (``index_select``): distinct gradient hashes per variant, wall and CPU seconds
   per pass (paired by alternation), and the largest gradient difference between the variants. The passes
   run at ``--update-threads`` (default 2); at 1 thread both variants are deterministic and the CPU seconds
   are not inflated by a 2-thread team waiting for a descheduled thread, so that is the speed comparison.

Writes ``OUT/grpo_thread_determinism.json`` (``OUT/grpo_thread_determinism_<T>t.json`` for T != 2).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _hash(tensors) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def minimal(seconds: float) -> dict:
    import torch

    out = {}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(45, 2, 54, 32, generator=g, requires_grad=True)  # 45 prompts' cached keys (one layer)
    go = torch.randn(360, 2, 54, 32, generator=g)
    layouts = {"grouped": torch.arange(45).repeat_interleave(8), "interleaved": torch.arange(45).repeat(8)}
    for layout, row in layouts.items():
        for op in ("index", "index_select"):
            for threads in (1, 2):
                torch.set_num_threads(threads)
                seen: dict[str, int] = {}
                n, end = 0, time.time() + (seconds if threads == 2 else seconds / 4)
                while time.time() < end:
                    x.grad = None
                    (x[row] if op == "index" else x.index_select(0, row)).backward(go)
                    k = _hash([x.grad])
                    seen[k] = seen.get(k, 0) + 1
                    n += 1
                out[f"{layout}/{op}/{threads}t"] = {"reps": n, "distinct": len(seen), "counts": seen}
    torch.set_num_threads(2)
    return out


def _old_shared_prefix_hidden(decoder, t):
    """ops.rl.common._shared_prefix_hidden before the fix (cache rows gathered by tensor indexing)."""
    import torch

    from ops.generate import _cache, _cache_kwarg

    pmask, row = t["prompt_mask"], t["prompt_row"]
    pos = (pmask.cumsum(-1) - 1).clamp(min=0)
    out = decoder(input_ids=t["prompt_ids"], attention_mask=pmask, position_ids=pos, use_cache=True)
    cache = _cache(out)
    cache.batch_select_indices(row)
    first = out.last_hidden_state[row, -1:]
    N, L = t["comp_ids"].shape
    mask = torch.cat([pmask[row], torch.ones((N, L - 1), dtype=pmask.dtype, device=pmask.device)], 1)
    cpos = t["start"][:, None] + torch.arange(L - 1, device=pmask.device)[None]
    rest = decoder(
        input_ids=t["comp_ids"][:, :-1],
        attention_mask=mask,
        position_ids=cpos,
        use_cache=True,
        **{_cache_kwarg(decoder): cache},
    ).last_hidden_state
    return torch.cat([first, rest], 1)


def update(sft_dir: str, tasks_dir: str, reps: int) -> dict:
    import torch

    import ops.rl.common as common
    import ops.train.core as core
    from assets.grpo import GRPOConfig
    from assets.posttrain import params
    from ops.posttrain.common import load_policy
    from ops.rewards import parse_specs, with_answer_format
    from ops.rl.grpo import GRPOParams, train_grpo
    from ops.tasks import read_task_set

    tasks = read_task_set(tasks_dir, "train")
    c = GRPOConfig(
        model="m",
        prompts=["p"],
        rewards=["accuracy", "format", {"language": {"weight": 0.1}}],
        steps=1,
        prompts_per_step=64,
        group_size=8,
        lr=5e-5,
        warmup_steps=5,
        beta=0.0,
    )
    specs = with_answer_format(parse_specs(list(c.rewards)), tasks[0].answer_format)
    policy, tok = load_policy(sft_dir)
    ref = load_policy(sft_dir)[0]
    new_fn, res = common._shared_prefix_hidden, {}

    def measure(model, loss_fn, batch_fn, cfg, **kw):
        mb = batch_fn(0, 0).updates[0]
        model.train()
        prm = [q for q in model.parameters() if q.requires_grad]
        runs = {"before": [], "after": []}
        grads = {}
        for i in range(2 * reps):
            name = ("before", "after")[i % 2]
            common._shared_prefix_hidden = _old_shared_prefix_hidden if name == "before" else new_fn
            for q in prm:
                q.grad = None
            w, c0 = time.perf_counter(), time.process_time()
            loss, _ = loss_fn(model, mb)
            loss.backward()
            runs[name].append(
                {
                    "wall_s": time.perf_counter() - w,
                    "cpu_s": time.process_time() - c0,
                    "hash": _hash(q.grad for q in prm),
                }
            )
            grads.setdefault(name, {})[runs[name][-1]["hash"]] = torch.cat([q.grad.flatten() for q in prm])
        common._shared_prefix_hidden = new_fn
        res["samples"] = len(mb["samples"])
        # each distinct gradient of the old path against the (single) gradient of the new one
        after = next(iter(grads["after"].values()))
        res["max_abs_grad_diff_before_vs_after"] = {
            h: float((g - after).abs().max()) for h, g in grads["before"].items()
        }
        for name, rs in runs.items():
            res[name] = {
                "reps": len(rs),
                "distinct_gradients": len({r["hash"] for r in rs}),
                "median_wall_s": statistics.median(r["wall_s"] for r in rs),
                "median_cpu_s": statistics.median(r["cpu_s"] for r in rs),
                "runs": rs,
            }
        res["cpu_ratio_after_over_before"] = res["after"]["median_cpu_s"] / res["before"]["median_cpu_s"]
        res["wall_ratio_after_over_before"] = res["after"]["median_wall_s"] / res["before"]["median_wall_s"]

    core_train, core.train = core.train, measure
    try:
        train_grpo(
            policy, ref, tok, tasks, specs, params(GRPOParams, c), log=lambda s: None, keep_rollouts=False
        )
    finally:
        core.train = core_train
    return res


def main(argv: list[str]) -> None:
    import os

    import torch

    args, opts = [a for a in argv if not a.startswith("--")], {}
    for a in argv:
        if a.startswith("--"):
            k, v = a[2:].split("=")
            opts[k] = float(v)
    out_dir, sft_dir, tasks_dir = args
    torch.set_num_threads(2)
    t0 = time.time()
    res = {
        "sft_dir": sft_dir,
        "tasks_dir": tasks_dir,
        "torch": torch.__version__,
        "minimal_threads": 2,
        "load_avg_start": os.getloadavg(),
    }
    res["minimal"] = minimal(opts.get("seconds", 10))
    threads = int(opts.get("update-threads", 2))
    torch.set_num_threads(threads)
    res["update_threads"] = threads
    res["grpo_update"] = update(sft_dir, tasks_dir, int(opts.get("reps", 6)))
    res["load_avg_end"], res["wall_s"] = os.getloadavg(), time.time() - t0
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    name = "grpo_thread_determinism" + ("" if threads == 2 else f"_{threads}t")
    (Path(out_dir) / f"{name}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res["grpo_update"].items() if k not in ("before", "after")}, indent=1))
    print({k: (v["reps"], v["distinct"]) for k, v in res["minimal"].items()})


if __name__ == "__main__":
    main(sys.argv[1:])
