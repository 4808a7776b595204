"""Decontamination audit and bits per byte against direct computations."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ops.eval.audit import AuditItem, TrainingSource, audit

pytestmark = pytest.mark.unit


def _parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_audit_flags_item_planted_in_training_text(tmp_path):
    from ops.eval.tiny import tiny_tasks

    train, ev = tiny_tasks(50, 20)
    planted = ev[7]
    docs = [
        {"id": f"d{i}", "text": f"Some page {i} about the standard library and its modules."}
        for i in range(30)
    ]
    docs[12]["text"] = "Intro text. " + planted.question.upper() + " More text follows here."  # case differs
    corpus = _parquet(tmp_path / "documents.parquet", docs)
    tasks_train = _parquet(
        tmp_path / "train.parquet", [{"question": t.question, "solution": t.solution} for t in train]
    )
    items = [AuditItem("tasks", t.id, t.question) for t in ev]
    hits = audit(items, [TrainingSource("corpus", (corpus,)), TrainingSource("tasks", (tasks_train,))], n=8)
    flagged = [h for h in hits if h.flagged]
    assert [h.item_id for h in flagged] == [planted.id]
    assert flagged[0].matched == ("corpus",) and flagged[0].overlap == 1.0
    # shared templates between train and eval questions give partial overlap, never a flag
    assert all(h.overlap < 0.5 for h in hits if h.item_id != planted.id)


def test_audit_matches_short_items_whole_and_checks_arguments(tmp_path):
    src = _parquet(tmp_path / "sft.parquet", [{"prompt": "what is two plus two", "response": "four"}])
    hits = audit(
        [AuditItem("t", "a", "two plus two"), AuditItem("t", "b", "three plus three")],
        [TrainingSource("sft", (src,))],
        n=13,
    )
    assert [h.flagged for h in hits] == [True, False]
    with pytest.raises(ValueError):
        audit([], [], n=0)
    with pytest.raises(ValueError):
        audit([], [], threshold=0)


def test_bits_per_byte_matches_direct_loss_computation():
    import torch

    from ops.eval import metrics as M
    from ops.eval.likelihood import score_documents
    from ops.eval.tiny import build_tokenizer
    from ops.model import build_model

    texts = ["The cat sat on the mat. Caf\u00e9 au lait!", "Ann has 12 apples.", "x"]
    tok = build_tokenizer(texts * 3 + ["hello there"] * 3, vocab_size=300)
    model = build_model(
        {"arch": "qwen2", "d_model": 32, "layers": 1, "heads": 2, "kv_heads": 1}, len(tok), seed=1
    )
    scores = score_documents(model, tok, texts, batch_size=2)
    for text, sc in zip(texts, scores):
        ids = [tok.eos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids])
        with torch.no_grad():
            loss = model(input_ids=x, labels=x).loss.item()  # mean NLL over len(ids) - 1 targets
        assert sc.n_bytes == len(text.encode("utf-8"))
        assert sc.nll_nats == pytest.approx(loss * (len(ids) - 1), rel=1e-4)
    total = sum(s.nll_nats for s in scores) / math.log(2) / sum(len(t.encode()) for t in texts)
    assert M.bits_per_byte(sum(s.nll_nats for s in scores), sum(s.n_bytes for s in scores)) == pytest.approx(
        total
    )


def test_bits_per_byte_counts_only_scored_bytes_when_truncated():
    from ops.eval.likelihood import score_documents
    from ops.eval.tiny import build_tokenizer
    from ops.model import build_model

    text = "0123456789" * 5
    tok = build_tokenizer([text] * 3, vocab_size=300)
    model = build_model({"arch": "qwen2", "d_model": 16, "layers": 1, "heads": 2, "kv_heads": 1}, len(tok))
    (sc,) = score_documents(model, tok, [text], max_tokens=10)
    assert sc.n_tokens == 10 and sc.n_bytes == 10  # digits are single tokens


def _rec(item: str, mode: str, correct: bool, i: int = 0) -> dict:
    return {
        "task": "t",
        "item_id": item,
        "mode": mode,
        "correct": correct,
        "format_ok": True,
        "response_tokens": 5,
        "sample_index": i,
        "gold_answer": "1",
        "extracted_answer": "1" if correct else "2",
    }


def test_accuracy_split_by_contamination_against_hand_computation():
    from ops.eval.evaluate import accuracy_by_contamination, contamination_text

    # 4 flagged items all greedy-correct; 6 clean items, 2 correct; one sample each (pass@1 = its correctness)
    flagged = {("t", f"f{i}") for i in range(4)}
    greedy = {**{f"f{i}": True for i in range(4)}, **{f"c{i}": i < 2 for i in range(6)}}
    recs = [_rec(k, "greedy", v) for k, v in greedy.items()]
    recs += [_rec(k, "sample", not v) for k, v in greedy.items()]  # samples: the opposite
    out = accuracy_by_contamination(recs, flagged, k=1)
    g = out["greedy_accuracy"]
    assert (g["flagged"]["value"], g["flagged"]["n"]) == (1.0, 4)
    assert (g["unflagged"]["value"], g["unflagged"]["n"]) == (pytest.approx(2 / 6), 6)
    # Welch: flagged variance 0, clean sample variance (2 * (2/3)^2 + 4 * (1/3)^2) / 5 = 4/15
    d = g["flagged_minus_unflagged"]
    assert d["diff"] == pytest.approx(1 - 2 / 6)
    assert d["se"] == pytest.approx(math.sqrt(4 / 15 / 6))
    assert d["beyond_noise"] is (d["low"] > 0)
    p = out["pass@1"]
    assert p["flagged"]["value"] == 0.0 and p["unflagged"]["value"] == pytest.approx(4 / 6)
    text = contamination_text(out)
    assert "6 unflagged items 0.333" in text and "4 flagged 1.000" in text
    # nothing flagged: the split has no flagged side and no sentence
    none = accuracy_by_contamination(recs, set(), k=1)
    assert none["greedy_accuracy"]["flagged"]["n"] == 0 and contamination_text(none) == ""


def test_audit_scans_each_file_once_per_item_set_and_again_when_rewritten(tmp_path, monkeypatch):
    """Evaluate partitions audit the same items against mostly the same files: a file is scanned once per
    process and item set, with the same hits; a rewritten file (another size) is scanned again."""
    import ops.eval.audit as A
    from ops.eval.tiny import tiny_tasks

    _, ev = tiny_tasks(50, 20)
    scanned: list[Path] = []
    real = A.iter_texts

    def counting(files, *a, **k):
        scanned.extend(files)
        return real(files, *a, **k)

    monkeypatch.setattr(A, "iter_texts", counting)
    docs = [
        {"id": f"d{i}", "text": f"A page {i} about modules and functions of the library."} for i in range(20)
    ]
    corpus = _parquet(tmp_path / "documents.parquet", docs)
    other = _parquet(tmp_path / "other.parquet", docs[:5])
    items = [AuditItem("tasks", t.id, t.question) for t in ev]
    sources = [TrainingSource("corpus", (corpus,)), TrainingSource("other", (other,))]
    A._FOUND.clear()
    first = audit(items, sources, n=8)
    again = audit(items, sources, n=8)
    assert again == first and sorted(scanned) == sorted([corpus, other])  # the second audit scanned nothing
    assert not any(h.flagged for h in first)
    docs[3]["text"] = "Copied: " + ev[5].question
    _parquet(corpus, docs)  # rewritten in place: another size
    hits = audit(items, [TrainingSource("corpus", (corpus,))], n=8)
    assert scanned.count(corpus) == 2
    assert [h.item_id for h in hits if h.flagged] == [ev[5].id]
    audit(items[:10], [TrainingSource("corpus", (corpus,))], n=8)  # another item set: scanned for it
    assert scanned.count(corpus) == 3
