"""Decontamination (``ops.data.decontam``) on hand-written documents and eval items: exactly the documents that
share a word n-gram with an eval field are dropped, and each drop names the item, field and n-gram."""

from __future__ import annotations

import pytest

from ops.data.decontam import build_index, decontaminate, words

pytestmark = pytest.mark.unit

QUESTION = "a train leaves the station at noon travelling sixty miles per hour towards the coast"
EVAL = [
    {"id": "q1", "question": QUESTION, "answer": "42", "solution": None},
    {"id": "q2", "question": "short one", "answer": "7", "solution": "add three and four to get seven here"},
]


def _doc(i: str, text: str) -> dict:
    return {"id": i, "url": f"http://example.org/{i}", "text": text}


def test_words_normalise_case_unicode_and_punctuation():
    assert words("Ｔｈｅ  Train, (leaves)!\nNOW_now") == ["the", "train", "leaves", "now", "now"]
    assert words(None) == []


def test_only_documents_sharing_an_eval_ngram_are_dropped():
    idx = build_index([("tasks", EVAL)], n=5, min_words=4)
    docs = [
        # a 5-gram of q1's question, in different case and punctuation
        _doc("hit_question", "Yesterday: THE STATION, at noon travelling... was busy."),
        # four consecutive words of the question only: below n, kept
        _doc("near_miss", "the station at noon was busy"),
        # a 5-gram of q2's solution (a field other than the question)
        _doc("hit_solution", "we add three and four to get it"),
        # q2's question (2 words) and its answers are below min_words: never matched
        _doc("short_fields", "short one 7 42 seven"),
        _doc("clean", "an unrelated paragraph about gardening and tomatoes"),
    ]
    kept, dropped = decontaminate(docs, idx)
    assert [d["id"] for d in kept] == ["near_miss", "short_fields", "clean"]
    assert [d["id"] for d in dropped] == ["hit_question", "hit_solution"]
    by_id = {d["id"]: d for d in dropped}
    assert by_id["hit_question"] == {
        "id": "hit_question",
        "url": "http://example.org/hit_question",
        "eval_stage": "tasks",
        "eval_item": "q1",
        "eval_field": "question",
        "ngram": "the station at noon travelling",
    }
    hit = by_id["hit_solution"]
    assert (hit["eval_item"], hit["eval_field"], hit["ngram"]) == ("q2", "solution", "add three and four to")
    assert idx.items == 2


def test_a_field_shorter_than_n_is_matched_whole_when_long_enough():
    items = [{"id": "s", "question": "what is nine times seven", "answer": None, "solution": None}]
    idx = build_index([("tasks", items)], n=13, min_words=5)
    kept, dropped = decontaminate(
        [_doc("whole", "quiz: what is nine times seven? reply"), _doc("part", "what is nine times eight")], idx
    )
    assert [d["id"] for d in dropped] == ["whole"] and dropped[0]["ngram"] == "what is nine times seven"
    assert [d["id"] for d in kept] == ["part"]
    # below min_words the field is ignored altogether
    idx = build_index([("tasks", items)], n=13, min_words=6)
    kept, dropped = decontaminate([_doc("whole", "what is nine times seven")], idx)
    assert dropped == [] and len(kept) == 1


def test_input_order_is_kept_and_an_empty_index_drops_nothing():
    docs = [_doc(str(i), f"document number {i} {QUESTION}") for i in range(5)]
    kept, dropped = decontaminate(docs, build_index([], n=5, min_words=4))
    assert kept == docs and dropped == []
    kept, dropped = decontaminate(docs[::-1], build_index([("tasks", EVAL)], n=5, min_words=4))
    assert kept == [] and [d["id"] for d in dropped] == ["4", "3", "2", "1", "0"]
