"""What scanning each training file once per process saves the evaluation's decontamination audit: CPU seconds
of the audits of every stored ``evaluate`` partition, each scanning its whole lineage, against the same audits
in one process that keeps each file's found n-grams (``ops.eval.audit._FOUND``), and whether the hits agree.

``python -m experiments.eval_audit_memo OUT_JSON HOME [--rounds 3]``

HOME is a home with a materialized ``evaluate`` stage (the default demo's). Per partition the items (the first
``max_items`` held-out tasks), the n-gram settings and the training sources (every dataset in the model's
lineage, as ``assets.evaluate.training_sources`` resolves them) come from the manifests. Each round audits
all partitions in order twice, in alternating order of the variants (``scan``: the per-file memo emptied before
each partition, so every partition scans its whole lineage, as before the memo; ``memo``: emptied once before
the first partition); CPU seconds from ``time.process_time``. Reported: seconds per round and variant, the
ratio memo / scan and its median, and the number of partitions whose hits differ between the variants
(expected 0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _lineage(home: Path, manifest: dict, files_by_type: dict) -> list:
    from ops.eval.audit import TrainingSource

    seen, sources, stack = set(), [], [manifest]
    while stack:
        m = stack.pop()
        for arts in (m.get("inputs") or {}).values():
            for ref in arts:
                v = ref.get("version")
                if not v or v in seen:
                    continue
                seen.add(v)
                path = home / "artifacts" / ref["kind"] / v
                up = json.loads((path / "manifest.json").read_text())
                files = tuple(
                    path / n for n in files_by_type.get(up.get("produces", ""), ()) if (path / n).is_file()
                )
                if files:
                    sources.append(TrainingSource(f"{ref.get('stage')}@{v[:8]}", files))
                stack.append(up)
    return sources


def _partitions(home: Path) -> list[tuple[str, list, list, dict]]:
    import pyarrow.parquet as pq

    from assets.evaluate import TRAINING_FILES
    from ops.eval.audit import AuditItem

    out = []
    for d in sorted((home / "artifacts" / "evaluate").iterdir()):
        if not (d / "manifest.json").is_file():
            continue
        man = json.loads((d / "manifest.json").read_text())
        cfg = man["config"]
        (model,) = man["inputs"]["models"]
        (tasks,) = man["inputs"]["tasks"]
        tdir = home / "artifacts" / tasks["kind"] / tasks["version"]
        rows = pq.read_table(tdir / "eval.parquet", columns=["id", "question"]).to_pylist()[
            : cfg["max_items"]
        ]
        items = [AuditItem(tasks["stage"], str(r["id"]), str(r["question"])) for r in rows]
        mdir = home / "artifacts" / model["kind"] / model["version"]
        sources = _lineage(home, json.loads((mdir / "manifest.json").read_text()), TRAINING_FILES)
        out.append((model["stage"], items, sources, cfg))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("home")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)

    import ops.eval.audit as A

    parts = _partitions(Path(a.home))

    def sweep(variant: str) -> tuple[float, list]:
        A._FOUND.clear()
        t0 = time.process_time()
        hits = []
        for _, items, sources, cfg in parts:
            if variant == "scan":
                A._FOUND.clear()
            hits.append(A.audit(items, sources, n=cfg["audit_ngram"], threshold=cfg["audit_threshold"]))
        return time.process_time() - t0, hits

    rounds = []
    for r in range(a.rounds):
        order = ["scan", "memo"] if r % 2 == 0 else ["memo", "scan"]
        res = {v: sweep(v) for v in order}
        differ = sum(x != y for x, y in zip(res["scan"][1], res["memo"][1], strict=True))
        rec = {
            "round": r,
            "order": order,
            "scan_s": round(res["scan"][0], 3),
            "memo_s": round(res["memo"][0], 3),
            "ratio": round(res["memo"][0] / res["scan"][0], 4),
            "partitions_with_differing_hits": differ,
        }
        rounds.append(rec)
        print(rec, flush=True)
    result = {
        "home": a.home,
        "partitions": [p[0] for p in parts],
        "sources_per_partition": {p[0]: [s.stage for s in p[2]] for p in parts},
        "rounds": rounds,
        "median_ratio": statistics.median(x["ratio"] for x in rounds),
        "median_saved_s": statistics.median(x["scan_s"] - x["memo_s"] for x in rounds),
        "partitions_with_differing_hits": sum(x["partitions_with_differing_hits"] for x in rounds),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))
    return result


if __name__ == "__main__":
    main()
