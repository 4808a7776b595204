"""Are the cold start's gradients under the length groups and the row-order controls the padded forward's up
to float rounding, on the default recipe's real batches?

``python -m experiments.rounding_probe OUT.json PROBLEMS_DIR LABEL=MODEL_DIR [LABEL=MODEL_DIR ...] [--steps 4]
[--threads 1]``

At each model (a base, or a trained cold start) and each of the cold start's first ``--steps`` batches (the
``sft`` kind's batches with the default's cold_sft settings: 64 rows, seed 0), the SFT loss's gradient over
every weight is computed in fp32 by four forwards of the same function: ``padded`` (the one padded forward),
``grouped`` (3 length groups, ``ops.posttrain.common.labelled_logits``), ``flip`` and ``roll`` (the padded
forward with the rows reversed or rolled by half, ``experiments.cold_start_seeds.reorder_rows``), and once in
fp64 by the padded forward as the reference. Per arm: the loss's and the gradient's relative error against
fp64 (L2 over all weights, and the largest per-tensor one), and the cosine to it; the same for the gradient of
the loss on the longest third of the rows alone (the group the length groups cut least). An arm whose errors
are of the padded forward's size computes the same function; one far above it has a systematic difference.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ARMS = ("padded", "grouped", "flip", "roll")


def _grad(model, batch: dict, arm: str) -> tuple[float, dict]:
    from experiments.cold_start_seeds import reorder_rows
    from ops.losses import sft_loss
    from ops.posttrain.common import labelled_logits

    model.zero_grad(set_to_none=True)
    if arm in ("flip", "roll"):
        batch = reorder_rows(batch, arm)
    logits, labels = labelled_logits(model, batch, length_groups=3 if arm == "grouped" else 0)
    loss = sft_loss(logits, labels)[0]
    loss.backward()
    return float(loss), {n: q.grad.detach().double().clone() for n, q in model.named_parameters()}


def _errors(g: dict, ref: dict) -> dict:
    import torch

    num = sum(float(((g[n] - ref[n]) ** 2).sum()) for n in ref)
    den = sum(float((ref[n] ** 2).sum()) for n in ref)
    dot = sum(float((g[n] * ref[n]).sum()) for n in ref)
    gn = sum(float((g[n] ** 2).sum()) for n in ref)
    norm = torch.linalg.vector_norm
    per = {n: float(norm(g[n] - ref[n])) / max(float(norm(ref[n])), 1e-30) for n in ref}
    worst = max(per, key=per.get)
    return {
        "rel_l2": (num / den) ** 0.5,
        "cos": dot / (gn * den) ** 0.5,
        "max_tensor_rel": per[worst],
        "max_tensor": worst,
    }


def longest_third(batch: dict) -> dict:
    """``batch`` with labels kept only on its longest third of rows (by attention length)."""
    import torch

    from ops.losses import IGNORE

    lengths = batch["attention_mask"].sum(1)
    n = len(lengths)
    keep = torch.argsort(lengths, stable=True)[n - n // 3 :]
    labels = torch.full_like(batch["labels"], IGNORE)
    labels[keep] = batch["labels"][keep]
    return {**batch, "labels": labels}


def probe(model_dir: Path, problems_dir: Path, steps: int) -> list[dict]:
    from experiments.cold_start_seeds import COLD_SFT
    from ops.posttrain.common import examples_from_artifact, load_policy
    from ops.posttrain.sft import SFTParams, make_batches

    model, tok = load_policy(model_dir)
    model.train()
    ref_model = copy.deepcopy(model).double()
    p = SFTParams(steps=COLD_SFT["steps"], batch_size=COLD_SFT["batch_size"], seed=COLD_SFT["sft_seed"])
    batch_fn, _ = make_batches(tok, examples_from_artifact("tasks", problems_dir), p)
    rows = []
    for step in range(steps):
        full = {k: v for k, v in batch_fn(step, 0).items() if k != "index"}
        for part, batch in (("all rows", full), ("longest third", longest_third(full))):
            loss64, g64 = _grad(ref_model, batch, "padded")
            norm64 = sum(float((x**2).sum()) for x in g64.values()) ** 0.5
            row = {"step": step, "rows": part, "loss_fp64": loss64, "grad_norm_fp64": norm64}
            grads = {}
            for arm in ARMS:
                loss, grads[arm] = _grad(model, batch, arm)
                row[arm] = {"loss_rel": abs(loss - loss64) / loss64, **_errors(grads[arm], g64)}
            for a in ("grouped", "flip"):  # the arms against the padded forward, both in fp32
                row[f"{a}_vs_padded_rel_l2"] = _errors(grads[a], grads["padded"])["rel_l2"]
            rows.append(row)
            brief = {k: (v["rel_l2"] if isinstance(v, dict) else v) for k, v in row.items()}
            print(json.dumps(brief), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("problems")
    ap.add_argument("models", nargs="+", help="LABEL=MODEL_DIR")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    res = {"steps": a.steps, "threads": a.threads, "models": {}}
    for label, d in (kv.split("=", 1) for kv in a.models):
        res["models"][label] = {"dir": d, "rows": probe(Path(d), Path(a.problems), a.steps)}
    res["summary"] = {
        label: {
            part: {arm: max(r[arm]["rel_l2"] for r in m["rows"] if r["rows"] == part) for arm in ARMS}
            for part in ("all rows", "longest third")
        }
        for label, m in res["models"].items()
    }
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res["summary"], indent=1))


if __name__ == "__main__":
    main()
