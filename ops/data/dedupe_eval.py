"""Measuring near-duplicate removal: a deterministic corpus with planted near copies, and the recall and
false-removal figures of the real ``dedupe`` op on it for one (bands, rows) setting.

Key design choices:

* The text is real technical English: docstrings of the standard library's modules, the register of the
  default corpus (Python's documentation). Distinct documents therefore share the stock phrases that
  make false removals possible. Source chunks that already resemble each other (5-gram Jaccard above
  :data:`DISTINCT_MAX_JACCARD`) are dropped, so a "distinct" document really has no near copy.
* A near copy is its original edited the way near duplicates differ on the web (a reworded sentence, changed,
  inserted and deleted words) until its 5-gram Jaccard with the original (:func:`ops.data.dedupe.jaccard`,
  the measure the stage reports) falls to a target, within 0.02 of it. Targets are spread evenly over
  ``[lo, hi]`` and no copy falls below ``lo``, so recall can be read per similarity bin down to ``lo``.
* Everything is seeded: the same arguments give the same corpus on the same Python minor version.
"""

from __future__ import annotations

import ast
import random
import re
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .dedupe import jaccard, shingles

# Standard-library folders whose docstrings are not prose about the library (tests, demos, vendored tools).
SKIP_DIRS = {"test", "tests", "idle_test", "idlelib", "lib2to3", "turtledemo", "ensurepip", "site-packages",
             "dist-packages", "__pycache__", "config-3.11-x86_64-linux-gnu"}
DISTINCT_MAX_JACCARD = 0.2
N_GRAMS = 5


@dataclass
class Corpus:
    """Documents in input order, each ``{"id", "text"}``; ``groups`` are (original id, copy id, Jaccard)."""

    docs: list[dict[str, str]]
    groups: list[tuple[str, str, float]]
    distinct: list[str]


