"""Tokenizer (ops + train_tokenizer/tokenize kinds): compression, round-trip, digits, chat template, token
shards split by document, and clear errors on bad input. Trained on text that ships with Python."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ops import tokenizer as T
from ops.tokens import TokenStream, is_val, tokenize_documents, unigram_entropy
from pipelines.execute import run_kind
from resources.store import ArtifactStore


def pydoc_paragraphs(min_len: int = 200) -> list[tuple[str, str]]:
    import pydoc_data.topics as topics

    out = []
    for k, v in sorted(topics.topics.items()):
        for j, p in enumerate(v.split("\n\n")):
            if len(p) > min_len:
                out.append((f"{k}-{j}", p))
    return out


def stdlib_docstrings(min_len: int = 200) -> list[tuple[str, str]]:
    """Docstrings of the standard library's top-level modules (read with ``ast``: nothing is imported)."""
    import ast
    import sysconfig

    out, seen = [], set()
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                key = f"{f.stem}:{getattr(node, 'name', '')}:{getattr(node, 'lineno', 0)}"
                if doc and len(doc) > min_len and key not in seen:
                    seen.add(key)
                    out.append((key, doc))
    return out


def store_documents(home: Path, docs: list[tuple[str, str]], version: str = "docs1", columns=("id", "text")):
    store = ArtifactStore(home)
    with store.writer("extract", version) as tmp:
        data = {"id": [a for a, _ in docs], "text": [b for _, b in docs]}
        pq.write_table(pa.table({c: data[c] for c in columns}), tmp / "documents.parquet")
        return store.commit(
            tmp, "extract", version, {"kind": "extract", "produces": "documents", "stage": "corpus"}
        )


def store_tasks(home: Path, n: int = 200):
    from ops.tasks import TASK_SCHEMA, make_splits

    train, ev = make_splits(n, 20, seed=0, difficulties=(2,))
    store = ArtifactStore(home)
    with store.writer("reasoning_tasks", "tasks1") as tmp:
        for name, rows in (("train", train), ("eval", ev)):
            cols = {f.name: [getattr(t, f.name) for t in rows] for f in TASK_SCHEMA}
            pq.write_table(pa.table(cols, schema=TASK_SCHEMA), tmp / f"{name}.parquet")
        return store.commit(
            tmp,
            "reasoning_tasks",
            "tasks1",
            {"kind": "reasoning_tasks", "produces": "tasks", "stage": "tasks"},
        ), train


@pytest.mark.unit
def test_bpe_compresses_held_out_text_and_round_trips():
    texts = [t for _, t in pydoc_paragraphs()]
    train, held = T.split_held_out(texts, 0.1)
    tok = T.train_bpe(train, 4096)
    ev = T.evaluate(tok, held)
    assert ev["bytes_per_token"] >= 2.5  # acceptance: default vocabulary
    assert ev["roundtrip_failures"] == 0 and ev["max_id"] < 4096
    for s in ["naïve café — 日本語 🎉", "x = 12345 + 0.5\n\t\ttabs", ""]:
        assert tok.decode(tok.encode(s).ids) == s
    # digits are single tokens whatever the context
    for s in ["2024", " 1234567", "x99y"]:
        pieces = [p for p in tok.encode(s).tokens if any(c.isdigit() for c in p)]
        assert all(sum(c.isdigit() for c in p) == 1 for p in pieces), pieces


_TRAIN_IN_FRESH_PROCESS = """
import hashlib, json, random, sys
from ops import tokenizer as T
texts = json.load(open(sys.argv[1]))
random.Random(int(sys.argv[2])).shuffle(texts)
train, held = T.split_held_out(texts, 0.1)
tok = T.train_bpe(train, 700)
print(json.dumps({"held": sorted(held), "tok": hashlib.sha256(tok.to_str().encode()).hexdigest()}))
"""


