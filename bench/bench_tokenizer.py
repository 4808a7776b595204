"""Tokenizer training throughput: the ``train_tokenizer`` stage (read documents Parquet, hold out, train the
digit-splitting byte-level BPE, measure, save a transformers tokenizer) against bare HF ``tokenizers``
training a byte-level BPE of the same vocabulary on the same text, same run. MB/s of training text."""

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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    t0 = time.perf_counter()
    tok.train_from_iterator(texts, trainer=trainer)
    return time.perf_counter() - t0


def _stage(texts: list[str], home: Path) -> float:
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
    run_kind(
        "train_tokenizer",
        {"from": "docs", "vocab_size": VOCAB, "held_out_frac": 0.0},
        home,
        inputs={"from_": [docs]},
        log=lambda *a: None,
    )
    return time.perf_counter() - t0


def run(out_dir: Path | str) -> dict:
    texts = _texts()
    mb = sum(len(t.encode()) for t in texts) / 1e6
    with tempfile.TemporaryDirectory() as d:
        stage = min(_stage(texts, Path(d) / f"h{i}") for i in range(2))
    bare = min(_bare(texts) for _ in range(2))
    return {
        "text_mb": round(mb, 2),
        "vocab_size": VOCAB,
        "stage_mb_per_s": round(mb / stage, 2),
        "bare_tokenizers_mb_per_s": round(mb / bare, 2),
        "stage_over_bare": round(bare / stage, 3),
        "note": "the stage also splits digits, adds 8 special tokens, measures held-out bytes/token and "
        "saves a transformers tokenizer",
    }
