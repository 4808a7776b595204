"""Stage kinds ``train_tokenizer`` (documents [+ tasks] -> tokenizer) and ``tokenize`` (documents -> tokens).

Key design choice: the tokenizer is trained on the corpus *and* on the chat-formatted training tasks (when a
``tasks`` stage is named), so the vocabulary already holds the words and operators of the post-training
problems; digits are always split individually (``ops/tokenizer.py``), which keeps place value visible.
Held-out bytes/token is measured on documents the BPE never saw. Compute lives in ``ops/tokenizer.py`` and
``ops/tokens.py``; this module only reads inputs, calls them and reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from .registry import (
    CheckOutcome,
    CheckSpec,
    Json,
    Markdown,
    StageConfig,
    StageKind,
    StageResult,
    StageRun,
    Table,
    ref,
    register,
)


def _read_documents(art_path: Path, stage: str, field: str) -> tuple[list[str], list[str]]:
    """``(ids, texts)`` of a documents artifact; one clear error naming stage, field and file otherwise."""
    import pyarrow.parquet as pq

    f = art_path / "documents.parquet"
    if not f.is_file():
        raise ValueError(f"stage {stage!r}, field {field!r}: {f} does not exist (not a documents artifact)")
    try:
        t = pq.read_table(f)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"stage {stage!r}, field {field!r}: cannot read {f}: {e}") from e
    missing = [c for c in ("id", "text") if c not in t.column_names]
    if missing:
        raise ValueError(f"stage {stage!r}, field {field!r}: {f} lacks column(s) {missing}")
    ids = [str(x) for x in t.column("id").to_pylist()]
    texts = [x if isinstance(x, str) else "" for x in t.column("text").to_pylist()]
    return ids, texts


def _train_task_rows(art_path: Path, stage: str, field: str, required: tuple[str, ...]) -> list[dict]:
    """Rows of a tasks artifact's training split (eval tasks are never read); a missing file or column is
    an error naming the stage and field. ``solution`` is "" when the column is absent or null."""
    import pyarrow.parquet as pq

    f = art_path / "train.parquet"
    if not f.is_file():
        raise ValueError(f"stage {stage!r}, field {field!r}: {f} does not exist (not a tasks artifact)")
    t = pq.read_table(f)
    missing = [c for c in required if c not in t.column_names]
    if missing:
        raise ValueError(f"stage {stage!r}, field {field!r}: {f} lacks column(s) {missing}")
    rows = t.to_pylist()
    for r in rows:
        r["solution"] = r.get("solution") or ""
    return rows


def _read_task_texts(art_path: Path, stage: str, field: str) -> list[str]:
    """Chat-formatted training tasks (prompt + reference response)."""
    from ops.tokenizer import chat_prompt, chat_response

    rows = _train_task_rows(art_path, stage, field, ("question", "answer"))
    return [chat_prompt(r["question"]) + chat_response(r["solution"], r["answer"]) for r in rows]


# ---------------------------------------------------------------------------------------------- train_tokenizer
class TrainTokenizerConfig(StageConfig):
    from_: str = ref(
        "documents", alias="from", description="documents stage whose text the BPE is trained on"
    )
    tasks: list[str] = ref(
        "tasks",
        many=True,
        optional=True,
        description="task stages whose chat-formatted training problems (question + worked "
        "solution) are added to the training text; eval problems are never used",
    )
    tasks_weight: int = Field(
        1,
        ge=0,
        le=100,
        description="how many times each task text is repeated in the "
        "training text (up-weights a small task corpus)",
    )
    vocab_size: int = Field(
        4096, ge=300, le=1 << 20, description="total vocabulary: 8 special tokens + 256 bytes + merges"
    )
    min_frequency: int = Field(2, ge=1, description="a pair must occur this often to be merged")
    held_out_frac: float = Field(
        0.05,
        ge=0.0,
        lt=0.5,
        description="fraction of documents kept out of BPE training to measure bytes/token",
    )
    model_max_length: int = Field(
        2048, ge=16, description="model_max_length written to tokenizer_config.json"
    )
    min_bytes_per_token: float = Field(
        2.5, ge=0.0, description="non-blocking check: held-out compression floor"
    )
    seed: int = Field(0, description="seed of the held-out document split")


def _run_train_tokenizer(run: StageRun) -> StageResult:
    import time

    from ops import tokenizer as T

    cfg: TrainTokenizerConfig = run.config
    doc_art = run.input("from_")
    _, texts = _read_documents(doc_art.path, run.stage, "from")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError(
            f"stage {run.stage!r}, field 'from': {doc_art.path / 'documents.parquet'} has no non-empty text"
        )
    train_docs, held = T.split_held_out(texts, cfg.held_out_frac, seed=cfg.seed)
    task_texts: list[str] = []
    for art in run.inputs.get("tasks", []):
        task_texts += _read_task_texts(art.path, run.stage, "tasks")
    t0 = time.perf_counter()
    tok = T.train_bpe(
        T.iter_repeated([(train_docs, 1), (task_texts, cfg.tasks_weight)]),
        cfg.vocab_size,
        min_frequency=cfg.min_frequency,
    )
    train_s = time.perf_counter() - t0
    fast = T.save_tokenizer(tok, run.out, model_max_length=cfg.model_max_length)

    ev = T.evaluate(tok, held) if held else T.evaluate(tok, train_docs[:50])
    ev_tasks = T.evaluate(tok, task_texts[:500]) if task_texts else None
    probes = T.format_probes(fast)
    real_vocab = tok.get_vocab_size()
    n_bytes = sum(len(t.encode()) for t in train_docs) + cfg.tasks_weight * sum(
        len(t.encode()) for t in task_texts
    )
    sample_ids = fast(held[0][:300] if held else train_docs[0][:300], add_special_tokens=False)["input_ids"]
    sample = " · ".join(fast.convert_ids_to_tokens(sample_ids)[:80])

    metrics: dict[str, Any] = {
        "vocab_size": real_vocab,
        "bytes_per_token_held_out": round(ev["bytes_per_token"], 4),
        "vocab_used_held_out": ev["vocab_used"],
        "vocab_use_frac_held_out": round(ev["vocab_use_frac"], 4),
        "train_docs": len(train_docs),
        "held_out_docs": len(held),
        "task_texts": len(task_texts),
        "train_bytes": n_bytes,
        "train_s": round(train_s, 3),
        "train_mb_per_s": round(n_bytes / 1e6 / max(train_s, 1e-9), 3),
    }
    if ev_tasks:
        metrics["bytes_per_token_tasks"] = round(ev_tasks["bytes_per_token"], 4)
    checks = _tokenizer_checks(cfg, ev, real_vocab, **probes)
    md = _tokenizer_metadata(tok, cfg, train_docs, held, task_texts, ev, ev_tasks, train_s, sample)
    return StageResult(metrics=metrics, metadata=md, checks=checks)


def _tokenizer_checks(cfg, ev, real_vocab, probe_ok, template_ok, digits_split) -> list[CheckOutcome]:
    return [
        CheckOutcome(
            "roundtrip",
            ev["roundtrip_failures"] == 0 and probe_ok,
            "decode(encode(text)) == text on every held-out document and a "
            "probe with special tokens and non-ASCII text",
            {"failed_docs": len(ev["roundtrip_failed_docs"]), "probe_ok": probe_ok},
        ),
        CheckOutcome(
            "ids_below_vocab",
            ev["max_id"] < real_vocab and real_vocab <= cfg.vocab_size,
            "every id produced is below the vocabulary size",
            {"max_id": ev["max_id"], "vocab": real_vocab},
        ),
        CheckOutcome(
            "chat_template",
            template_ok and digits_split,
            "chat template renders the shared prompt format; digits are single tokens",
            {"template_ok": template_ok, "digits_split": digits_split},
        ),
        CheckOutcome(
            "compression",
            ev["bytes_per_token"] >= cfg.min_bytes_per_token,
            f"held-out bytes/token >= {cfg.min_bytes_per_token}",
            {"bytes_per_token": round(ev["bytes_per_token"], 4)},
        ),
    ]


def _tokenizer_metadata(tok, cfg, train_docs, held, task_texts, ev, ev_tasks, train_s, sample) -> dict[str, Any]:
    from ops import tokenizer as T

    real_vocab = tok.get_vocab_size()
    longest = sorted((s for s in tok.get_vocab() if s not in T.SPECIAL_TOKENS), key=len, reverse=True)[:20]
    return {
        "summary": Markdown(
            f"Byte-level BPE, **{real_vocab}** tokens, trained on {len(train_docs)} documents"
            f"{f' + {len(task_texts)} task texts x{cfg.tasks_weight}' if task_texts else ''} in {train_s:.2f} s.\n\n"
            f"Held-out ({len(held)} docs): **{ev['bytes_per_token']:.3f} bytes/token**, "
            f"{ev['vocab_used']} distinct tokens used ({100 * ev['vocab_use_frac']:.1f}% of the vocabulary)."
            + (f"\n\nTask texts: {ev_tasks['bytes_per_token']:.3f} bytes/token." if ev_tasks else "")
        ),
        "sample_tokenization": Markdown(f"`{sample}`"),
        "longest_tokens": Table(
            [{"token": s.replace("Ġ", "␣").replace("Ċ", "⏎"), "chars": len(s)} for s in longest]
        ),
        "special_tokens": Json({s: i for i, s in enumerate(T.SPECIAL_TOKENS)}),
    }


TRAIN_TOKENIZER = register(
    StageKind(
        name="train_tokenizer",
        config=TrainTokenizerConfig,
        produces="tokenizer",
        run=_run_train_tokenizer,
        description="Byte-level BPE (HF tokenizers) with digits split, chat special tokens and template",
        checks=(
            CheckSpec("roundtrip", "decode(encode(x)) == x on held-out text", blocking=True),
            CheckSpec("ids_below_vocab", "all ids < vocab size", blocking=True),
            CheckSpec(
                "chat_template", "template renders the shared chat format; digits split", blocking=True
            ),
            CheckSpec("compression", "held-out bytes/token above the configured floor", blocking=False),
        ),
    )
)


# ---------------------------------------------------------------------------------------------- tokenize
class TokenizeConfig(StageConfig):
    from_: str = ref("documents", alias="from", description="documents stage to tokenize")
    tokenizer: str = ref("tokenizer", description="train_tokenizer stage whose tokenizer.json is used")
    val_frac: float = Field(
        0.05,
        ge=0.0,
        lt=0.5,
        description="fraction of documents (by id hash) held out as the validation split",
    )
    seed: int = Field(0, description="salt of the document-id hash that decides the split")
    tasks: list[str] = ref(
        "tasks",
        many=True,
        optional=True,
        description="task stages whose training problems are mixed into the train split as plain text "
        "(question, worked solution, answer: a math-heavy pretraining mix, without the chat format); "
        "eval problems are never used and the validation split stays the corpus's",
    )
    tasks_repeat: int = Field(
        1, ge=1, le=100, description="how many times each task document is repeated in the train split"
    )


def _read_task_docs(art_path: Path, stage: str, field: str) -> tuple[list[str], list[str]]:
    """``(ids, texts)`` of a tasks artifact's training split as plain documents (no chat template):
    ``question\nsolution The answer is X.``"""
    rows = _train_task_rows(art_path, stage, field, ("id", "question", "answer"))
    ids = [f"task:{r['id']}" for r in rows]
    texts = [
        f"{r['question']}\n{r['solution'] + ' ' if r['solution'] else ''}The answer is {r['answer']}."
        for r in rows
    ]
    return ids, texts


def _tokenize_inputs(run: StageRun) -> tuple[Path, list[str], list[str], int, int]:
    """``(tokenizer.json, ids, texts, corpus documents, task documents)``: the corpus's non-empty documents
    (unique ids) followed by the task documents, each repeated ``tasks_repeat`` times."""
    cfg: TokenizeConfig = run.config
    docs = run.input("from_")
    tok_art = run.input("tokenizer")
    tj = tok_art.path / "tokenizer.json"
    if not tj.is_file():
        raise ValueError(f"stage {run.stage!r}, field 'tokenizer': {tj} does not exist")
    ids, texts = _read_documents(docs.path, run.stage, "from")
    keep = [i for i, t in enumerate(texts) if t.strip()]
    if not keep:
        raise ValueError(
            f"stage {run.stage!r}, field 'from': {docs.path / 'documents.parquet'} has no non-empty text"
        )
    ids, texts = [ids[i] for i in keep], [texts[i] for i in keep]
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"stage {run.stage!r}, field 'from': {docs.path / 'documents.parquet'} has duplicate ids"
        )
    n_corpus = len(ids)
    n_task_docs = 0
    for art in run.inputs.get("tasks", []):
        t_ids, t_texts = _read_task_docs(art.path, run.stage, "tasks")
        for r in range(cfg.tasks_repeat):
            ids += [f"{i}#{r}" if r else i for i in t_ids]
            texts += t_texts
        n_task_docs += len(t_ids) * cfg.tasks_repeat
    return tj, ids, texts, n_corpus, n_task_docs


def _run_tokenize(run: StageRun) -> StageResult:
    import time

    from ops.tokens import TokenStream, tokenize_documents, unigram_entropy

    cfg: TokenizeConfig = run.config
    tj, ids, texts, n_corpus, n_task_docs = _tokenize_inputs(run)
    t0 = time.perf_counter()
    rep = tokenize_documents(
        ids,
        texts,
        tj,
        run.out,
        val_frac=cfg.val_frac,
        seed=cfg.seed,
        train_only=set(range(n_corpus, len(ids))),
    )
    dt = time.perf_counter() - t0
    val = TokenStream(run.out, "val")
    h_val = unigram_entropy(val.tokens) if len(val) else float("nan")
    total = rep.tokens["train"] + rep.tokens["val"]
    metrics = {
        "train_docs": rep.docs["train"],
        "val_docs": rep.docs["val"],
        "train_tokens": rep.tokens["train"],
        "val_tokens": rep.tokens["val"],
        "bytes_per_token": round((rep.bytes["train"] + rep.bytes["val"]) / max(total, 1), 4),
        "val_unigram_entropy_nats": round(h_val, 4),
        "tokens_per_s": round(total / max(dt, 1e-9)),
        "vocab_size": rep.vocab_size,
        "max_id": rep.max_id,
        "task_docs": n_task_docs,
        "task_tokens": rep.train_only_tokens,
    }
    checks = [
        CheckOutcome(
            "ids_below_vocab",
            rep.max_id < rep.vocab_size,
            "every token id < vocabulary size",
            {"max_id": rep.max_id, "vocab_size": rep.vocab_size},
        ),
        CheckOutcome(
            "non_empty",
            rep.tokens["train"] > 0 and (cfg.val_frac == 0 or rep.tokens["val"] > 0),
            "train split (and val split when requested) hold tokens",
            {"train_tokens": rep.tokens["train"], "val_tokens": rep.tokens["val"]},
        ),
    ]
    md = _tokenize_metadata(rep, total, n_corpus, n_task_docs, dt, h_val)
    return StageResult(metrics=metrics, metadata=md, checks=checks, tokens=total)


def _tokenize_metadata(rep, total: int, n_corpus: int, n_task_docs: int, dt: float, h_val: float) -> dict:
    return {
        "splits": Table(
            [
                {"split": s, "docs": rep.docs[s], "tokens": rep.tokens[s], "bytes": rep.bytes[s]}
                for s in ("train", "val")
            ]
        ),
        "summary": Markdown(
            f"{total} tokens from {n_corpus} documents"
            + (
                f" + {n_task_docs} task documents ({rep.train_only_tokens} tokens, train only)"
                if n_task_docs
                else ""
            )
            + f" ({rep.docs['val']} held out by document id hash) in {dt:.2f} s; "
            f"unigram entropy of val tokens {h_val:.3f} nats."
        ),
    }


TOKENIZE = register(
    StageKind(
        name="tokenize",
        config=TokenizeConfig,
        produces="tokens",
        run=_run_tokenize,
        description="Documents -> packed uint16/uint32 token shards with a by-document validation split",
        checks=(
            CheckSpec("ids_below_vocab", "all token ids < vocab size", blocking=True),
            CheckSpec("non_empty", "train and val splits non-empty", blocking=True),
        ),
    )
)
