"""What the SFT batch levers save on the default cold start: CPU seconds per training step of the padded forward
with a per-step shuffle against the length-sorted groups with a per-epoch shuffle, in one process.

``python -m experiments.sft_speed OUT_JSON BASE_DIR PROBLEMS_DIR [--steps 20] [--rounds 4] [--threads 1] [--groups 3]``

BASE_DIR is a model artifact (the default home's ``base``), PROBLEMS_DIR a tasks artifact (its ``problems``).
Each round trains two blocks of ``--steps`` steps of the pipeline's ``cold_sft`` recipe (64 examples a step,
lr 2e-3, wsd schedule) from a fresh copy of the same base, one per variant, in alternating order (old, new;
new, old; ...), so a load change on a shared machine falls on both; each block's CPU seconds per step come
from ``time.process_time`` (the process's own CPU, not wall time), over the whole ``ops.train.core.train``
call: batch building, forward, backward, clipping, the optimizer step. Variants:

* ``old``: ``labelled_logits`` with ``length_groups=0`` (one forward over the batch padded to its longest row,
  with the padding mask) and the epoch's permutation shuffled from scratch at every step;
* ``new``: ``--groups`` length groups (``ops.posttrain.sft.LENGTH_GROUPS``) and the permutation shuffled once per
  epoch (what ``epoch_batches`` does).

Reported: per-step seconds of each block, the per-round ratio new / old and its median, and the last loss of
each block (the variants are the same function up to float rounding, so the losses agree closely).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("base")
    ap.add_argument("problems")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--groups", type=int, default=3, help="length groups of the new variant")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    from ops.posttrain import common, sft
    from ops.posttrain.common import examples_from_artifact, load_policy
    from ops.train.core import train
    from ops.train.optim import OptimConfig, train_config

    examples = examples_from_artifact("tasks", Path(a.problems), "train")
    base, tok = load_policy(a.base)
    p = sft.SFTParams(steps=800, lr=2e-3, batch_size=64, optim=OptimConfig(schedule="wsd"))
    cached, groups, default_groups = common._epoch_permutation, a.groups, sft.LENGTH_GROUPS

    def use(variant: str) -> None:
        sft.LENGTH_GROUPS = 0 if variant == "old" else groups
        common._epoch_permutation = cached.__wrapped__ if variant == "old" else cached

    res: dict[str, list] = {"old": [], "new": []}
    last: dict[str, list] = {"old": [], "new": []}
    try:
        for r in range(a.rounds):
            for variant in ("old", "new") if r % 2 == 0 else ("new", "old"):
                use(variant)
                batch_fn, _ = sft.make_batches(tok, examples, p)
                cfg = dataclasses.replace(train_config(p, log_every=10_000), steps=a.steps)
                model = copy.deepcopy(base)
                t = time.process_time()
                out = train(model, sft.sft_loss_fn, batch_fn, cfg, progress=False, log=lambda s: None)
                res[variant].append((time.process_time() - t) / a.steps)
                last[variant].append(out.losses[-1])
                print(
                    f"round {r} {variant}: {res[variant][-1]:.4f} CPU s/step, loss {out.losses[-1]:.6f}",
                    flush=True,
                )
    finally:
        sft.LENGTH_GROUPS, common._epoch_permutation = default_groups, cached
    ratios = [n / o for n, o in zip(res["new"], res["old"], strict=True)]
    result = {
        "base": a.base,
        "problems": a.problems,
        "steps_per_block": a.steps,
        "rounds": a.rounds,
        "threads": a.threads,
        "length_groups": groups,
        "old_cpu_s_per_step": res["old"],
        "new_cpu_s_per_step": res["new"],
        "ratios": ratios,
        "median_ratio": statistics.median(ratios),
        "last_loss": last,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("ratios", "median_ratio")}))
    return result


if __name__ == "__main__":
    main()
