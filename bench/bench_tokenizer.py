"""Tokenizer training throughput: the ``train_tokenizer`` stage against bare HF ``tokenizers`` training the same
BPE (digit split + byte-level pre-tokenizer, the 8 special tokens, same vocabulary) on the same text, same
run, rounds alternating. The ratio compares the training itself (the stage's own ``train_s``); what the stage
does besides (read the documents Parquet, measure held-out bytes/token and the format probes, save a
transformers tokenizer, commit the artifact) is timed and reported separately. MB/s of training text.

Key design choice: the headline ratio is the median of the rounds' own ratios (each round times both sides
back to back), not a ratio of two best times taken in different rounds: a load change on a shared machine then
moves one round's pair together instead of deciding the figure.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

VOCAB = 2048


def _texts() -> list[str]:
    import pydoc_data.topics as t

    paras = [p.strip() for v in t.topics.values() for p in v.split("\n\n") if len(p.strip()) > 40]
    return paras * 3  # ~1.4 MB: large enough that start-up costs do not dominate


def _bare(texts: list[str]) -> float:
    from testkit.hf_checkpoints import digit_byte_bpe

    tok, trainer = digit_byte_bpe([f"<|special{i}|>" for i in range(8)], VOCAB, min_frequency=2)
    t0 = time.perf_counter()
    tok.train_from_iterator(texts, trainer=trainer)
    return time.perf_counter() - t0


def _stage(texts: list[str], home: Path) -> tuple[float, float]:
    """(whole stage seconds, of which BPE training seconds)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.execute import run_kind
    from resources.store import ArtifactStore

    store = ArtifactStore(home)
    with store.writer("load_documents", "benchdocs") as tmp:
        pq.write_table(
            pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts}), tmp / "documents.parquet"
        )
        docs = store.commit(tmp, "load_documents", "benchdocs", {"produces": "documents", "stage": "docs"})
    t0 = time.perf_counter()
    art, _ = run_kind(
        "train_tokenizer",
        {"from": "docs", "vocab_size": VOCAB, "held_out_frac": 0.0},
        home,
        inputs={"from_": [docs]},
        log=lambda *a: None,
    )
    return time.perf_counter() - t0, float(art.metrics["train_s"])


def paired_ratio(stage_train_s: list[float], bare_s: list[float]) -> dict:
    """Per-round ``bare / stage`` ratios (>1: the stage trains faster), their median and range."""
    import statistics

    ratios = sorted(b / t for t, b in zip(stage_train_s, bare_s))
    return {
        "median": round(statistics.median(ratios), 3),
        "min": round(ratios[0], 3),
        "max": round(ratios[-1], 3),
        "rounds": [round(r, 3) for r in ratios],
    }


def run(out_dir: Path | str, rounds: int = 9) -> dict:
    texts = _texts()
    mb = sum(len(t.encode()) for t in texts) / 1e6
    stage_rounds: list[tuple[float, float]] = []
    bare_rounds: list[float] = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(rounds):  # alternate which side goes first, so a load trend hits both sides alike
            if i % 2 == 0:
                stage_rounds.append(_stage(texts, Path(d) / f"h{i}"))
                bare_rounds.append(_bare(texts))
            else:
                bare_rounds.append(_bare(texts))
                stage_rounds.append(_stage(texts, Path(d) / f"h{i}"))
    train = min(t for _, t in stage_rounds)
    whole = min(w for w, _ in stage_rounds)
    bare = min(bare_rounds)
    paired = paired_ratio([t for _, t in stage_rounds], bare_rounds)
    return {
        "text_mb": round(mb, 2),
        "vocab_size": VOCAB,
        "rounds": rounds,
        "stage_train_mb_per_s": round(mb / train, 2),
        "bare_tokenizers_mb_per_s": round(mb / bare, 2),
        "stage_over_bare": paired["median"],
        "stage_over_bare_rounds": paired["rounds"],
        "stage_over_bare_best_times": round(bare / train, 3),
        "stage_whole_s": round(whole, 3),
        "stage_other_s": round(min(w - t for w, t in stage_rounds), 3),
        "note": "ratio: median over rounds of bare / stage BPE training time, each round timing both sides back "
        "to back (same pre-tokenizer, special tokens and vocabulary); MB/s are each side's best round; "
        "stage_other_s is the stage's read, held-out measurement, format probes, save and commit",
    }
