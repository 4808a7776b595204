"""What bf16 autocast and torch.compile save per training step on the default pipeline's own CPU work:
pretraining (``base``), the cold start (``cold_sft``) and logit distillation (``student``).

``python -m experiments.precision_speed OUT_JSON HOME [--stages pretrain,sft,distill] [--arms fp32,bf16]
[--steps 15] [--warmup 3] [--rounds 4] [--threads 2]``

HOME is a default home (``make demo``); its artifacts are found by stage name (manifest ``stage``):
``tokens``, ``tokenizer``, ``base``, ``problems``, ``tasks``, and for distillation ``rl2`` (teacher) and
``rs`` (data; the tasks' solutions alone when it is not there yet). Each stage's step is built the way its
stage builds it:

* ``pretrain``: a fresh d128/4-layer Qwen2 (the tokenizer's vocabulary), ``ops.train.lm.lm_loss`` on batches
  of 32 random 64-token windows of ``tokens`` (``make_batch_fn``), lr 2e-3, weight decay 0.1;
* ``sft``: ``base`` on ``problems``' worked solutions, ``ops.posttrain.sft.sft_loss_fn`` (labelled positions
  only, length groups), batch 64, lr 2e-3, wsd, as ``cold_sft``;
* ``distill``: the teacher pruned to d_model 96 / ffn 128 by activations (``ops.posttrain.prune``), logit KD
  at T=2 on the first 1274 examples of ``rs`` + ``tasks``, batch 64, with the teacher's logits cached
  (``train_distill``'s loss when its cache serves every batch).

Arms: ``fp32``, ``bf16`` (``TrainConfig.precision``: CPU bf16 autocast, attention in fp32), ``compile``
(``TrainConfig.compile``; SFT and distillation call the decoder itself, ``labelled_logits``, so it reaches
pretraining only) and ``compile_bf16``. Each round runs one block of ``--warmup + --steps`` steps per arm from a fresh copy of
the same model, arms in rotated order (A B, B A, ...), so a load change on the shared machine falls on every
arm. Per block: wall and process CPU seconds of each step after the warm-up (median), and the first step's
wall time (compilation for the compile arms). Reported per stage: every round's figures, each arm's median
over rounds, and the ratio of medians against ``fp32``; the last training loss of each block (the arms compute
the same function up to rounding). The machine's 1-minute load average is recorded at each block.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ARMS = {
    "fp32": {"precision": "fp32"},
    "bf16": {"precision": "bf16"},
    "compile": {"precision": "fp32", "compile": True},
    "compile_bf16": {"precision": "bf16", "compile": True},
}


def stage_dirs(home: Path) -> dict[str, Path]:
    """Every stored artifact of ``home`` by its stage name (the newest when a stage has several)."""
    found: dict[str, tuple[float, Path]] = {}
    for m in (home / "artifacts").glob("*/*/manifest.json"):
        d = json.loads(m.read_text())
        t = m.stat().st_mtime
        if d.get("partition") or d["stage"] in found and found[d["stage"]][0] > t:
            continue
        found[d["stage"]] = (t, m.parent)
    return {k: v[1] for k, v in found.items()}


def pretrain_work(dirs: dict[str, Path]):
    """``(model, loss_fn, batch_fn, TrainConfig kwargs)`` of the default ``base`` stage."""
    from ops.model import build_model
    from ops.tokenizer import load_tokenizer
    from ops.tokens import TokenStream
    from ops.train.lm import lm_loss, make_batch_fn
    from ops.train.optim import PretrainOptimConfig

    tok = load_tokenizer(dirs["tokenizer"])
    arch = {"arch": "qwen2", "d_model": 128, "layers": 4, "heads": 4, "kv_heads": 2, "max_seq_len": 64}
    model = build_model(arch, len(tok), seed=0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    stream = TokenStream(dirs["tokens"], "train")
    batch_fn = make_batch_fn(stream, batch_size=32, seq_len=64, seed=0, rank=0, world=1, device="cpu")
    cfg = {"lr": 2e-3, "warmup_steps": 30, **PretrainOptimConfig().model_dump()}
    return model, lm_loss, batch_fn, cfg


def sft_work(dirs: dict[str, Path]):
    """The default ``cold_sft`` stage's step from the home's ``base``."""
    from ops.posttrain import sft
    from ops.posttrain.common import examples_from_artifact, load_policy
    from ops.train.optim import OptimConfig

    model, tok = load_policy(dirs["base"])
    examples = examples_from_artifact("tasks", dirs["problems"], "train")
    p = sft.SFTParams(steps=800, lr=2e-3, batch_size=64, optim=OptimConfig(schedule="wsd"))
    batch_fn, _ = sft.make_batches(tok, examples, p)
    cfg = {"lr": p.lr, "warmup_steps": p.warmup_steps, **p.optim.model_dump()}
    return model, sft.sft_loss_fn, batch_fn, cfg


def distill_work(dirs: dict[str, Path]):
    """The default ``student`` stage's step: the pruned teacher, logit KD with cached teacher logits."""
    from ops.losses import kd_loss
    from ops.posttrain.common import examples_from_artifact, labelled_logits, load_policy, to_device
    from ops.posttrain.distill import TeacherLogits
    from ops.posttrain.prune import importance_on, prune
    from ops.posttrain.sft import LENGTH_GROUPS, SFTParams, sft_units, units_batch_fn

    teacher, tok = load_policy(dirs.get("rl2", dirs["base"]))
    examples = examples_from_artifact("sft_data", dirs["rs"]) if "rs" in dirs else []
    examples = (examples + examples_from_artifact("tasks", dirs["tasks"]))[:1274]
    sp = SFTParams(steps=300, lr=2e-3, batch_size=64)
    student, _ = prune(teacher, importance_on(teacher, tok, examples, sp, 8), d_model=96, ffn=128)
    units, pad, _ = sft_units(tok, examples, sp)
    teacher.eval().requires_grad_(False)
    cache = TeacherLogits(teacher, units, pad, sp.batch_size)

    def kd_fn(model, batch):
        b = to_device(batch, "cpu")
        s_logits, labels = labelled_logits(model, b, length_groups=LENGTH_GROUPS)
        loss, st = kd_loss(s_logits, cache.batch(batch["index"]), labels, temperature=2.0, alpha=0.5)
        return loss, {**st, "tokens": batch["tokens"]}

    cfg = {"lr": sp.lr, "warmup_steps": sp.warmup_steps, **sp.optim.model_dump()}
    return student, kd_fn, units_batch_fn(units, pad, sp), cfg


