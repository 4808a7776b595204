"""Filters, dedupe, decontamination and bad inputs, on corpora the tests build (run through the kinds)."""

from __future__ import annotations

import gzip
import io
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ops.data.schema import doc_id, host_of, read_documents, write_documents
from pipelines.execute import run_kind
from resources.store import ArtifactStore

pytestmark = pytest.mark.unit


def _store_docs(home, rows, version="docs-v1", kind="load_documents"):
    store = ArtifactStore(home)
    full = [
        {
            "id": r.get("id") or doc_id(r.get("url"), r["text"]),
            "url": r.get("url"),
            "host": host_of(r.get("url")),
            "text": r["text"],
            "language": None,
            "source": "test",
            "source_record": None,
            "parent_ids": [],
        }
        for r in rows
    ]
    with store.writer(kind, version) as tmp:
        write_documents(full, tmp)
        return store.commit(tmp, kind, version, {"stage": "docs", "produces": "documents"})


def _prose_pages() -> list[str]:
    """Real English prose: paragraphs of Python's language reference (ships with Python)."""
    import pydoc_data.topics

    out = []
    for name in ("execmodel", "naming", "import", "exceptions", "assignment", "class", "function", "try"):
        paras = [
            " ".join(p.split())
            for p in re.split(r"\n\s*\n", pydoc_data.topics.topics[name])
            if not p.startswith("   ") and len(p.split()) > 12
        ]
        out.append("\n\n".join(paras[:12]))
    return out


JUNK = {
    "boilerplate": "\n".join(["Home | About | Contact | Login | Sign up | Privacy | Terms"] * 30),
    "repeated_lines": "\n".join(["Buy cheap watches now, best prices online today!"] * 40),
    "german": (
        "Die Stadt liegt am Ufer des Flusses und hat eine lange Geschichte. Im Sommer kommen viele "
        "Besucher, um die alten Kirchen und Museen zu sehen. Die Menschen hier sind freundlich und "
        "sprechen gern über ihre Traditionen. "
    )
    * 6,
    "too_short": "Click here.",
}


def test_filters_drop_junk_and_keep_prose(lmforge_home):
    prose = _prose_pages()
    rows = [{"url": f"http://p/{i}", "text": t} for i, t in enumerate(prose)]
    rows += [{"url": f"http://junk/{k}", "text": t} for k, t in JUNK.items()]
    art = _store_docs(lmforge_home, rows)
    out, _ = run_kind("filter", {"from": "docs"}, lmforge_home, inputs={"from_": [art]})
    kept = read_documents(out.path).to_pylist()
    kept_urls = {r["url"] for r in kept}
    assert not any(u.startswith("http://junk/") for u in kept_urls)
    assert len([u for u in kept_urls if u.startswith("http://p/")]) >= len(prose) - 1
    m = out.metrics
    assert m["documents_in"] == len(rows) and m["documents_out"] == len(kept)
    assert m["dropped_language"] >= 1  # the German page
    checks = {c["name"]: c for c in out.manifest["checks"]}
    assert checks["non_empty"]["passed"]
    md = out.metadata()
    assert "funnel" in md and md["dropped_examples"]["value"]


def test_filter_empty_output_names_the_filter(lmforge_home):
    art = _store_docs(
        lmforge_home, [{"url": f"http://j/{i}", "text": JUNK["german"] + str(i)} for i in range(3)]
    )
    out, res = run_kind(
        "filter",
        {"from": "docs", "filters": [{"language": ["en"]}, "gopher_quality"]},
        lmforge_home,
        inputs={"from_": [art]},
    )
    ne = next(c for c in res.checks if c.name == "non_empty")
    assert not ne.passed and "language" in ne.description and ne.metadata["filter"] == "language"


