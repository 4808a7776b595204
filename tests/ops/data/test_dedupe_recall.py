"""The default ``dedupe`` setting catches near copies down to 5-gram Jaccard 0.6 without removing distinct
documents, measured with the real op on a small corpus from :mod:`ops.data.dedupe_eval` (the full sweep over
settings is ``experiments/dedupe_recall.py``, its figures in ``experiments/LEDGER.md``)."""

from __future__ import annotations

import pytest

from ops.data.dedupe_eval import make_corpus, measure

pytestmark = pytest.mark.unit


def test_corpus_is_deterministic_and_controlled():
    a, b = make_corpus(30, 20, seed=3), make_corpus(30, 20, seed=3)
    assert a == b and len(a.docs) == 80
    js = [j for *_, j in a.groups]
    assert min(js) >= 0.6 and max(js) <= 0.9 and max(js) - min(js) > 0.2


def test_default_setting_catches_near_copies_without_false_removals(tmp_path):
    from assets.dedupe import DedupeConfig
    from ops.data.dedupe import DEFAULT_HASHES_PER_BUCKET, DEFAULT_NUM_BUCKETS

    cfg = DedupeConfig.model_validate({"from": "docs"})
    assert (cfg.num_buckets, cfg.hashes_per_bucket) == (DEFAULT_NUM_BUCKETS, DEFAULT_HASHES_PER_BUCKET)
    corpus = make_corpus(80, 160, seed=0)
    m = measure(corpus, tmp_path, cfg.num_buckets, cfg.hashes_per_bucket, cfg.n_grams)
    assert m["recall"] >= 0.95, m
    assert m["false_removal"] < 0.01 and m["groups_lost"] == 0, m