@pytest.mark.unit
def test_tokenizer_is_the_same_for_the_same_documents_in_any_order_and_process(tmp_path):
    """The same corpus in another order (a re-crawl writes pages in fetch order), trained in fresh processes
    (tokenizers' Rust hash maps are seeded per process), gives the same held-out split and tokenizer."""
    import json
    import os
    import subprocess
    import sys

    texts = [t for _, t in pydoc_paragraphs()][:150]
    src = tmp_path / "texts.json"
    src.write_text(json.dumps(texts))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    runs = [
        json.loads(subprocess.run([sys.executable, "-c", _TRAIN_IN_FRESH_PROCESS, str(src), str(seed)],
                                  check=True, capture_output=True, text=True, env=env, timeout=300).stdout)
        for seed in (0, 1)
    ]
    assert runs[0] == runs[1]
    assert 1 <= len(runs[0]["held"]) < len(texts)


@pytest.mark.unit
def test_saved_tokenizer_loads_with_autotokenizer_and_renders_chat(tmp_path):
    from transformers import AutoTokenizer

    tok = T.train_bpe([t for _, t in pydoc_paragraphs()][:200], 600)
    T.save_tokenizer(tok, tmp_path)
    fast = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert fast.eos_token == "<|endoftext|>" and fast.eos_token_id == 0
    assert fast.pad_token == "<|pad|>" and fast.pad_token_id == 1
    assert [fast.convert_tokens_to_ids(s) for s in T.SPECIAL_TOKENS] == list(range(8))
    assert "chat_template" in (tmp_path / "tokenizer_config.json").read_text()
    msgs = [{"role": "user", "content": "What is 2+3?"}]
    assert fast.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == T.chat_prompt(
        "What is 2+3?"
    )
    full = msgs + [{"role": "assistant", "content": T.chat_response("2+3=5", "5", end=False)}]
    assert fast.apply_chat_template(full, tokenize=False) == T.chat_prompt("What is 2+3?") + T.chat_response(
        "2+3=5", "5"
    )
    ids = fast(T.chat_response("r", "1"), add_special_tokens=False)["input_ids"]
    assert ids[0] == 4 and ids[-1] == 3  # <think> ... <|im_end|> as single ids


@pytest.mark.unit
def test_vocab_too_small_is_refused():
    with pytest.raises(ValueError, match="must exceed 264"):
        T.train_bpe(["abc"], 200)


@pytest.mark.unit
def test_token_shards_split_by_document(tmp_path):
    docs = pydoc_paragraphs()
    tok = T.train_bpe([t for _, t in docs], 1024)
    tok.save(str(tmp_path / "tokenizer.json"))
    rep = tokenize_documents(
        [a for a, _ in docs],
        [b for _, b in docs],
        tmp_path / "tokenizer.json",
        tmp_path / "out",
        val_frac=0.1,
    )
    idx = pq.read_table(tmp_path / "out" / "index.parquet").to_pylist()
    assert {r["split"] for r in idx} == {"train", "val"}
    assert all((r["split"] == "val") == is_val(r["doc_id"], 0.1) for r in idx)
    train, val = TokenStream(tmp_path / "out", "train"), TokenStream(tmp_path / "out", "val")
    assert len(train) == rep.tokens["train"] and len(val) == rep.tokens["val"] > 0
    assert int(train.tokens.max()) < 1024 and train.tokens.dtype == np.uint16
    # every document is stored whole, followed by eos, at its recorded offset
    r = next(r for r in idx if r["split"] == "val")
    seg = val.tokens[r["offset"] : r["offset"] + r["n_tokens"]]
    assert seg[-1] == 0 and tok.decode(list(map(int, seg[:-1]))) == dict(docs)[r["doc_id"]]
    w1 = train.random_windows(4, 33, key=(0, 5, 0))
    assert w1.shape == (4, 33) and np.array_equal(w1, train.random_windows(4, 33, key=(0, 5, 0)))
    assert 0 < unigram_entropy(val.tokens) < np.log(1024)


