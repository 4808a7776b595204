"""Two cold-start arms, each given as several rounding draws, compared per base and over the items.

``python -m experiments.draw_groups OUT A=SETTING[,SETTING...] B=SETTING[,SETTING...] [--step 800] [--json PATH]``

OUT is an ``experiments.cold_start_seeds`` output directory. Each arm is a list of that study's settings
that train the same recipe and differ only in float rounding (``wsd``, ``wsd_flip``, ``wsd_roll``: the rows
of each batch in another order). Per base that both arms ran, and per arm: each draw's greedy (and sampled)
accuracy at ``--step`` (the default's step axis), their mean and range. Then B - A: per base the difference of
the draw means, and over the items (``ops.eval.metrics.paired_difference``) with each item's correctness
averaged over an arm's draws on a base and then over the bases. A single draw's item-level interval counts the
problems' noise only; averaging draws puts the rounding draw's spread into the comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _load(out: Path, settings: list[str], step: str) -> dict[str, dict[str, dict]]:
    """``{base: {setting: eval at step}}`` for the runs of ``settings`` in ``out/runs``."""
    have: dict[str, dict[str, dict]] = {}
    for s in settings:
        for f in sorted((out / "runs").glob(f"s*_{s}.json")):
            r = json.loads(f.read_text())
            if r.get("setting") == s and step in r.get("evals", {}):
                have.setdefault(str(r["seed"]), {})[s] = r["evals"][step]
    return have


def _item_means(evals: list[dict], key: str | None) -> list[float]:
    items = [e["sampled"]["items"] if key else e["items"] for e in evals]
    return [sum(col) / len(col) for col in zip(*items)]


def compare(out: Path, a: list[str], b: list[str], step: str = "800") -> dict:
    from ops.eval.metrics import paired_difference

    runs = {"A": _load(out, a, step), "B": _load(out, b, step)}
    bases = sorted(set(runs["A"]) & set(runs["B"]))
    res: dict = {"A": a, "B": b, "step": step, "bases": {}, "items": {}}
    for key, name in ((None, "greedy"), ("sampled", "sampled")):
        per_arm_items: dict[str, list[list[float]]] = {"A": [], "B": []}
        for base in bases:
            evals = {
                arm: {n: e for n, e in runs[arm][base].items() if key is None or "sampled" in e}
                for arm in ("A", "B")
            }
            if not (evals["A"] and evals["B"]):
                continue
            row = res["bases"].setdefault(base, {})
            means = {}
            for arm in ("A", "B"):
                accs = {
                    n: (e["sampled"]["accuracy"] if key else e["accuracy"]) for n, e in evals[arm].items()
                }
                means[arm] = sum(accs.values()) / len(accs)
                row.setdefault(arm, {})[name] = {
                    "draws": accs,
                    "mean": means[arm],
                    "range": max(accs.values()) - min(accs.values()),
                }
                per_arm_items[arm].append(_item_means(list(evals[arm].values()), key))
            row[f"diff_{name}"] = means["B"] - means["A"]
        n = len(per_arm_items["A"])
        if n:
            avg = {arm: [sum(c) / n for c in zip(*per_arm_items[arm])] for arm in ("A", "B")}
            res["items"][name] = paired_difference(avg["A"], avg["B"])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("a", help="A=SETTING[,SETTING...]")
    ap.add_argument("b", help="B=SETTING[,SETTING...]")
    ap.add_argument("--step", default="800")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    res = compare(
        Path(args.out), args.a.split("=", 1)[1].split(","), args.b.split("=", 1)[1].split(","), args.step
    )
    text = json.dumps(res, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