def test_filter_config_errors_are_clear(lmforge_home, tmp_path):
    from assets.registry import load_kinds

    kind = load_kinds()["filter"]
    cfg = kind.config.model_validate(
        {"from": "x", "filters": ["gopher_quality", {"c4": {"nope": 1}}, "bogus"]}
    )
    errs = kind.validate(cfg, {})
    assert errs and errs[0][0] == "filters" and "nope" in errs[0][1]
    cfg = kind.config.model_validate({"from": "x", "blocklist": str(tmp_path / "missing.txt")})
    assert kind.validate(cfg, {})[0][0] == "blocklist"


def test_blocklist_drops_listed_domains(lmforge_home, tmp_path):
    prose = _prose_pages()[:3]
    rows = [
        {"url": "http://ok.org/a", "text": prose[0]},
        {"url": "http://sub.bad.com/x", "text": prose[1]},
        {"url": "http://ok.org/spam/1", "text": prose[2]},
    ]
    bl = tmp_path / "block.txt"
    bl.write_text("# blocked\nbad.com\nhttp://ok.org/spam/\n")
    art = _store_docs(lmforge_home, rows)
    out, _ = run_kind(
        "filter", {"from": "docs", "blocklist": str(bl), "filters": []}, lmforge_home, inputs={"from_": [art]}
    )
    assert [r["url"] for r in read_documents(out.path).to_pylist()] == ["http://ok.org/a"]
    assert out.metrics["dropped_url_blocklist"] == 2


def _distinct_docs(n: int, seed: int = 0) -> list[str]:
    import pydoc_data.topics

    vocab = sorted(
        {w for t in pydoc_data.topics.topics.values() for w in re.findall(r"[a-z]{3,}", t.lower())}
    )
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        paras = [" ".join(rng.choice(vocab) for _ in range(60)) + "." for _ in range(5)]
        docs.append("\n\n".join(paras))
    return docs


def test_dedupe_removes_injected_duplicates(lmforge_home):
    rng = random.Random(1)
    distinct = _distinct_docs(200)
    rows = [{"url": f"http://d/{i}", "text": t} for i, t in enumerate(distinct)]
    near = []
    for i in range(20):  # small edits: ~2% of the words replaced, one extra sentence
        words = distinct[i].split(" ")
        for j in rng.sample(range(len(words)), k=6):
            words[j] = "edited"
        near.append(" ".join(words) + "\n\nOne more line.")
    for i in range(20, 40):  # reordered paragraphs
        paras = distinct[i].split("\n\n")
        rng.shuffle(paras)
        near.append("\n\n".join(paras))
    exact = [distinct[i].upper().replace(" ", "  ") for i in range(40, 50)]  # same after normalisation
    rows += [{"url": f"http://near/{i}", "text": t} for i, t in enumerate(near)]
    rows += [{"url": f"http://exact/{i}", "text": t} for i, t in enumerate(exact)]
    art = _store_docs(lmforge_home, rows)
    out, res = run_kind("dedupe", {"from": "docs", "examples": 100}, lmforge_home, inputs={"from_": [art]})
    kept = read_documents(out.path).to_pylist()
    urls = [r["url"] for r in kept]
    originals_kept = sum(1 for u in urls if u.startswith("http://d/"))
    near_left = sum(1 for u in urls if u.startswith("http://near/"))
    assert not any(u.startswith("http://exact/") for u in urls)
    assert near_left <= 1, near_left  # >= 95% of 40 near duplicates removed
    assert originals_kept >= 198, originals_kept  # < 1% of 200 distinct documents removed
    checks = {c.name: c.passed for c in res.checks}
    assert checks == {"non_empty": True, "no_exact_duplicates": True}
    assert out.metrics["exact_removed"] == 10 and out.metrics["near_removed"] >= 39
    pairs = out.metadata()["removed_pairs"]["value"]
    assert any(p["method"] == "minhash" and p["jaccard"] and p["jaccard"] > 0.5 for p in pairs)


