"""The pretraining objective (``ops.train.lm``) on a hand-made token stream whose content is known (token ``i``
of the stream is ``i % 64``): batch shapes and next-token labels, the same global batch at any world size,
the loss and validation figures against direct computations, and the resume fingerprint."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ops.model import build_model
from ops.tokens import TokenStream
from ops.train.lm import evaluate_lm, lm_loss, make_batch_fn, resume_fingerprint

pytestmark = pytest.mark.unit

V = 64
ARCH = {"arch": "qwen2", "d_model": 32, "layers": 2, "heads": 4, "kv_heads": 2}


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory):
    """A tokens artifact: 5000 train and 300 val tokens, ``token_bytes``: token 0 (end of text) has no
    bytes, token ``t`` has ``1 + t % 3``."""
    root = tmp_path_factory.mktemp("tokens")
    for split, n in (("train", 5000), ("val", 300)):
        (root / split).mkdir()
        (np.arange(n) % V).astype(np.uint16).tofile(root / split / "shard-00000.bin")
    tb = np.array([0] + [1 + t % 3 for t in range(1, V)], dtype=np.int64)
    np.save(root / "token_bytes.npy", tb)
    meta = {"dtype": "uint16", "vocab_size": V, "eos_id": 0, "bytes": {"train": 10_000, "val": 600}}
    (root / "meta.json").write_text(json.dumps(meta))
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    return root


def test_batches_are_next_token_pairs_of_the_requested_shape(tokens_dir):
    stream = TokenStream(tokens_dir, "train")
    fn = make_batch_fn(stream, batch_size=8, seq_len=16, seed=3, rank=0, world=1, device="cpu")
    b = fn(5, 0)
    assert b["input_ids"].shape == b["labels"].shape == (8, 16)
    assert b["input_ids"].dtype == torch.long
    # labels are the inputs shifted by one token of the same window, i.e. the stream's next token
    assert torch.equal(b["labels"][:, :-1], b["input_ids"][:, 1:])
    assert torch.equal(b["labels"], (b["input_ids"] + 1) % V)
    # a pure function of (seed, step, micro): equal on a second call, different for another step or micro
    assert torch.equal(fn(5, 0)["input_ids"], b["input_ids"])
    assert not torch.equal(fn(6, 0)["input_ids"], b["input_ids"])
    assert not torch.equal(fn(5, 1)["input_ids"], b["input_ids"])


def test_ranks_split_the_same_global_batch(tokens_dir):
    stream = TokenStream(tokens_dir, "train")
    kw = {"batch_size": 8, "seq_len": 16, "seed": 3, "device": "cpu"}
    whole = make_batch_fn(stream, rank=0, world=1, **kw)(2, 0)["input_ids"]
    parts = [make_batch_fn(stream, rank=r, world=4, **kw)(2, 0)["input_ids"] for r in range(4)]
    assert all(p.shape == (2, 16) for p in parts)
    assert torch.equal(torch.cat(parts), whole)
    with pytest.raises(ValueError, match="batch_size 8 is not divisible by the number of ranks 3"):
        make_batch_fn(stream, rank=0, world=3, **kw)


def test_lm_loss_is_the_mean_next_token_cross_entropy(tokens_dir):
    model = build_model(ARCH, V, seed=0)
    b = make_batch_fn(TokenStream(tokens_dir), batch_size=4, seq_len=16, seed=0, rank=0, world=1, device="cpu")(
        0, 0
    )
    loss, stats = lm_loss(model, b)
    logits = model(input_ids=b["input_ids"]).logits
    ref = F.cross_entropy(logits.reshape(-1, V), b["labels"].reshape(-1))
    assert torch.allclose(loss, ref, atol=1e-6)
    assert stats == {"tokens": 64}
    # an untrained model is near uniform over the vocabulary
    assert abs(float(loss) - math.log(V)) < 0.5


def test_validation_loss_and_bits_per_byte_match_a_direct_computation(tokens_dir):
    model = build_model(ARCH, V, seed=1)
    val = TokenStream(tokens_dir, "val")
    out = evaluate_lm(model, val, seq_len=32, max_tokens=200, batch_size=3, device="cpu")
    toks = torch.from_numpy(np.asarray(val.tokens[:200], dtype=np.int64))
    nll, nll_bytes, n_bytes, n = 0.0, 0.0, 0, 0
    tb = np.load(tokens_dir / "token_bytes.npy")
    with torch.no_grad():
        for s in range(0, 199, 32):  # non-overlapping windows of 33 tokens from the start, the last one shorter
            w = toks[s : min(s + 33, 200)]
            ce = F.cross_entropy(model(input_ids=w[None, :-1]).logits[0].float(), w[1:], reduction="none")
            nll += float(ce.sum())
            n += len(ce)
            nb = torch.from_numpy(tb[w[1:].numpy()])
            nll_bytes += float((ce * (nb > 0)).sum())
            n_bytes += int(nb.sum())
    assert out["val_tokens"] == n == 199
    assert out["val_loss"] == pytest.approx(nll / n, rel=1e-5)
    assert out["val_bpb"] == pytest.approx(nll_bytes / math.log(2) / n_bytes, rel=1e-5)


def test_resume_fingerprint_follows_the_data_and_the_tokenizer(tokens_dir, tmp_path):
    import shutil

    a = resume_fingerprint(tokens_dir, tokens_dir / "tokenizer")
    assert a == resume_fingerprint(tokens_dir, tokens_dir / "tokenizer")
    assert set(a) == {"tokens_meta", "tokens_shards", "tokenizer", "code", "torch", "transformers"}
    copy = tmp_path / "tokens"
    shutil.copytree(tokens_dir, copy)
    assert resume_fingerprint(copy, copy / "tokenizer") == a  # where the files lie does not matter
    shard = copy / "train" / "shard-00000.bin"
    data = bytearray(shard.read_bytes())
    data[10] ^= 1
    shard.write_bytes(bytes(data))
    b = resume_fingerprint(copy, copy / "tokenizer")
    assert b["tokens_shards"] != a["tokens_shards"] and b["tokens_meta"] == a["tokens_meta"]
    (copy / "tokenizer" / "tokenizer.json").write_text('{"changed": 1}')
    assert resume_fingerprint(copy, copy / "tokenizer")["tokenizer"] != a["tokenizer"]
