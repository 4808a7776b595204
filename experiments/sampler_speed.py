"""What the inverse-CDF sampler saves against ``torch.multinomial``: CPU seconds per sampler call, per decode
step and per GRPO step on the default pipeline's own policy, the two samplers alternating in one process.

``python -m experiments.sampler_speed OUT_JSON MODEL_DIR TASKS_DIR [--rounds 4] [--threads 1] [--decode-steps 24]
[--grpo-steps 3] [--prompts 64] [--group 8]``

MODEL_DIR is a model artifact (the default home's ``cold_sft``, rl1's start), TASKS_DIR a tasks artifact (its
``rl_prompts``). The ``old`` sampler is ``ops.generate.sample_next`` as it was before the change (``torch.multinomial``
on the [B, V] probabilities: one exponential draw per entry), kept here verbatim; ``new`` is the current one
(``ops.generate.draw_categorical``: one uniform per row). Each round times both, in alternating order (old, new;
new, old; ...), with ``time.process_time`` (this process's CPU, not wall time):

* ``sampler``: one ``sample_next`` call on the [B, V] logits of the first decode step of ``--prompts`` rl1
  prompts x ``--group`` (B = 512 at the defaults; V is the model's vocabulary), at T=1 and at top-p 0.9;
* ``decode``: ``ops.generate.sample`` on those B rows with no stop token, so both samplers run exactly
  ``--decode-steps`` decode steps of the same shapes: CPU per decode step (prefill included, once);
* ``grpo``: ``--grpo-steps`` steps of ``ops.rl.grpo.train_grpo`` with rl1's settings (rewards accuracy, format,
  0.1 language; group 8; 64 new tokens; T=1; lr 5e-5, no KL term) from a fresh copy of the policy, seeds equal:
  CPU per step and the generation's share. The two samplers draw different tokens (the same distribution), so
  the completions' mean length is reported beside each block.

Reported: per-round figures of each variant, the per-round ratio new / old and its median.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def multinomial_sample_next(
    logits: Any, temperature: float, top_p: float, generator: Any = None
) -> tuple[Any, Any]:
    """``ops.generate.sample_next`` before the inverse-CDF sampler (commit 408cb2c), for the ``old`` variant."""
    import torch

    logits = logits.float()
    if temperature <= 0:
        ids = logits.argmax(-1)
        return ids, torch.log_softmax(logits, -1).gather(-1, ids[:, None]).squeeze(-1)
    logp = torch.log_softmax(logits / temperature, -1)
    probs = logp.exp()
    if top_p < 1.0:
        sp, si = probs.sort(-1, descending=True)
        cum = sp.cumsum(-1)
        drop = (cum - sp) >= top_p
        sp = sp.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, si, sp)
    ids = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return ids, logp.gather(-1, ids[:, None]).squeeze(-1)


REPS = 10  # sampler calls per timed block


def _cpu(fn) -> tuple[float, Any]:
    t = time.process_time()
    out = fn()
    return time.process_time() - t, out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("model")
    ap.add_argument("tasks")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--decode-steps", type=int, default=24)
    ap.add_argument("--grpo-steps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--group", type=int, default=8)
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    import ops.generate as G
    from ops.posttrain.common import load_policy
    from ops.rewards import parse_specs
    from ops.rl.grpo import GRPOParams, train_grpo
    from ops.tasks import read_tasks

    current = G.sample_next
    variants = {"old": multinomial_sample_next, "new": current}
    policy, tok = load_policy(a.model)
    policy.eval()
    tasks = read_tasks(Path(a.tasks) / "train.parquet")
    rows = [p for p in G.chat_prompts(tok, [t.question for t in tasks[: a.prompts]]) for _ in range(a.group)]
    ids, mask = G._left_pad(rows, G.pad_token_id(tok), torch.device("cpu"))
    with torch.inference_mode():
        logits = policy(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1].float()
    specs = parse_specs(["accuracy", "format", {"language": {"weight": 0.1}}])
    gp = GRPOParams(
        steps=a.grpo_steps, prompts_per_step=a.prompts, group_size=a.group, lr=5e-5, warmup_steps=5, beta=0.0
    )

    res: dict[str, dict[str, list]] = {v: {} for v in variants}

    def put(v: str, k: str, x: float) -> None:
        res[v].setdefault(k, []).append(x)

    try:
        for r in range(a.rounds):
            for v in ("old", "new") if r % 2 == 0 else ("new", "old"):
                G.sample_next = variants[v]
                for name, top_p in (("sampler_t1_s", 1.0), ("sampler_top_p09_s", 0.9)):
                    g = torch.Generator().manual_seed(r)
                    s, _ = _cpu(
                        lambda top_p=top_p, g=g: [G.sample_next(logits, 1.0, top_p, g) for _ in range(REPS)]
                    )
                    put(v, name, s / REPS)
                s, _ = _cpu(
                    lambda r=r: G.sample(
                        policy,
                        rows,
                        max_new_tokens=a.decode_steps,
                        stop_ids=[],
                        pad_id=G.pad_token_id(tok),
                        temperature=1.0,
                        seed=r,
                        batch_size=len(rows),
                    )
                )
                put(v, "decode_step_s", s / a.decode_steps)
                pol = copy.deepcopy(policy).train().requires_grad_(True)
                torch.manual_seed(r)
                s, st = _cpu(
                    lambda pol=pol: train_grpo(
                        pol, policy, tok, tasks, specs, gp, log=lambda s: None, keep_rollouts=False
                    )
                )
                h = [x for x in st.history if x["step"] > 0]
                put(v, "grpo_step_s", s / a.grpo_steps)
                put(v, "grpo_gen_share_wall", sum(x["gen_s"] for x in h) / sum(x["step_s"] for x in h))
                put(v, "grpo_completion_tokens", statistics.mean(x["completion_tokens"] for x in h))
                put(v, "grpo_reward", statistics.mean(x["reward"] for x in h))
                print(
                    f"round {r} {v}: " + ", ".join(f"{k} {x[-1]:.4f}" for k, x in res[v].items()), flush=True
                )
    finally:
        G.sample_next = current
    keys = ["sampler_t1_s", "sampler_top_p09_s", "decode_step_s", "grpo_step_s"]
    ratios = {k: [n / o for n, o in zip(res["new"][k], res["old"][k], strict=True)] for k in keys}
    result = {
        "model": a.model,
        "tasks": a.tasks,
        "rows": len(rows),
        "vocab": int(logits.shape[-1]),
        "rounds": a.rounds,
        "threads": a.threads,
        "decode_steps": a.decode_steps,
        "grpo_steps_per_block": a.grpo_steps,
        "old": res["old"],
        "new": res["new"],
        "ratios": ratios,
        "median_ratio": {k: statistics.median(x) for k, x in ratios.items()},
        "load_avg": list(__import__("os").getloadavg()),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["median_ratio"]))
    return result


if __name__ == "__main__":
    main()
