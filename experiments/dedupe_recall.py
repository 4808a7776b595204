"""Near-duplicate recall and false removals of the ``dedupe`` op for several MinHash-LSH (bands, rows)
settings, on generated corpora (:mod:`ops.data.dedupe_eval`): originals with one near copy each at 5-gram
Jaccard spread over [0.6, 0.9], plus distinct documents.

``python -m experiments.dedupe_recall OUT [--seeds 0 1 2] [--groups N] [--distinct N] [--settings 14x8 40x5]``
writes ``OUT/dedupe_recall.json`` (every measurement, the corpus description, commit and machine) and prints
the markdown table a ledger entry quotes.

Times are of the ``dedupe`` call alone (exact pass, four datatrove MinHash stages, report), medians over the
seeds, after one untimed warm-up run; settings run interleaved per corpus so machine load hits all alike.
CPU time (this process: the op runs datatrove in-process with one worker) is the figure to compare on a
shared machine; wall time is given as measured.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ops.data.dedupe_eval import make_corpus, measure  # noqa: E402


def _setting(s: str) -> tuple[int, int]:
    b, r = s.lower().split("x")
    return int(b), int(r)


def _machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {load}, Python {platform.python_version()}"


def _commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--", "ops", "experiments") else ""
    return git("rev-parse", "--short", "HEAD") + dirty


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder for dedupe_recall.json")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--groups", type=int, default=380, help="originals, each with one near copy, per corpus")
    ap.add_argument("--distinct", type=int, default=760, help="documents without a copy, per corpus")
    ap.add_argument(
        "--settings",
        nargs="+",
        default=["14x8", "20x5", "25x5", "30x5", "40x5", "25x4", "50x6"],
        help="bands x rows (num_buckets x hashes_per_bucket)",
    )
    a = ap.parse_args()
    settings = [_setting(s) for s in a.settings]
    results: dict[tuple[int, int], list[dict]] = {s: [] for s in settings}
    jaccards: list[float] = []
    with tempfile.TemporaryDirectory(prefix="dedupe_recall-") as tmp, open(os.devnull, "w") as devnull:
        for seed in a.seeds:
            corpus = make_corpus(a.groups, a.distinct, seed=seed)
            jaccards += [j for *_, j in corpus.groups]
            with contextlib.redirect_stderr(devnull):  # datatrove logs every step to stderr
                if seed == a.seeds[0]:
                    measure(corpus, Path(tmp) / "warmup", *settings[0])
                for b, r in settings:
                    m = measure(corpus, Path(tmp) / f"s{seed}-{b}x{r}", b, r)
                    results[(b, r)].append(m)
            print(f"seed {seed}: {len(corpus.docs)} documents", file=sys.stderr)

    bins = [x["jaccard"] for x in results[settings[0]][0]["recall_by_jaccard"]]
    rows = []
    for b, r in settings:
        ms = results[(b, r)]
        copies = sum(m["near_copies"] for m in ms)
        caught = sum(round(m["recall"] * m["near_copies"]) for m in ms)
        distinct = sum(m["distinct"] for m in ms)
        removed = sum(m["false_removed"] for m in ms)
        per_bin = []
        for i in range(len(bins)):
            n = sum(m["recall_by_jaccard"][i]["copies"] for m in ms)
            k = sum(
                round((m["recall_by_jaccard"][i]["recall"] or 0) * m["recall_by_jaccard"][i]["copies"])
                for m in ms
            )
            per_bin.append(f"{k / n:.3f}" if n else "-")
        rows.append(
            {
                "setting": f"{b} x {r}",
                "hashes": b * r,
                "threshold": ms[0]["lsh_threshold"],
                "recall": f"{caught / copies:.3f} ({caught}/{copies})",
                "bins": per_bin,
                "false": f"{removed / distinct:.4f} ({removed}/{distinct})",
                "lost": sum(m["groups_lost"] for m in ms),
                "wall": statistics.median(m["wall_s"] for m in ms),
                "cpu": statistics.median(m["cpu_s"] for m in ms),
            }
        )
    base = rows[0]["cpu"]
    head = (
        "| bands x rows | hashes | LSH threshold | recall, J in [0.6, 0.9] | "
        + " | ".join(f"recall J {x}" for x in bins)
        + " | distinct removed | groups lost | dedupe wall s | dedupe CPU s | CPU vs first |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        lines.append(
            f"| {row['setting']} | {row['hashes']} | {row['threshold']} | {row['recall']} | "
            + " | ".join(row["bins"])
            + f" | {row['false']} | {row['lost']} | {row['wall']:.1f} | {row['cpu']:.1f} | {row['cpu'] / base:.2f}x |"
        )
    table = "\n".join(lines)
    jq = sorted(jaccards)
    corpus_line = (
        f"{len(a.seeds)} corpora (seeds {', '.join(map(str, a.seeds))}), each {a.groups} originals + {a.groups} "
        f"near copies + {a.distinct} distinct documents ({2 * a.groups + a.distinct} in all) from standard-library "
        f"docstrings, 80-200 words; copy Jaccard min {jq[0]:.3f}, median {jq[len(jq) // 2]:.3f}, max {jq[-1]:.3f}"
    )
    print(corpus_line)
    print(table)
    a.out.mkdir(parents=True, exist_ok=True)
    cmd = "python -m experiments.dedupe_recall " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    result = {
        "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        "commit": _commit(),
        "command": cmd,
        "machine": _machine(),
        "corpus": corpus_line,
        "definitions": "recall: a near copy is caught when exactly one of it and its original survives; "
        "distinct removed: documents without a planted copy that did not survive; groups lost: original and "
        "copy both removed",
        "summary": rows,
        "runs": {f"{b}x{r}": ms for (b, r), ms in results.items()},
        "table": table,
    }
    (a.out / "dedupe_recall.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {a.out / 'dedupe_recall.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