def _docstring_sentences(path: Path) -> list[str]:
    """Prose sentences of a module's docstrings in source order (doctest and indented code lines dropped)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    out: list[str] = []
    for n in nodes:
        doc = ast.get_docstring(n, clean=True)
        if not doc:
            continue
        for para in re.split(r"\n\s*\n", doc):
            lines = para.splitlines()
            if any(ln.startswith((">>>", "...", "    ", "\t")) for ln in lines):
                continue
            text = " ".join(" ".join(lines).split())
            out += [s for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 4]
    return out


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if not any(part in SKIP_DIRS or part.startswith("config-") for part in rel.parts[:-1]):
            files.append(p)
    return files


def source_documents(n: int, min_words: int = 80, max_words: int = 200, seed: int = 0) -> list[str]:
    """The first ``n`` chunks of consecutive docstring sentences (one module at a time, standard-library
    files in path order) of ``min_words``..``max_words`` words, skipping any chunk that resembles an earlier
    kept one (Jaccard > :data:`DISTINCT_MAX_JACCARD`)."""
    rng = random.Random(seed)
    index: dict[str, list[int]] = {}
    kept: list[str] = []
    kept_sizes: list[int] = []

    def offer(text: str) -> None:
        sh = shingles(text, N_GRAMS)
        shared: dict[int, int] = {}
        for g in sh:
            for k in index.get(g, ()):
                shared[k] = shared.get(k, 0) + 1
        if any(c / (len(sh) + kept_sizes[k] - c) > DISTINCT_MAX_JACCARD for k, c in shared.items()):
            return
        for g in sh:
            index.setdefault(g, []).append(len(kept))
        kept.append(text)
        kept_sizes.append(len(sh))

    for path in _stdlib_files():
        cur: list[str] = []
        target = rng.randint(min_words, max_words)
        for sent in _docstring_sentences(path):
            cur.append(sent)
            if sum(len(x.split()) for x in cur) >= target:
                offer(" ".join(cur))
                if len(kept) == n:
                    return kept
                cur, target = [], rng.randint(min_words, max_words)
    raise ValueError(f"the standard library gave only {len(kept)} distinct documents; {n} were asked for")


def near_copy(
    text: str, target: float, lo: float, vocab: list[str], rng: random.Random, tolerance: float = 0.02
) -> tuple[str, float]:
    """``text`` edited until its 5-gram Jaccard with the original is at most ``target``: an edit that would
    take it below ``target - tolerance`` (or below ``lo``) is not taken, so a smaller one lands in range."""
    tokens = text.split()
    floor = max(lo, target - tolerance)
    j = 1.0
    for _ in range(5000):
        if j <= target:
            break
        cand = list(tokens)
        op = rng.random()
        i = rng.randrange(len(cand))
        if op < 0.2:  # reword a sentence: replace about a third of its words, swap two neighbours
            a = i
            while a > 0 and not cand[a - 1].endswith((".", "!", "?")):
                a -= 1
            b = i
            while b < len(cand) - 1 and not cand[b].endswith((".", "!", "?")):
                b += 1
            for k in range(a, b + 1):
                if rng.random() < 0.33:
                    cand[k] = rng.choice(vocab)
            if b - a >= 2:
                k = rng.randrange(a, b)
                cand[k], cand[k + 1] = cand[k + 1], cand[k]
        elif op < 0.65:
            cand[i] = rng.choice(vocab)
        elif op < 0.85:
            cand.insert(i, rng.choice(vocab))
        elif len(cand) > 20:
            del cand[i]
        cj = jaccard(text, " ".join(cand), N_GRAMS)
        if cj >= floor:
            tokens, j = cand, cj
    return " ".join(tokens), j


def make_corpus(n_groups: int, n_distinct: int, lo: float = 0.6, hi: float = 0.9, seed: int = 0) -> Corpus:
    """``n_groups`` originals each with one near copy (Jaccard targets spread evenly over ``[lo, hi]``) and
    ``n_distinct`` further documents without a copy, shuffled into one input order."""
    pool = source_documents(n_groups + n_distinct, seed=seed)
    rng = random.Random(seed + 1)
    rng.shuffle(pool)
    vocab = sorted({w for t in pool for w in t.split()})
    docs: list[dict[str, str]] = []
    groups: list[tuple[str, str, float]] = []
    for g in range(n_groups):
        target = lo + (hi - lo) * (g + rng.random()) / n_groups
        text = pool[g]
        copy, j = near_copy(text, target, lo, vocab, rng)
        docs += [{"id": f"orig-{g}", "text": text}, {"id": f"copy-{g}", "text": copy}]
        groups.append((f"orig-{g}", f"copy-{g}", j))
    distinct = [f"distinct-{d}" for d in range(n_distinct)]
    docs += [{"id": i, "text": pool[n_groups + d]} for d, i in enumerate(distinct)]
    rng.shuffle(docs)
    return Corpus(docs, groups, distinct)


def write_corpus(corpus: Corpus, out_dir: Path) -> None:
    from .schema import write_documents

    out_dir.mkdir(parents=True, exist_ok=True)
    write_documents(
        [
            {"id": d["id"], "url": f"https://docs.example/{d['id']}", "host": "docs.example", "text": d["text"],
             "language": "en", "language_score": 1.0, "source": "dedupe_eval", "source_record": None,
             "parent_ids": []}
            for d in corpus.docs
        ],
        out_dir,
    )


def measure(
    corpus: Corpus,
    work: Path,
    num_buckets: int,
    hashes_per_bucket: int,
    n_grams: int = N_GRAMS,
    bins: tuple[float, ...] = (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9),
) -> dict[str, Any]:
    """Run the ``dedupe`` op (exact + MinHash) on ``corpus`` and score it.

    A near copy is caught when exactly one of it and its original survives; a distinct document is falsely
    removed when it does not survive, and a group is lost when neither of its two documents does.
    """
    from .dedupe import dedupe
    from .schema import read_documents

    src = work / "src"
    write_corpus(corpus, src)
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    report = dedupe(src, out, work / "work", exact=True, near=True, n_grams=n_grams, num_buckets=num_buckets,
                    hashes_per_bucket=hashes_per_bucket)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    kept = set(read_documents(out, columns=["id"]).column("id").to_pylist())
    caught = [(o in kept) != (c in kept) for o, c, _ in corpus.groups]
    lost = sum(o not in kept and c not in kept for o, c, _ in corpus.groups)
    by_bin = []
    for a, b in zip(bins, bins[1:]):
        sel = [ok for ok, (_, _, j) in zip(caught, corpus.groups) if a <= j < b or (b == bins[-1] and j == b)]
        by_bin.append({"jaccard": f"[{a:.2f}, {b:.2f})", "copies": len(sel),
                       "recall": round(sum(sel) / len(sel), 4) if sel else None})
    false_removed = sum(d not in kept for d in corpus.distinct)
    return {
        "num_buckets": num_buckets,
        "hashes_per_bucket": hashes_per_bucket,
        "lsh_threshold": report["lsh_threshold"],
        "documents": len(corpus.docs),
        "near_copies": len(corpus.groups),
        "distinct": len(corpus.distinct),
        "recall": round(sum(caught) / max(1, len(caught)), 4),
        "recall_by_jaccard": by_bin,
        "false_removal": round(false_removed / max(1, len(corpus.distinct)), 4),
        "false_removed": false_removed,
        "groups_lost": lost,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),  # this process only: the op runs datatrove in-process with one worker
    }