@pytest.mark.unit
def test_token_stream_reads_exactly_the_shards_meta_lists(tmp_path):
    docs = pydoc_paragraphs()[:20]
    tok = T.train_bpe([t for _, t in docs], 512)
    tok.save(str(tmp_path / "tokenizer.json"))
    out = tmp_path / "out"
    rep = tokenize_documents([a for a, _ in docs], [b for _, b in docs], tmp_path / "tokenizer.json", out)
    stray = out / "train" / "shard-00001.bin"
    stray.write_bytes(np.full(1000, 60000, np.uint16).tobytes())  # ids beyond the vocabulary
    train = TokenStream(out, "train")
    assert len(train) == rep.tokens["train"] and int(train.tokens.max()) < 512

    (out / "train" / "shard-00000.bin").unlink()  # the listed shard is gone, a stray one is there
    with pytest.raises(FileNotFoundError, match=r"meta.json lists 1 train shards; missing: .*shard-00000"):
        TokenStream(out, "train")
    stray.rename(out / "train" / "shard-00000.bin")  # a shard of another length in its place
    with pytest.raises(ValueError, match=r"train shards hold 1000 tokens, meta.json records \d+"):
        TokenStream(out, "train")


def test_repeated_texts_are_encoded_once_with_the_same_tokens(tmp_path, monkeypatch):
    """A repeated document (``tasks_repeat`` > 1) is encoded once and stored with the same tokens each time,
    also when its copies fall into different encode batches."""
    from tokenizers import Tokenizer

    docs = pydoc_paragraphs()[:20]
    tok = T.train_bpe([t for _, t in docs], 512)
    tok.save(str(tmp_path / "tokenizer.json"))
    ids = [a for a, _ in docs] + [f"{a}#1" for a, _ in docs[:5]] + ["empty", "empty#1"]
    texts = [b for _, b in docs] + [b for _, b in docs[:5]] + ["", ""]
    seen: list[str] = []
    real = Tokenizer.encode_batch

    def counting(self, batch, *a, **kw):
        seen.extend(batch)
        return real(self, batch, *a, **kw)

    monkeypatch.setattr(Tokenizer, "encode_batch", counting)
    tokenize_documents(ids, texts, tmp_path / "tokenizer.json", tmp_path / "out", val_frac=0.0, batch_size=7)
    assert sorted(seen) == sorted(set(texts))
    idx = {r["doc_id"]: r for r in pq.read_table(tmp_path / "out" / "index.parquet").to_pylist()}
    train = TokenStream(tmp_path / "out", "train").tokens

    def seg(d):
        return list(train[idx[d]["offset"] : idx[d]["offset"] + idx[d]["n_tokens"]])

    for a, text in docs[:5]:
        assert seg(f"{a}#1") == seg(a) and tok.decode(list(map(int, seg(a)[:-1]))) == text
    assert seg("empty") == seg("empty#1") == [0]


