"""The data kinds chained as the default pipeline chains them: crawl (offline docs site) -> extract ->
filter -> dedupe -> decontaminate, read back from the store; a second run is a cache hit."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from assets.registry import load_kinds
from ops.data.schema import COLUMNS, documents_schema, read_documents
from pipelines.execute import run_kind
from resources.site import local_docs_target, make_resource

pytestmark = pytest.mark.integration


def test_kinds_are_registered_with_checks():
    kinds = load_kinds()
    for name, produces in (
        ("crawl", "warc"),
        ("extract", "documents"),
        ("filter", "documents"),
        ("dedupe", "documents"),
        ("decontaminate", "documents"),
        ("load_documents", "documents"),
    ):
        k = kinds[name]
        assert k.produces == produces
        assert any(c.name == "non_empty" and c.blocking for c in k.checks)
        for f in k.config.model_fields.values():
            assert f.description, (name, f)
    assert kinds["crawl"].resources == ("site",)


def test_default_data_chain_on_local_docs(lmforge_home):
    site = make_resource(lmforge_home)
    crawl, res = run_kind("crawl", {"max_pages": 40, "max_depth": 2}, lmforge_home, resources={"site": site})
    assert res is not None and crawl.metrics["pages"] == 40
    log = pq.read_table(crawl.path / "fetch_log.parquet")
    assert {"url", "status", "bytes", "fetched_at", "error", "warc_file", "offset"} <= set(log.column_names)
    stored = [u for u, w in zip(log.column("url").to_pylist(), log.column("warc_file").to_pylist()) if w]
    assert len(stored) == 40 and not any("/_internal/" in u for u in stored)  # disallowed by robots.txt

    text, _ = run_kind("extract", {"from": "crawl"}, lmforge_home, inputs={"from_": [crawl]})
    t = read_documents(text.path)
    assert t.schema.equals(documents_schema()) and tuple(t.column_names) == COLUMNS
    row = t.to_pylist()[0]
    assert row["source"] == crawl.version and row["source_record"].startswith("crawl-") and row["parent_ids"]
    assert row["url"].startswith("http://docs.python.local/") and row["language"]

    clean, _ = run_kind("filter", {"from": "text"}, lmforge_home, inputs={"from_": [text]})
    assert 0 < clean.metrics["documents_out"] < text.metrics["documents"]
    corpus, _ = run_kind("dedupe", {"from": "clean"}, lmforge_home, inputs={"from_": [clean]})
    assert {c["name"]: c["passed"] for c in corpus.manifest["checks"]} == {
        "non_empty": True,
        "no_exact_duplicates": True,
    }
    again, res2 = run_kind("dedupe", {"from": "clean"}, lmforge_home, inputs={"from_": [clean]})
    assert res2 is None and again.version == corpus.version  # cache hit


def test_parallel_tasks_and_workers_give_the_same_documents(tmp_path):
    """extract over several WARC files and filter over a split input, with 3 datatrove tasks on 2 forked
    workers, write exactly the documents (and order) of one in-process task."""
    from ops.data.crawl import CrawlSettings, crawl
    from ops.data.extract import extract
    from ops.data.filter_spec import DEFAULT_CHAIN, normalize_chain
    from ops.data.filters import run_filters

    site = make_resource(tmp_path / "home")
    with site.serve() as base:
        s = CrawlSettings(max_pages=30, warc_file_max_bytes=20_000, **local_docs_target(base))
        crawl(s, tmp_path / "cw", tmp_path / "crawl", log=lambda m: None)
    warc = tmp_path / "crawl" / "warc"
    assert len(list(warc.glob("*.warc.gz"))) >= 3
    for d in ("ex1", "ex3", "f1", "f3"):
        (tmp_path / d).mkdir()
    one = extract(warc, tmp_path / "ex1", tmp_path / "w1", "v")
    par = extract(warc, tmp_path / "ex3", tmp_path / "w3", "v", tasks=3, workers=2)
    t1, t3 = read_documents(tmp_path / "ex1"), read_documents(tmp_path / "ex3")
    assert one["documents"] == par["documents"] > 20 and t1.equals(t3)

    chain = normalize_chain(list(DEFAULT_CHAIN))
    f1 = run_filters(tmp_path / "ex1", tmp_path / "f1", tmp_path / "fw1", chain)
    f3 = run_filters(tmp_path / "ex1", tmp_path / "f3", tmp_path / "fw3", chain, tasks=3, workers=2)
    assert f1["documents_in"] == f3["documents_in"] == one["documents"]
    assert f1["funnel"] == f3["funnel"] and 0 < f3["documents_out"] < f3["documents_in"]
    assert read_documents(tmp_path / "f1").equals(read_documents(tmp_path / "f3"))


def test_two_homes_crawling_the_same_site_get_the_same_corpus_and_tokenizer(tmp_path):
    """Fetch order is not part of the data: one home crawls with one thread, another with four and
    two requests per host (records land in another order), and the documents of every data stage and the
    trained tokenizer are the same bytes of text in the same order."""
    import json

    out = []
    for name, crawl_cfg in (("a", {"workers": 1, "per_host_concurrency": 1}), ("b", {"workers": 4})):
        home = tmp_path / name
        site = make_resource(home)
        crawl, _ = run_kind("crawl", crawl_cfg, home, resources={"site": site})
        text, _ = run_kind("extract", {"from": "crawl"}, home, inputs={"from_": [crawl]})
        clean, _ = run_kind("filter", {"from": "text"}, home, inputs={"from_": [text]})
        corpus, _ = run_kind("dedupe", {"from": "clean"}, home, inputs={"from_": [clean]})
        tok, _ = run_kind("train_tokenizer", {"from": "corpus", "vocab_size": 600}, home,
                          inputs={"from_": [corpus]})
        docs = {
            stage: [(r["url"], r["text"]) for r in read_documents(a.path).to_pylist()]
            for stage, a in (("text", text), ("clean", clean), ("corpus", corpus))
        }
        out.append((docs, json.loads((tok.path / "tokenizer.json").read_text())))
    (docs_a, tok_a), (docs_b, tok_b) = out
    assert len(docs_a["corpus"]) > 20
    for stage in docs_a:
        assert docs_a[stage] == docs_b[stage], stage
    assert tok_a["model"] == tok_b["model"]
