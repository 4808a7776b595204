"""The start of the s1 study scored alone: a checkpoint (no fine-tuning) on the held-out problems
``experiments.s1_wait`` scores its arms on, with the same budget and forced-Wait sweeps.

``python -m experiments.s1_start_score OUT.json START_MODEL [--budgets 8,16,24,32,48,64 --n-eval 1000]``

Key design choice: the held-out items are drawn exactly as ``s1_wait.run`` draws them (seed 11, training
difficulties 2-3 excluded, evaluation difficulty 3), so every arm's per-item results pair with these.
"""

from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("start")
    ap.add_argument("--budgets", default="8,16,24,32,48,64")
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--n-train", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args(argv)

    import torch

    from experiments.s1_wait import score
    from ops.eval.budget import check_sweep
    from ops.posttrain.common import load_policy
    from ops.tasks import make_splits

    torch.set_num_threads(1)
    budgets = check_sweep("budgets", [int(b) for b in a.budgets.split(",")], 0, "tokens")
    train, _ = make_splits(a.n_train, 0, a.seed, [2, 3])
    _, ev = make_splits(0, a.n_eval, a.seed, [3], exclude={t.question for t in train})
    model, tok = load_policy(a.start)
    model.eval()
    r = score(model, tok, ev, budgets, 256, "start", log=lambda m: None)
    r.pop("per_item")
    r.pop("completions")
    out = {"start": a.start, "n_eval": a.n_eval, "eval_difficulties": [3], "seed": a.seed, **r}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(r["unbudgeted"], r["wait_effect"], [(b["budget"], b["accuracy"]) for b in r["budget_curve"]])


if __name__ == "__main__":
    main()
