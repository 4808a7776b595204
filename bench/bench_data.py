"""Data-stage throughput: lmforge's extract+filter and MinHash dedupe against the same datatrove pipelines
run bare (datatrove's own readers/writers, no lmforge steps) on the same input, in the same process.

Key design choice: both sides run with one in-process worker (``workers=1``), so "docs/s per core" is
documents divided by wall time, and the ratio isolates what lmforge adds (tolerant WARC reader, ids and
language, schema writer, exclusion writers, report) from datatrove's own cost.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run(out_dir: Path) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ops.data.crawl import CrawlSettings, crawl
    from ops.data.dedupe import DEFAULT_HASHES_PER_BUCKET, DEFAULT_NUM_BUCKETS, dedupe, minhash_pipelines
    from ops.data.extract import extract, extract_pipeline
    from ops.data.filter_spec import DEFAULT_CHAIN, normalize_chain
    from ops.data.filters import filter_pipeline, run_filters
    from ops.data.pipeline import fresh_dir, run_local
    from resources.site import local_docs_target, make_resource

    out_dir = Path(out_dir)
    root = fresh_dir(out_dir / "bench_data")
    site = make_resource(root / "home")
    with site.serve() as base:
        s = CrawlSettings(max_pages=1000, **local_docs_target(base))
        crawled = fresh_dir(root / "crawl")
        c, crawl_s = _timed(lambda: crawl(s, root / "crawl_work", crawled, log=lambda m: None))
    warc = crawled / "warc"
    chain = normalize_chain(list(DEFAULT_CHAIN))

    # extract + filter, lmforge stages vs the same datatrove blocks bare. Two rounds in opposite orders (the
    # first run in the process pays imports and py3langid's model load), best round of each side reported.
    ex = root / "lm_extract"
    t_lm: list[tuple[float, float]] = []
    t_bare: list[tuple[float, float]] = []

    def lm_round():
        fresh_dir(ex)
        r_e, t_e = _timed(lambda: extract(warc, ex, root / "lm_work_ex", "bench"))
        fl = fresh_dir(root / "lm_filter")
        r_f, t_f = _timed(lambda: run_filters(ex, fl, root / "lm_work_fl", chain))
        t_lm.append((t_e, t_f))
        return r_e, r_f

    def bare_round():
        bare_ex = fresh_dir(root / "bare_extract")
        bare_fl = fresh_dir(root / "bare_filter")
        _, tb_e = _timed(
            lambda: run_local(extract_pipeline(warc, bare_ex, "bench", bare=True), root / "bare_logs_ex")
        )
        pipe, _ = filter_pipeline(ex, bare_fl, None, chain, bare=True)
        _, tb_f = _timed(lambda: run_local(pipe, root / "bare_logs_fl"))
        t_bare.append((tb_e, tb_f))

    r_ex, r_fl = lm_round()
    bare_round()
    bare_round()
    lm_round()
    t_ex, t_fl = min(t_lm, key=sum)
    tb_ex, tb_fl = min(t_bare, key=sum)
    n_pages = r_ex["html_records"]

    # MinHash dedupe on the extracted documents (more documents than the filtered set)
    dd = fresh_dir(root / "lm_dedupe")
    r_dd, t_dd = _timed(lambda: dedupe(ex, dd, root / "lm_work_dd", exact=False))
    b = fresh_dir(root / "bare_dedupe")

    def bare_minhash():
        pipes = minhash_pipelines(
            ex, b / "sig", b / "buckets", b / "clusters", b / "out", None, None, 5,
            DEFAULT_NUM_BUCKETS, DEFAULT_HASHES_PER_BUCKET, bare=True,
        )
        for i, (p, tasks) in enumerate(zip(pipes, (1, DEFAULT_NUM_BUCKETS, 1, 1))):
            run_local(p, b / f"logs{i}", tasks=tasks)

    _, tb_dd = _timed(bare_minhash)
    n_docs = r_ex["documents"]
    lm_ef = n_pages / (t_ex + t_fl)
    bare_ef = n_pages / (tb_ex + tb_fl)
    lm_mh = n_docs / t_dd
    bare_mh = n_docs / tb_dd
    return {
        "crawl_pages": c["pages"],
        "crawl_s": round(crawl_s, 2),
        "crawl_pages_per_s": round(c["pages"] / crawl_s, 1),
        "extract_filter_docs": n_pages,
        "filter_kept": r_fl["documents_out"],
        "extract_filter_lmforge_docs_per_s_per_core": round(lm_ef, 2),
        "extract_filter_bare_docs_per_s_per_core": round(bare_ef, 2),
        "extract_filter_ratio": round(lm_ef / bare_ef, 3),
        "minhash_docs": n_docs,
        "minhash_lmforge_docs_per_s_per_core": round(lm_mh, 2),
        "minhash_bare_docs_per_s_per_core": round(bare_mh, 2),
        "minhash_ratio": round(lm_mh / bare_mh, 3),
        "rounds": {"lmforge": t_lm, "bare": t_bare},
        "wall_s": {
            "lm_extract": round(t_ex, 2),
            "lm_filter": round(t_fl, 2),
            "bare_extract": round(tb_ex, 2),
            "bare_filter": round(tb_fl, 2),
            "lm_minhash": round(t_dd, 2),
            "bare_minhash": round(tb_dd, 2),
        },
    }


if __name__ == "__main__":
    import json
    import sys
    import tempfile

    print(json.dumps(run(Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())), indent=1))
