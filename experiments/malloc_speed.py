"""What the allocator set-up (``ops.train.malloc``) saves on the default pipeline's own CPU work, and that it
changes no number: pretraining (``base``), the cold start (``cold_sft``) and GRPO (``rl1``) steps, each arm
in a fresh process.

``python -m experiments.malloc_speed OUT_JSON HOME [--rounds 3] [--threads 2] [--work pretrain,sft,grpo]``

HOME is a default home (``make demo``); its artifacts are found by stage name. Arms: ``default`` (glibc's own
thresholds, ``LMFORGE_MALLOC_TUNING=0``) and ``tuned`` (:func:`ops.train.malloc.tune_malloc` at start). Each
round runs every arm once, in rotated order, so a change of load falls on both. Per child: ``pretrain`` and
``sft`` run the stage's step (``experiments.precision_speed``'s builders) for 5 warm-up + 40 steps and report
the median wall seconds per step after the warm-up; ``grpo`` runs the first 8 steps of ``rl1``'s settings
from ``cold_sft`` on ``rl_prompts`` and reports their wall seconds. Every child also reports its losses (and
GRPO's rewards), which must be identical across arms, and its minor page faults.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ARMS = ("default", "tuned")
WORK = ("pretrain", "sft", "grpo")


def _core_steps(work: str, dirs: dict, warmup: int = 5, steps: int = 40) -> dict:
    import copy

    from experiments.precision_speed import WORK as BUILDERS
    from ops.train.core import TrainConfig, train

    model, loss_fn, batch_fn, cfg = BUILDERS[work](dirs)
    marks: list[float] = []
    tc = TrainConfig(steps=warmup + steps, log_every=10_000, precision="fp32", **cfg)
    out = train(copy.deepcopy(model), loss_fn, batch_fn, tc, progress=False, log=lambda s: None,
                on_step=lambda done, rec: marks.append(time.perf_counter()))
    wall = [b - a for a, b in zip(marks, marks[1:])][warmup - 1 :]
    return {"s_per_step": statistics.median(wall), "losses": out.losses}


def _grpo_steps(dirs: dict, steps: int = 8) -> dict:
    import copy

    import torch

    from ops.posttrain.common import load_policy
    from ops.rewards import parse_specs
    from ops.rl.grpo import GRPOParams, train_grpo
    from ops.tasks import read_tasks

    start, tok = load_policy(dirs["cold_sft"])
    prompts = read_tasks(dirs["rl_prompts"] / "train.parquet")
    specs = parse_specs(["accuracy", "format", {"language": {"weight": 0.1}}])
    p = GRPOParams(steps=steps, prompts_per_step=64, group_size=8, lr=5e-5, warmup_steps=5, beta=0.0, seed=0)
    pol = copy.deepcopy(start).train().requires_grad_(True)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    st = train_grpo(pol, copy.deepcopy(start), tok, prompts, specs, p, log=lambda s: None, keep_rollouts=False)
    return {"s": time.perf_counter() - t0, "rewards": [r["reward"] for r in st.history if r["step"] > 0]}


def child(arm: str, work: str, home: Path, threads: int) -> dict:
    import resource

    from ops.train.malloc import tune_malloc

    applied = tune_malloc() if arm == "tuned" else None
    import torch

    from experiments.precision_speed import stage_dirs

    torch.set_num_threads(threads)
    dirs = stage_dirs(home)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out = _grpo_steps(dirs) if work == "grpo" else _core_steps(work, dirs)
    return {"arm": arm, "work": work, "applied": applied, "load1": os.getloadavg()[0],
            "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0, **out}


def _spawn(arm: str, work: str, home: Path, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["LMFORGE_MALLOC_TUNING"] = "1" if arm == "tuned" else "0"
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "experiments.malloc_speed", "--child", arm, work, str(home), str(threads)]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        print(json.dumps(child(argv[1], argv[2], Path(argv[3]), int(argv[4]))))
        return {}
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("home", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=",".join(WORK))
    a = ap.parse_args(argv)
    works = [w for w in a.work.split(",") if w]
    runs: list[dict] = []
    for r in range(a.rounds):
        order = list(ARMS[r % 2 :] + ARMS[: r % 2])
        for work in works:
            for arm in order:
                rec = {"round": r, **_spawn(arm, work, a.home, a.threads)}
                print(json.dumps({k: v for k, v in rec.items() if k not in ("losses", "rewards")}), flush=True)
                runs.append(rec)
    summary = {}
    for work in works:
        key = "s" if work == "grpo" else "s_per_step"
        med = {arm: statistics.median(x[key] for x in runs if x["work"] == work and x["arm"] == arm) for arm in ARMS}
        results = {json.dumps(x.get("losses") or x.get("rewards")) for x in runs if x["work"] == work}
        summary[work] = {"median_" + key: med, "speedup": med["default"] / med["tuned"],
                         "same_numbers_in_every_run": len(results) == 1}
    doc = {"home": str(a.home), "threads": a.threads, "rounds": a.rounds, "summary": summary, "runs": runs}
    Path(a.out).write_text(json.dumps(doc, indent=1))
    print(json.dumps(summary, indent=1))
    return doc


if __name__ == "__main__":
    main()
