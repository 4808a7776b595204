"""Decontamination: drop training documents that share a word n-gram with any evaluation item.

Key design choice: text is normalised the same way on both sides (NFKC, lower case, words = runs of
letters/digits, punctuation and spacing ignored), every n-gram of every eval field (question, answer,
solution) goes into one hash set, and each document is scanned once with a sliding window. An eval field
shorter than ``n`` words contributes its whole word sequence (if it has at least ``min_words`` words), so
short questions cannot slip through; shorter fields (a bare number answer) are ignored, since they would
match half the corpus. Every drop records the eval item, field and n-gram that matched.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any

EVAL_FIELDS = ("question", "answer", "solution")


def words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", text or "").lower())


class NgramIndex:
    def __init__(self, n: int = 13, min_words: int = 8):
        self.n = n
        self.min_words = min_words
        self.grams: dict[tuple[str, ...], tuple[str, str, str]] = {}  # n-gram -> (stage, item id, field)
        self.lengths: set[int] = set()
        self.items = 0

    def add(self, stage: str, item_id: str, field: str, text: str) -> None:
        w = words(text)
        if len(w) < self.min_words:
            return
        size = min(self.n, len(w))
        self.lengths.add(size)
        for i in range(len(w) - size + 1):
            self.grams.setdefault(tuple(w[i : i + size]), (stage, item_id, field))

    def match(self, text: str) -> tuple[tuple[str, ...], tuple[str, str, str]] | None:
        w = words(text)
        for size in sorted(self.lengths, reverse=True):
            for i in range(len(w) - size + 1):
                g = tuple(w[i : i + size])
                hit = self.grams.get(g)
                if hit is not None:
                    return g, hit
        return None


def build_index(eval_sets: Iterable[tuple[str, list[dict[str, Any]]]], n: int, min_words: int) -> NgramIndex:
    """``eval_sets``: ``(stage name, rows with id and the EVAL_FIELDS)``."""
    idx = NgramIndex(n, min_words)
    for stage, rows in eval_sets:
        for r in rows:
            idx.items += 1
            for f in EVAL_FIELDS:
                if r.get(f) is not None:
                    idx.add(stage, str(r.get("id")), f, str(r[f]))
    return idx


def decontaminate(
    rows: list[dict[str, Any]], idx: NgramIndex
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(kept rows, drop records)``; input order is preserved."""
    kept, dropped = [], []
    for r in rows:
        m = idx.match(r.get("text") or "")
        if m is None:
            kept.append(r)
            continue
        gram, (stage, item_id, field) = m
        dropped.append(
            {
                "id": r["id"],
                "url": r.get("url"),
                "eval_stage": stage,
                "eval_item": item_id,
                "eval_field": field,
                "ngram": " ".join(gram),
            }
        )
    return kept, dropped
