"""Two 1-thread ranks (DDP over gloo, half the batch each) against one process at 1 or 2 threads, on the
default ``cold_sft`` step: does data parallelism use the 2 cores better than torch's intra-op threads?

``python -m experiments.sft_ranks_probe OUT_JSON HOME [--steps 14] [--warmup 3] [--rounds 2]``

HOME is a default home (``make demo``); ``base`` and ``problems`` are found by stage name. The loop is a bare
one, the same in every arm: the rows of the step's batch (``epoch_batches``, batch 64), collated, the SFT loss
over length groups (``labelled_logits``, ``LENGTH_GROUPS``), AdamW, gradient clipping at 1. Arms:
``t1`` (one process, 1 thread, the whole batch), ``t2`` (one process, 2 threads, the whole batch) and
``ddp2`` (two processes at 1 thread, rank r the rows ``r::2``, gradients averaged by DDP). Each arm runs in
fresh processes; the median wall time of a step after the warm-up is reported per arm and round, with the
ratios of medians against ``t2``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ARMS = {"t1": (1, 1), "t2": (1, 2), "ddp2": (2, 1)}  # arm: (processes, threads each)


def _worker(rank: int, world: int, threads: int, home: str, steps: int, warmup: int, port: int, out: str):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    if world > 1:
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
        dist.init_process_group("gloo", rank=rank, world_size=world)
    from experiments.precision_speed import stage_dirs
    from ops.losses import sft_loss
    from ops.posttrain import sft
    from ops.posttrain.common import (
        collate,
        epoch_batches,
        examples_from_artifact,
        labelled_logits,
        load_policy,
    )

    dirs = stage_dirs(Path(home))
    model, tok = load_policy(dirs["base"])
    p = sft.SFTParams(steps=800, lr=2e-3, batch_size=64)
    units, pad, _ = sft.sft_units(tok, examples_from_artifact("tasks", dirs["problems"], "train"), p)
    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for step in range(warmup + steps):
        t = time.perf_counter()
        idx = epoch_batches(len(units), p.batch_size, step, p.seed)
        batch = collate([units[i] for i in idx[rank::world]], pad)
        logits, labels = labelled_logits(net, batch, length_groups=sft.LENGTH_GROUPS)
        loss, _ = sft_loss(logits, labels)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t)
    if rank == 0:
        Path(out).write_text(json.dumps({"step_s": statistics.median(times[warmup:]), "load1": os.getloadavg()[0]}))
    if world > 1:
        dist.destroy_process_group()


def run_arm(arm: str, a: argparse.Namespace, port: int) -> dict:
    import tempfile

    import torch.multiprocessing as mp

    world, threads = ARMS[arm]
    with tempfile.TemporaryDirectory() as d:
        out = str(Path(d) / "r.json")
        mp.spawn(_worker, args=(world, threads, a.home, a.steps, a.warmup, port, out), nprocs=world)
        return {"arm": arm, **json.loads(Path(out).read_text())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("home")
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    rounds = []
    for r in range(a.rounds):
        row = {arm: run_arm(arm, a, 29500 + 10 * r + i) for i, arm in enumerate(ARMS)}
        print(r, json.dumps(row), flush=True)
        rounds.append(row)
    med = {arm: statistics.median(rd[arm]["step_s"] for rd in rounds) for arm in ARMS}
    result = {
        "home": a.home,
        "steps": a.steps,
        "warmup": a.warmup,
        "rounds": rounds,
        "median_step_s": med,
        "speedup_vs_t2": {arm: med["t2"] / med[arm] for arm in ARMS},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["speedup_vs_t2"]))
    return result


if __name__ == "__main__":
    main()
