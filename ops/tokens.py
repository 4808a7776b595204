"""Packed token shards: documents -> flat uint16/uint32 token streams per split + a Parquet index.

Layout of a ``tokens`` artifact::

    train/shard-00000.bin ...   flat little-endian token ids; every document is followed by <|endoftext|>
    val/shard-00000.bin ...     the held-out split (whole documents, never split across train/val)
    index.parquet               doc_id, split, shard, offset, n_tokens (incl. eos), n_bytes (UTF-8 of the text)
    meta.json                   dtype, vocab_size, eos_id, totals and shard counts per split (readers
                                read exactly those shards)
    token_bytes.npy             bytes each token id decodes to (0 for special tokens), for bits/byte

Key design choice: we tokenize with the HF ``tokenizers`` Rust encoder directly (``encode_batch`` is
multi-threaded) instead of datatrove's ``DocumentTokenizer``. datatrove works offline with a local
``tokenizer.json`` (see the reference notes), but it shuffles and merges into its own ``.ds`` format and
would need a second pass to split by document and to keep our stable document ids; at lmforge's sizes the
direct path is simpler and as fast. The held-out split is a hash of the document id (not its position), so a
document stays on the same side when the corpus grows or is reordered.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHARD_TOKENS = 1 << 24  # 16M tokens (32 MB at uint16) per shard file


def is_val(doc_id: str, val_frac: float, seed: int = 0) -> bool:
    """Deterministic per-document split decision from a hash of ``(seed, doc_id)``."""
    h = hashlib.sha1(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < val_frac


def token_byte_lengths(tok: Any) -> Any:
    """Bytes each id of a byte-level BPE ``tokenizers.Tokenizer`` decodes to (specials: 0).

    In the byte-level alphabet every character of a token string stands for exactly one byte, so the byte
    length is the string length; this is exact even for tokens holding part of a UTF-8 sequence.
    """
    import numpy as np

    vocab = tok.get_vocab_size()
    out = np.zeros(vocab, dtype=np.int32)
    special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    for s, i in tok.get_vocab().items():
        if i < vocab and s not in special:
            out[i] = len(s)
    return out


@dataclass
class TokenizeReport:
    docs: dict[str, int]
    tokens: dict[str, int]
    bytes: dict[str, int]
    max_id: int
    vocab_size: int
    empty_docs: int
    train_only_tokens: int = 0


def tokenize_documents(
    ids: list[str],
    texts: list[str],
    tokenizer_json: Path,
    out: Path,
    *,
    val_frac: float = 0.05,
    seed: int = 0,
    batch_size: int = 512,
    min_val_docs: int = 1,
    train_only: set[int] | None = None,
) -> TokenizeReport:
    """Tokenize documents into ``out`` (layout in the module docstring). Documents whose index is in
    ``train_only`` (a pretraining mix added to a corpus) always go to the train split."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    vocab = tok.get_vocab_size()
    eos = tok.token_to_id("<|endoftext|>")
    if eos is None:
        raise ValueError(f"{tokenizer_json}: tokenizer has no <|endoftext|> token")
    dtype = np.uint16 if vocab <= 65535 else np.uint32
    train_only = train_only or set()
    split = [
        "train" if k in train_only else ("val" if is_val(i, val_frac, seed) else "train")
        for k, i in enumerate(ids)
    ]
    eligible = len(ids) - len(train_only)
    if val_frac > 0 and split.count("val") < min_val_docs and eligible > min_val_docs:
        # tiny corpora: take the documents with the smallest hashes so the choice is still id-determined
        order = sorted(
            (k for k in range(len(ids)) if k not in train_only),
            key=lambda k: hashlib.sha1(f"{seed}:{ids[k]}".encode()).digest(),
        )
        for k in order[:min_val_docs]:
            split[k] = "val"
    if split.count("train") == 0:
        raise ValueError("every document landed in the validation split; lower val_frac or add documents")

    writers = {s: _ShardWriter(out / s, dtype) for s in ("train", "val")}
    rows: dict[str, list] = {k: [] for k in ("doc_id", "split", "shard", "offset", "n_tokens", "n_bytes")}
    max_id, empty, train_only_tokens = -1, 0, 0
    # a text that occurs more than once (a repeated pretraining-mix document) is encoded once
    repeated = {t for t, c in Counter(texts).items() if c > 1}
    cache: dict[str, list[int]] = {}
    for b in range(0, len(texts), batch_size):
        chunk = texts[b : b + batch_size]
        todo = list(dict.fromkeys(t for t in chunk if t not in cache))
        fresh = dict(zip(todo, (e.ids for e in tok.encode_batch(todo, add_special_tokens=False))))
        cache.update((t, v) for t, v in fresh.items() if t in repeated)
        for j, text in enumerate(chunk):
            k = b + j
            arr = np.asarray((fresh[text] if text in fresh else cache[text]) + [eos], dtype=np.int64)
            if len(arr) == 1:
                empty += 1
            max_id = max(max_id, int(arr.max()))
            shard, offset = writers[split[k]].write(arr.astype(dtype))
            rows["doc_id"].append(ids[k])
            rows["split"].append(split[k])
            rows["shard"].append(shard)
            rows["offset"].append(offset)
            rows["n_tokens"].append(len(arr))
            if k in train_only:
                train_only_tokens += len(arr)
            rows["n_bytes"].append(len(texts[k].encode("utf-8")))
    totals = {s: w.close() for s, w in writers.items()}
    schema = pa.schema(
        [
            ("doc_id", pa.string()),
            ("split", pa.string()),
            ("shard", pa.int32()),
            ("offset", pa.int64()),
            ("n_tokens", pa.int64()),
            ("n_bytes", pa.int64()),
        ]
    )
    pq.write_table(pa.table(rows, schema=schema), out / "index.parquet", compression="zstd")
    np.save(out / "token_bytes.npy", token_byte_lengths(tok))
    docs = {s: split.count(s) for s in ("train", "val")}
    nbytes = {s: sum(n for n, sp in zip(rows["n_bytes"], rows["split"]) if sp == s) for s in ("train", "val")}
    meta = {
        "dtype": np.dtype(dtype).name,
        "vocab_size": vocab,
        "eos_id": eos,
        "docs": docs,
        "tokens": totals,
        "bytes": nbytes,
        "val_frac": val_frac,
        "seed": seed,
        "max_id": max_id,
        "shards": {s: w.n_shards for s, w in writers.items()},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return TokenizeReport(
        docs=docs,
        tokens=totals,
        bytes=nbytes,
        max_id=max_id,
        vocab_size=vocab,
        empty_docs=empty,
        train_only_tokens=train_only_tokens,
    )


class _ShardWriter:
    def __init__(self, root: Path, dtype: Any):
        self.root, self.dtype = root, dtype
        root.mkdir(parents=True, exist_ok=True)
        self.n_shards, self.in_shard, self.total = 0, 0, 0
        self.f = None

    def write(self, arr: Any) -> tuple[int, int]:
        if self.f is None or self.in_shard >= SHARD_TOKENS:
            if self.f is not None:
                self.f.close()
            self.f = open(self.root / f"shard-{self.n_shards:05d}.bin", "wb")  # noqa: SIM115
            self.n_shards += 1
            self.in_shard = 0
        pos = self.in_shard
        self.f.write(arr.tobytes())
        self.in_shard += len(arr)
        self.total += len(arr)
        return self.n_shards - 1, pos

    def close(self) -> int:
        if self.f is not None:
            self.f.close()
        return self.total


def shard_files(root: Path, split: str, meta: dict[str, Any]) -> list[Path]:
    """The shards of ``split`` that ``meta.json`` lists, in order: a stray ``shard-*.bin`` beside them is
    never read; a listed one that is missing is an error."""
    n = meta.get("shards", {}).get(split)
    if n is None:  # written before meta.json counted its shards
        return sorted((root / split).glob("shard-*.bin"))
    files = [root / split / f"shard-{i:05d}.bin" for i in range(n)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{root}: meta.json lists {n} {split} shards; missing: {', '.join(missing)}")
    return files


class TokenStream:
    """One split of a tokens artifact as a single flat array (shards concatenated, memory-mapped)."""

    def __init__(self, root: Path, split: str = "train"):
        import numpy as np

        self.root = Path(root)
        meta_f = self.root / "meta.json"
        if not meta_f.is_file():
            raise FileNotFoundError(f"{self.root}: not a tokens artifact (no meta.json)")
        self.meta = json.loads(meta_f.read_text())
        dtype = np.dtype(self.meta["dtype"])
        files = shard_files(self.root, split, self.meta)
        parts = [np.memmap(f, dtype=dtype, mode="r") for f in files if f.stat().st_size > 0]
        self.tokens = (
            parts[0] if len(parts) == 1 else (np.concatenate(parts) if parts else np.zeros(0, dtype))
        )
        expected = self.meta.get("tokens", {}).get(split)
        if expected is not None and len(self.tokens) != expected:
            raise ValueError(
                f"{self.root}: {split} shards hold {len(self.tokens)} tokens, meta.json records {expected}"
            )
        self.vocab_size = int(self.meta["vocab_size"])
        self.eos_id = int(self.meta["eos_id"])
        self.n_bytes = int(self.meta["bytes"][split])
        tb = self.root / "token_bytes.npy"
        self.token_bytes = np.load(tb) if tb.is_file() else None

    def __len__(self) -> int:
        return len(self.tokens)

    def random_windows(self, n: int, length: int, key: tuple[int, ...]) -> Any:
        """``n`` windows of ``length`` tokens at offsets drawn from ``numpy.random.default_rng(key)`` —
        a pure function of ``key`` (e.g. ``(seed, step, micro)``), which is what makes resume exact."""
        import numpy as np

        if len(self.tokens) < length + 1:
            raise ValueError(
                f"{self.root}: only {len(self.tokens)} tokens, need at least {length + 1} per window"
            )
        starts = np.random.default_rng(list(key)).integers(0, len(self.tokens) - length + 1, size=n)
        return np.stack([np.asarray(self.tokens[s : s + length], dtype=np.int64) for s in starts])

    def sequential_windows(self, length: int, max_tokens: int | None = None) -> Iterator[Any]:
        """Non-overlapping windows from the start (the fixed validation set)."""
        import numpy as np

        end = len(self.tokens) if max_tokens is None else min(len(self.tokens), max_tokens)
        for s in range(0, end - 1, length):
            w = np.asarray(self.tokens[s : min(s + length + 1, end)], dtype=np.int64)
            if len(w) >= 2:
                yield w


def unigram_entropy(tokens: Any) -> float:
    """Entropy (nats/token) of the empirical unigram distribution of ``tokens``."""
    import numpy as np

    counts = np.bincount(np.asarray(tokens, dtype=np.int64))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