WORK = {"pretrain": pretrain_work, "sft": sft_work, "distill": distill_work}


def block(model, loss_fn, batch_fn, cfg: dict, arm: str, warmup: int, steps: int) -> dict:
    """One training block of ``warmup + steps`` steps of ``arm`` from a fresh copy of ``model``."""
    import torch

    from ops.train.core import TrainConfig, train

    torch._dynamo.reset()
    marks = [(time.perf_counter(), time.process_time())]

    def on_step(done, record):
        marks.append((time.perf_counter(), time.process_time()))

    tc = TrainConfig(steps=warmup + steps, log_every=10_000, **cfg, **ARMS[arm])
    load = os.getloadavg()[0]
    out = train(copy.deepcopy(model), loss_fn, batch_fn, tc, on_step=on_step, progress=False, log=lambda s: None)
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    return {
        "arm": arm,
        "first_step_wall_s": round(wall[0], 3),
        "wall_s_per_step": statistics.median(wall[warmup:]),
        "cpu_s_per_step": statistics.median(cpu[warmup:]),
        "last_loss": out.losses[-1],
        "load1": load,
    }


def measure(stage: str, dirs: dict[str, Path], arms: list[str], a: argparse.Namespace) -> dict:
    model, loss_fn, batch_fn, cfg = WORK[stage](dirs)
    rounds = []
    for r in range(a.rounds):
        order = arms[r % len(arms) :] + arms[: r % len(arms)]
        row = {}
        for arm in order:
            row[arm] = block(model, loss_fn, batch_fn, cfg, arm, a.warmup, a.steps)
            print(stage, r, json.dumps(row[arm]), flush=True)
        rounds.append(row)
    med = {
        arm: {k: statistics.median(rd[arm][k] for rd in rounds) for k in ("wall_s_per_step", "cpu_s_per_step")}
        for arm in arms
    }
    ratios = {
        arm: {k: med["fp32"][k] / med[arm][k] for k in med[arm]} for arm in arms if arm != "fp32" and "fp32" in med
    }
    return {"rounds": rounds, "median": med, "speedup_vs_fp32": ratios}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("home")
    ap.add_argument("--stages", default="pretrain,sft,distill")
    ap.add_argument("--arms", default="fp32,bf16")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    dirs = stage_dirs(Path(a.home))
    arms = a.arms.split(",")
    result: dict = {
        "home": a.home,
        "inputs": {k: str(v) for k, v in sorted(dirs.items())},
        "threads": a.threads,
        "steps_per_block": a.steps,
        "warmup": a.warmup,
        "torch": torch.__version__,
        "stages": {},
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stage in a.stages.split(","):
        result["stages"][stage] = measure(stage, dirs, arms, a)
        out.write_text(json.dumps(result, indent=1))
        print(stage, json.dumps(result["stages"][stage]["speedup_vs_fp32"]), flush=True)
    return result


if __name__ == "__main__":
    main()