def test_decontaminate_drops_documents_with_eval_items(lmforge_home):
    prose = _prose_pages()
    question = (
        "A farmer has 17 sheep and buys 25 more, then sells 9 of them at the market. "
        "How many sheep does the farmer have now?"
    )
    rows = [{"url": f"http://p/{i}", "text": t} for i, t in enumerate(prose)]
    rows.append(
        {"url": "http://leak/1", "text": prose[0] + "\n\nPractice: " + question.upper() + " Answer: 33."}
    )
    art = _store_docs(lmforge_home, rows)
    store = ArtifactStore(lmforge_home)
    with store.writer("reasoning_tasks", "tasks-v1") as tmp:
        pq.write_table(
            pa.Table.from_pylist(
                [
                    {"id": "e1", "question": question, "answer": "33", "solution": "17 + 25 - 9 = 33"},
                    {"id": "e2", "question": "What is 2 + 2?", "answer": "4", "solution": "2 + 2 = 4"},
                ]
            ),
            tmp / "eval.parquet",
        )
        tasks = store.commit(tmp, "reasoning_tasks", "tasks-v1", {"stage": "tasks", "produces": "tasks"})
    out, _ = run_kind(
        "decontaminate",
        {"from": "docs", "against": ["tasks"]},
        lmforge_home,
        inputs={"from_": [art], "against": [tasks]},
    )
    kept = {r["url"] for r in read_documents(out.path).to_pylist()}
    assert kept == {f"http://p/{i}" for i in range(len(prose))}
    dropped = pq.read_table(out.path / "dropped.parquet").to_pylist()
    assert len(dropped) == 1 and dropped[0]["url"] == "http://leak/1" and dropped[0]["eval_item"] == "e1"
    assert len(dropped[0]["ngram"].split()) == 13


def test_load_documents_broken_encodings_and_bad_columns(lmforge_home, tmp_path):
    f = tmp_path / "docs.jsonl"
    f.write_bytes(
        b'{"text": "fine text", "u": "http://a/1"}\n'
        b'{"text": "caf\xe9 au lait \xff\xfe broken", "u": "http://a/2"}\n'
    )
    out, _ = run_kind("load_documents", {"paths": [str(f)], "url_column": "u"}, lmforge_home)
    rows = read_documents(out.path).to_pylist()
    assert len(rows) == 2 and "\ufffd" in rows[1]["text"] and out.metrics["broken_encoding"] == 1
    with pytest.raises(ValueError, match=r"docs\.jsonl:2: not valid UTF-8"):
        run_kind("load_documents", {"paths": [str(f)], "on_decode_error": "fail"}, lmforge_home)
    p = tmp_path / "docs.parquet"
    pq.write_table(pa.Table.from_pylist([{"body": "x"}]), p)
    from assets.registry import load_kinds

    kind = load_kinds()["load_documents"]
    errs = kind.validate(kind.config.model_validate({"paths": [str(p)]}), {})
    assert errs == [("text_column", f"{p} has no column 'text' (columns: ['body'])")]
    errs = kind.validate(kind.config.model_validate({"paths": [str(tmp_path / "nope*.parquet")]}), {})
    assert errs and errs[0][0] == "paths"


def test_load_documents_text_column_that_is_not_text_is_one_issue_at_compile(tmp_path):
    from tests.spec_helpers import assert_one_issue

    ints = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), ints)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"pipeline: p\nstages:\n  docs: {{kind: load_documents, paths: [{ints}]}}\n")
    assert_one_issue(spec, "docs", "text_column", [f"{ints}: column 'text' holds int64, not text"])
    # dictionary-encoded text is text
    pq.write_table(pa.table({"text": pa.array(["a b", "c d"]).dictionary_encode()}), ints)
    from pipelines.spec import load_spec

    assert load_spec(spec).stages["docs"].config.paths == [str(ints)]