@pytest.mark.integration
def test_train_tokenizer_and_tokenize_kinds(lmforge_home):
    docs = store_documents(lmforge_home, pydoc_paragraphs())
    tasks, train_tasks = store_tasks(lmforge_home)
    art, res = run_kind(
        "train_tokenizer",
        {"from": "corpus", "tasks": ["tasks"], "vocab_size": 4096, "tasks_weight": 2},
        lmforge_home,
        inputs={"from_": [docs], "tasks": [tasks]},
        stage="tokenizer",
    )
    assert all(c.passed for c in res.checks), res.checks
    assert res.metrics["bytes_per_token_held_out"] >= 2.5 and res.metrics["task_texts"] == len(train_tasks)
    fast = T.load_tokenizer(art.path)
    q = train_tasks[0].question
    assert fast.decode(fast(q)["input_ids"]) == q
    toks, res2 = run_kind(
        "tokenize",
        {"from": "corpus", "tokenizer": "tokenizer", "val_frac": 0.1},
        lmforge_home,
        inputs={"from_": [docs], "tokenizer": [art]},
        stage="tokens",
    )
    assert all(c.passed for c in res2.checks)
    assert res2.metrics["val_docs"] > 0 and res2.metrics["max_id"] < 4096
    assert (toks.path / "index.parquet").is_file() and (toks.path / "train" / "shard-00000.bin").is_file()
    assert res2.metrics["task_docs"] == 0

    # a math-heavy mix: the tasks' training problems join the train split as plain text (twice); the
    # validation split is the corpus's, unchanged, and no eval problem is read
    mixed, res3 = run_kind(
        "tokenize",
        {"from": "corpus", "tokenizer": "tokenizer", "val_frac": 0.1, "tasks": ["tasks"], "tasks_repeat": 2},
        lmforge_home,
        inputs={"from_": [docs], "tokenizer": [art], "tasks": [tasks]},
        stage="tokens",
    )
    assert all(c.passed for c in res3.checks)
    assert res3.metrics["task_docs"] == 2 * len(train_tasks)
    assert res3.metrics["val_tokens"] == res2.metrics["val_tokens"]
    assert res3.metrics["train_tokens"] == res2.metrics["train_tokens"] + res3.metrics["task_tokens"]
    idx = pq.read_table(mixed.path / "index.parquet").to_pylist()
    task_rows = [r for r in idx if r["doc_id"].startswith("task:")]
    assert len(task_rows) == 2 * len(train_tasks) and {r["split"] for r in task_rows} == {"train"}
    first = next(r for r in task_rows if r["doc_id"] == f"task:{train_tasks[0].id}")
    seg = TokenStream(mixed.path, "train").tokens[first["offset"] : first["offset"] + first["n_tokens"] - 1]
    text = fast.decode(list(map(int, seg)))
    assert text.startswith(train_tasks[0].question) and text.endswith(
        f"The answer is {train_tasks[0].answer}."
    )
    assert "<|im_start|>" not in text
    # a tasks input that is not a tasks artifact: one clear error naming the stage and field, nothing stored
    with pytest.raises(ValueError, match=r"stage 'tokens2', field 'tasks': .*train.parquet does not exist"):
        run_kind(
            "tokenize",
            {"from": "corpus", "tokenizer": "tokenizer", "tasks": ["corpus"]},
            lmforge_home,
            inputs={"from_": [docs], "tokenizer": [art], "tasks": [docs]},
            stage="tokens2",
        )


@pytest.mark.integration
def test_bad_documents_give_clear_errors_and_store_nothing(lmforge_home):
    no_text = store_documents(lmforge_home, [("a", "x")], version="bad1", columns=("id",))
    with pytest.raises(
        ValueError, match=r"stage 'tok', field 'from': .*documents.parquet lacks column\(s\) \['text'\]"
    ):
        run_kind(
            "train_tokenizer", {"from": "corpus"}, lmforge_home, inputs={"from_": [no_text]}, stage="tok"
        )
    empty = store_documents(lmforge_home, [("a", "   "), ("b", "")], version="bad2")
    with pytest.raises(ValueError, match="has no non-empty text"):
        run_kind("train_tokenizer", {"from": "corpus"}, lmforge_home, inputs={"from_": [empty]}, stage="tok")
    assert not (lmforge_home / "artifacts" / "train_tokenizer").exists() or not any(
        (p / "manifest.json").exists() for p in (lmforge_home / "artifacts" / "train_tokenizer").iterdir()
    )
    good = store_documents(lmforge_home, pydoc_paragraphs()[:50], version="ok")
    tok, _ = run_kind(
        "train_tokenizer",
        {"from": "corpus", "vocab_size": 512},
        lmforge_home,
        inputs={"from_": [good]},
        stage="tok",
    )
    dup = store_documents(lmforge_home, [("a", "hello there"), ("a", "again")], version="dup")
    with pytest.raises(ValueError, match="duplicate ids"):
        run_kind(
            "tokenize",
            {"from": "corpus", "tokenizer": "tok"},
            lmforge_home,
            inputs={"from_": [dup], "tokenizer": [tok]},
            stage="tokens",
        )
