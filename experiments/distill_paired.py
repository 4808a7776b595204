"""Does logit distillation beat SFT on the same data? A paired experiment over seeds, from a stored teacher.

``python -m experiments.distill_paired OUT TEACHER_DIR TASKS_DIR [steps] [seeds] [STUDENT_INIT_DIR | prune:K=V,...]
[EXTRA_DATA_DIR ...]``: for each seed, the same student (randomly initialised with that seed, loaded from
STUDENT_INIT_DIR, a smaller pretrained model, or pruned from the teacher with importance
measured on that seed's first batches, e.g. ``prune:d_model=96,ffn=128`` as the default pipeline's
``student``; at most half the teacher's parameters) is trained twice on the tasks' training split
(``train_on_tasks=False`` leaves it out, ``max_tasks`` keeps its first rows) plus any EXTRA_DATA_DIR (an
``sft.parquet`` of a rejection_sample stage) with the distill stage's code (``ops.posttrain.distill.train_distill``):
once with logit KD (KL on temperature-softened distributions x T^2, mixed 50/50 with cross-entropy), once
with ``alpha=0`` (plain SFT, the only difference). Both are scored greedily on the tasks' held-out split, as
is the teacher. Reported: per-seed accuracies, the paired gain KD - SFT with its standard error over seeds,
and the share of the teacher's accuracy the KD student keeps (mean over seeds). Results go to
``OUT/distill_paired.json`` after every seed, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from ops.eval.metrics import mean_se

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STUDENT = {"arch": "qwen2", "d_model": 96, "layers": 2, "heads": 4, "kv_heads": 2}


def run(
    out_dir: Path | str,
    teacher_dir: Path | str,
    tasks_dir: Path | str,
    steps: int = 600,
    seeds: int = 3,
    n_eval: int = 300,
    student: dict | None = None,
    temperature: float = 2.0,
    alpha: float = 0.5,
    lr: float = 3e-3,
    batch_size: int = 64,
    student_init: Path | str | None = None,
    prune: dict | None = None,
    extra_data: list[Path | str] = (),
    train_on_tasks: bool = True,
    max_tasks: int | None = None,
) -> dict:
    import torch

    from ops.model import build_model, count_params
    from ops.posttrain.common import examples_from_artifact, load_policy, task_accuracy
    from ops.posttrain.distill import DistillParams, train_distill
    from ops.posttrain.prune import importance_on
    from ops.posttrain.prune import prune as prune_model
    from ops.posttrain.sft import SFTParams
    from ops.tasks import read_tasks

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arch = dict(student or STUDENT)
    teacher, tok = load_policy(teacher_dir)
    train_ex = examples_from_artifact("tasks", Path(tasks_dir))[:max_tasks] if train_on_tasks else []
    for d in extra_data:
        train_ex += examples_from_artifact("sft_data", Path(d))
    ev = read_tasks(Path(tasks_dir) / "eval.parquet")[:n_eval]
    t_acc = task_accuracy(teacher, tok, ev)["accuracy"]
    res: dict = {
        "teacher": str(teacher_dir),
        "tasks": str(tasks_dir),
        "teacher_params": count_params(teacher),
        "teacher_accuracy": t_acc,
        "student_arch": arch if student_init is None and prune is None else None,
        "student_init": str(student_init) if student_init else None,
        "prune": prune,
        "extra_data": [str(d) for d in extra_data],
        "train_on_tasks": train_on_tasks,
        "max_tasks": max_tasks,
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "temperature": temperature,
        "alpha": alpha,
        "train_examples": len(train_ex),
        "eval_problems": len(ev),
        "threads": torch.get_num_threads(),
        "runs": [],
    }
    for seed in range(seeds):
        row: dict = {"seed": seed}
        sp = SFTParams(steps=steps, lr=lr, batch_size=batch_size, seed=seed, warmup_steps=20)
        if prune:
            imp = importance_on(teacher, tok, train_ex, sp)
        for name, a in (("kd", alpha), ("sft", 0.0)):
            if prune:
                st, _ = prune_model(teacher, imp, **prune)
            elif student_init:
                st, _ = load_policy(student_init)
            else:
                st = build_model(
                    arch, len(tok), seed=seed, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
                )
            res["student_params"] = count_params(st)
            if 2 * res["student_params"] > res["teacher_params"]:
                raise ValueError(f"student {res['student_params']} params is more than half the teacher's")
            t0 = time.time()
            info = train_distill(
                st,
                teacher,
                tok,
                train_ex,
                DistillParams("logit", temperature, a, sp),
                work_dir=None,
                log=lambda s: None,
            )
            row[name] = task_accuracy(st, tok, ev)["accuracy"]
            row[f"{name}_final_loss"] = info["losses"][-1]
            row[f"{name}_s"] = round(time.time() - t0, 1)
        res["runs"].append(row)
        gains = [r["kd"] - r["sft"] for r in res["runs"]]
        res["mean_gain"], res["se_gain"] = mean_se(gains)
        res["kd_mean"] = statistics.mean(r["kd"] for r in res["runs"])
        res["sft_mean"] = statistics.mean(r["sft"] for r in res["runs"])
        res["kd_kept_of_teacher"] = res["kd_mean"] / t_acc if t_acc > 0 else None
        res["gain_above_2se"] = res["se_gain"] is not None and res["mean_gain"] > 2 * res["se_gain"]
        (out / "distill_paired.json").write_text(json.dumps(res, indent=1))
        print(json.dumps(row), flush=True)
    return res


if __name__ == "__main__":
    a = sys.argv[1:]
    init = a[5] if len(a) > 5 else None
    pr = None
    if init and init.startswith("prune:"):
        pr = {k: int(v) for k, v in (kv.split("=") for kv in init[len("prune:") :].split(","))}
        init = None
    r = run(a[0], a[1], a[2], *(int(x) for x in a[3:5]), student_init=init, prune=pr, extra_data=a[6:])
    print(json.dumps({k: v for k, v in r.items() if k != "runs"}, indent=1))