def test_load_documents_jsonl_rows_whose_text_is_not_text_are_named(lmforge_home, tmp_path):
    f = tmp_path / "docs.jsonl"
    f.write_bytes(b"\xef\xbb\xbf")  # a byte-order mark before the first row is not data
    with f.open("a") as fh:
        fh.write('{"text": "fine text"}\n{"text": 42}\n{"text": ""}\n{"text": null}\n{"text": ["a"]}\n')
    out, res = run_kind("load_documents", {"paths": [str(f)]}, lmforge_home)
    assert out.metrics["documents"] == 1 and out.metrics["not_text"] == 2 and out.metrics["empty_text"] == 2
    (check,) = [c for c in res.checks if c.name == "non_empty"]
    assert "skipped 2 rows whose text is not text" in check.description
    assert f"{f}:2: 'text' is int" in check.description


def test_filter_parameter_types_match_datatrove():
    """Every parameter lmforge declares for a datatrove filter is one of its __init__ parameters, and
    datatrove's own default is a value of the declared type (so a spec may write what datatrove takes)."""
    import inspect

    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )
    from pydantic import TypeAdapter

    from ops.data.filter_spec import FILTER_PARAMS
    from ops.data.filters import LanguageFilter

    classes = {"language": LanguageFilter, "gopher_repetition": GopherRepetitionFilter,
               "gopher_quality": GopherQualityFilter, "c4": C4QualityFilter, "fineweb": FineWebQualityFilter}
    assert set(classes) == set(FILTER_PARAMS)
    for name, params in FILTER_PARAMS.items():
        sig = inspect.signature(classes[name].__init__).parameters
        for p, (tp, _words) in params.items():
            assert p in sig, (name, p)
            if sig[p].default is not inspect.Parameter.empty:
                TypeAdapter(tp).validate_python(sig[p].default)


def _warc_bytes(pages: list[tuple[str, bytes, str]]) -> bytes:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=True)
    for url, body, ctype in pages:
        hh = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
        w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=hh))
    return buf.getvalue()


def test_truncated_warc_and_broken_encodings(lmforge_home, tmp_path):
    prose = _prose_pages()
    pages = [
        (f"http://w/{i}", f"<html><body><article><p>{t}</p></article></body></html>".encode(), "text/html")
        for i, t in enumerate(prose[:4])
    ]
    latin = (
        "<html><body><p>"
        + prose[4].encode("ascii", "ignore").decode()
        + " Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e.</p></body></html>"
    ).encode("latin-1")
    pages.append(("http://w/latin", latin, "text/html; charset=iso-8859-1"))
    pages.append(("http://w/nocharset", latin, "text/html"))
    pages.append(("http://w/cut", pages[0][1], "text/html"))  # the record the truncation cuts
    data = _warc_bytes(pages)
    src = tmp_path / "in.warc.gz"
    src.write_bytes(data[: len(data) - 200])  # the last record is cut short
    crawl_art, res = run_kind("crawl", {"source": "warc", "warc": [str(src)]}, lmforge_home)
    assert crawl_art.metrics["bad_records"] == 1 and crawl_art.metrics["pages"] == 6
    assert {c.name: c.passed for c in res.checks} == {"non_empty": True, "no_bad_records": False}
    text_art, _ = run_kind("extract", {"from": "crawl"}, lmforge_home, inputs={"from_": [crawl_art]})
    docs = {r["url"]: r for r in read_documents(text_art.path).to_pylist()}
    assert "Café crème" in docs["http://w/latin"]["text"]
    assert "crème" in docs["http://w/nocharset"]["text"] or "cr\ufffd" in docs["http://w/nocharset"]["text"]
    # the extractor's own reader also survives a damaged file in its input
    from ops.data.extract import extract

    bad = tmp_path / "warcdir"
    bad.mkdir()
    (bad / "a.warc.gz").write_bytes(data[: len(data) - 200])
    (bad / "b.warc.gz").write_bytes(gzip.compress(b"this is not a warc file at all"))
    out = tmp_path / "out"
    out.mkdir()
    r = extract(bad, out, tmp_path / "work", "v")
    assert r["bad_records"] == 2 and r["documents"] == 6
    # a missing file given as a WARC source is one clear validation error
    from assets.registry import load_kinds

    kind = load_kinds()["crawl"]
    errs = kind.validate(
        kind.config.model_validate({"source": "warc", "warc": [str(tmp_path / "x*.warc.gz")]}), {}
    )
    assert errs and errs[0][0] == "warc" and "no file matches" in errs[0][1]


