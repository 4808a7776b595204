"""De-duplication (``ops.data.dedupe``) on a planted corpus: one exact copy (case and spacing changed) and one
near copy (two words edited) among distinct documents. Both copies go, every distinct document stays, in
input order, and each removal names the document it duplicates."""

from __future__ import annotations

import random

import pytest

from ops.data.dedupe import dedupe, jaccard, normalized_hash
from ops.data.schema import doc_id, read_documents, write_documents

pytestmark = pytest.mark.unit


def _text(rng: random.Random, n: int = 80) -> str:
    vocab = [f"{a}{b}" for a in "bcdfghklmnprstvz" for b in ("ar", "el", "in", "op", "us", "ya", "ek", "om")]
    return " ".join(rng.choice(vocab) for _ in range(n))


def _row(name: str, text: str) -> dict:
    url = f"http://example.org/{name}"
    return {"id": doc_id(url, text), "url": url, "host": "example.org", "text": text, "parent_ids": []}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(7)
    distinct = [_row(f"d{i}", _text(rng)) for i in range(6)]
    words = distinct[1]["text"].split()
    words[20], words[60] = "edited", "changed"  # a near copy: two words of eighty replaced
    exact = _row("exact_copy", "  " + distinct[0]["text"].upper().replace(" ", "\n ", 3) + " ")
    near = _row("near_copy", " ".join(words))
    rows = distinct[:2] + [exact] + distinct[2:4] + [near] + distinct[4:]
    src = tmp_path_factory.mktemp("src")
    write_documents(rows, src)
    return src, distinct, exact, near


def test_helpers_see_the_planted_copies():
    assert normalized_hash("A  b\nC") == normalized_hash("a b c") != normalized_hash("a b d")
    rng = random.Random(1)
    a = _text(rng)
    assert jaccard(a, a) == 1.0 and jaccard(a, _text(rng)) < 0.05


def _out(tmp_path):
    (tmp_path / "out").mkdir()
    return tmp_path / "out"


def test_exact_and_near_copies_are_removed_and_distinct_documents_kept(corpus, tmp_path):
    src, distinct, exact, near = corpus
    r = dedupe(src, _out(tmp_path), tmp_path / "work")
    out = read_documents(tmp_path / "out").to_pylist()
    ids = [d["id"] for d in distinct]
    assert [d["id"] for d in out] == ids  # every distinct document, in input order, nothing else
    assert (r["documents_in"], r["documents_out"], r["exact_removed"], r["near_removed"]) == (8, 6, 1, 1)
    assert r["exact_duplicates_left"] == 0
    by_method = {p["method"]: p for p in r["pairs"]}
    assert (by_method["exact"]["removed_id"], by_method["exact"]["kept_id"]) == (exact["id"], ids[0])
    assert by_method["minhash"]["removed_id"] == near["id"] and by_method["minhash"]["kept_id"] == ids[1]
    assert 0.7 < by_method["minhash"]["jaccard"] < 1.0
    assert r["clusters"] == 1 and r["largest_cluster"] == 2


def test_without_near_dedupe_only_the_exact_copy_goes(corpus, tmp_path):
    src, distinct, _exact, near = corpus
    r = dedupe(src, _out(tmp_path), tmp_path / "work", near=False)
    out = [d["id"] for d in read_documents(tmp_path / "out").to_pylist()]
    assert out == [d["id"] for d in distinct[:4]] + [near["id"]] + [d["id"] for d in distinct[4:]]
    assert (r["exact_removed"], r["near_removed"]) == (1, 0)
