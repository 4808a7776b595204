"""Does the teacher-logit cache change the default pipeline's distillation? The ``student`` stage's training,
once with the cache and once with the teacher run on every batch, from the same pruned student.

``python -m experiments.distill_cache_paired OUT TEACHER_DIR RS_DIR TASKS_DIR [steps] [threads]``: the data
are RS_DIR's verified samples then TASKS_DIR's solutions, the first 1274 (the stage's ``max_examples``); the
student is TEACHER_DIR pruned to d_model 96 / ffn 128 by importance on its first 8 batches (the stage's
``prune``); logit KD at T=2, alpha 0.5, batch 64, lr 2e-3 (``ops.posttrain.distill.train_distill``). Reported:
whether every step's loss and the final weights are bit-identical, and each arm's wall and process CPU
seconds (the cached arm's include building the cache). Written to ``OUT/distill_cache_paired.json``.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> dict:
    import torch

    import ops.posttrain.distill as D
    from ops.posttrain.common import examples_from_artifact, load_policy
    from ops.posttrain.prune import importance_on, prune
    from ops.posttrain.sft import SFTParams

    out, teacher_dir, rs_dir, tasks_dir = (Path(a) for a in argv[:4])
    steps = int(argv[4]) if len(argv) > 4 else 300
    threads = int(argv[5]) if len(argv) > 5 else 1
    torch.set_num_threads(threads)
    teacher, tok = load_policy(teacher_dir)
    ex = (
        examples_from_artifact("sft_data", rs_dir, "train")
        + examples_from_artifact("tasks", tasks_dir, "train")
    )[:1274]
    sp = SFTParams(steps=steps, lr=2e-3, batch_size=64)
    student0, _ = prune(teacher, importance_on(teacher, tok, ex, sp, 8), d_model=96, ffn=128)
    keep = D.CACHE_MAX_BYTES
    arms = {}
    for arm in ("cached", "plain"):
        D.CACHE_MAX_BYTES = keep if arm == "cached" else 0
        st = copy.deepcopy(student0)
        t0, c0 = time.perf_counter(), time.process_time()
        info = D.train_distill(
            st, teacher, tok, ex, D.DistillParams("logit", 2.0, 0.5, sp), work_dir=None, log=lambda s: None
        )
        arms[arm] = {
            "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1),
            "cached": info["teacher_logits_cached"],
            "final_loss": info["losses"][-1],
            "losses": info["losses"],
            "weights": [p.detach().clone() for p in st.parameters()],
        }
    D.CACHE_MAX_BYTES = keep
    a, b = arms["cached"], arms["plain"]
    res = {
        "steps": steps,
        "threads": threads,
        "examples": len(ex),
        "losses_bit_identical": a["losses"] == b["losses"],
        "weights_bit_identical": all(torch.equal(x, y) for x, y in zip(a["weights"], b["weights"])),
        **{f"{k}_{f}": arms[k][f] for k in arms for f in ("wall_s", "cpu_s", "cached", "final_loss")},
        "cpu_saving": round(1 - a["cpu_s"] / b["cpu_s"], 3),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "distill_cache_paired.json").write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