def test_language_filter_reuses_extract_language_only_for_unedited_text():
    """extract stores py3langid's (language, score); the filter reuses them while the text is the one they were
    computed on (its id still matches), and classifies again when the text changed."""
    from datatrove.data import Document

    from ops.data.extract import language_of
    from ops.data.filters import LanguageFilter

    prose = _prose_pages()[0]
    lang, score = language_of(prose)
    assert lang == "en"
    url = "http://x.test/a"
    f = LanguageFilter(["en"])
    # stored answer on unchanged text: reused (a wrong stored label proves no re-classification happened)
    kept = Document(
        text=prose, id=doc_id(url, prose), metadata={"url": url, "language": "de", "language_score": 0.99}
    )
    assert f.filter(kept) == (False, "language_de")
    assert f.stats["language_reused"].total == 1
    # same stored label, but the text was edited after extraction: classified again -> English, kept
    edited = Document(
        text=prose,
        id=doc_id(url, "other text"),
        metadata={"url": url, "language": "de", "language_score": 0.99},
    )
    assert f.filter(edited) is True and edited.metadata["language"] == "en"
    # no stored score (loaded documents): classified
    fresh = Document(
        text=JUNK["german"], id="x", metadata={"url": url, "language": None, "language_score": None}
    )
    assert f.filter(fresh) == (False, "language_de")
    assert f.stats["language_reused"].total == 1
    # the bare benchmark reference never reuses
    assert LanguageFilter(["en"], reuse=False).filter(kept) is True


def test_extract_order_does_not_depend_on_record_order(tmp_path):
    """A crawl writes records in the order its fetches finish; the same pages in another order extract to the
    same documents in the same order (by URL), so every later stage sees the same corpus."""
    from ops.data.extract import extract

    prose = _prose_pages()
    pages = [
        (f"http://w/{name}", f"<html><body><article><p>{t}</p></article></body></html>".encode(), "text/html")
        for name, t in zip(["b", "a", "d", "c", "e"], prose[:5], strict=True)
    ]
    rows = []
    for tag, order in (("fwd", pages), ("rev", pages[::-1])):
        d = tmp_path / tag / "warc"
        d.mkdir(parents=True)
        (d / "crawl-00000.warc.gz").write_bytes(_warc_bytes(order))
        out = tmp_path / tag / "out"
        out.mkdir()
        extract(d, out, tmp_path / tag / "work", "v")
        rows.append([(r["url"], r["id"], r["text"]) for r in read_documents(out).to_pylist()])
    assert [u for u, _, _ in rows[0]] == sorted(f"http://w/{n}" for n in "abcde")
    assert rows[0] == rows[1]


def test_load_documents_reads_a_json_array(lmforge_home, tmp_path):
    f = tmp_path / "docs.json"
    f.write_text('[\n  {"text": "alpha document", "id": "a"},\n  {"text": "beta document", "id": "b"}\n]\n')
    out, _ = run_kind("load_documents", {"paths": [str(f)], "id_column": "id"}, lmforge_home)
    rows = pq.read_table(out.path / "documents.parquet").to_pylist()
    assert [(r["text"], r["parent_ids"], r["source_record"]) for r in rows] == [
        ("alpha document", ["a"], "docs.json:1"), ("beta document", ["b"], "docs.json:2")]
