"""Data stages on Ray against the local executor: extract, filter and MinHash dedupe over the same crawl, in
the same process, with the same tasks and workers (2), the Ray cluster being a head on this machine with
2 CPUs (ops/data/ray_head.py).

Key design choices:

* Both sides run lmforge's own stage functions (``ops.data``) with the same settings; only the executor
  differs, so the ratio is what Ray costs against forked local workers: joining the cluster and starting
  one actor per worker (a fresh Python process that imports datatrove and the stage's libraries) once per
  stage, and shipping the pickled pipeline and each rank to the actors.
* Starting the head is not timed (a cluster is assumed to be running); joining it is, since every stage
  run pays it.
* Ray starts its workers at nice 15 (``RAY_worker_niceness``) so that its own daemons stay responsive; the
  local executor's workers run at nice 0. On a machine shared with other jobs that alone would starve the
  Ray side, so the head here starts its workers at nice 0 unless ``RAY_worker_niceness`` is set in the
  environment (the value used is reported).
* Two rounds in opposite orders (local, ray, ray, local); the best round of each side is reported. The
  outputs of the two executors are compared byte for byte on the way.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAGES = 600
TASKS = 4
WORKERS = 2


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run(out_dir: Path) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ops.data.crawl import CrawlSettings, crawl
    from ops.data.dedupe import dedupe
    from ops.data.extract import extract
    from ops.data.filter_spec import DEFAULT_CHAIN, normalize_chain
    from ops.data.filters import run_filters
    from ops.data.pipeline import ExecutorSettings, fresh_dir
    from ops.data.ray_head import local_ray_head
    from resources.site import local_docs_target, make_resource

    load_start = os.getloadavg()
    root = fresh_dir(Path(out_dir) / "bench_ray_data")
    site = make_resource(root / "home")
    with site.serve() as base:
        s = CrawlSettings(max_pages=PAGES, warc_file_max_bytes=150_000, **local_docs_target(base))
        crawled = fresh_dir(root / "crawl")
        c = crawl(s, root / "crawl_work", crawled, log=lambda m: None)
    warc = crawled / "warc"
    chain = normalize_chain(list(DEFAULT_CHAIN))
    rounds: dict[str, list[dict[str, float]]] = {"local": [], "ray": []}
    outputs: dict[str, dict[str, bytes]] = {}
    counts: dict[str, int] = {}

    def one_round(name: str, executor: ExecutorSettings | None) -> None:
        d = fresh_dir(root / name)
        ex, fl, dd = (fresh_dir(d / x) for x in ("extract", "filter", "dedupe"))
        r_e, t_e = _timed(
            lambda: extract(warc, ex, d / "w_ex", "bench", tasks=TASKS, workers=WORKERS, executor=executor)
        )
        r_f, t_f = _timed(
            lambda: run_filters(ex, fl, d / "w_fl", chain, tasks=TASKS, workers=WORKERS, executor=executor)
        )
        r_d, t_d = _timed(lambda: dedupe(fl, dd, d / "w_dd", workers=WORKERS, executor=executor))
        rounds[name].append({"extract": t_e, "filter": t_f, "dedupe": t_d})
        counts.update(
            pages=r_e["html_records"], extracted=r_e["documents"], kept=r_f["documents_out"],
            deduped=r_d["documents_out"],
        )  # fmt: skip
        outputs[name] = {
            k: (v / "documents.parquet").read_bytes() for k, v in (("e", ex), ("f", fl), ("d", dd))
        }

    niceness = os.environ.get("RAY_worker_niceness", "0")
    with local_ray_head(num_cpus=2, log=root / "ray_head.log", env={"RAY_worker_niceness": niceness}) as address:
        ray = ExecutorSettings(kind="ray", address=address, mem_per_cpu_gb=0.5)
        one_round("local", None)
        one_round("ray", ray)
        one_round("ray", ray)
        one_round("local", None)

    def best(name: str) -> dict[str, float]:
        return min(rounds[name], key=lambda r: sum(r.values()))

    lo, ra = best("local"), best("ray")
    n = counts["pages"]
    out: dict = {
        "crawl_pages": c["pages"],
        "warc_files": len(list(warc.glob("*.warc.gz"))),
        "tasks": TASKS,
        "workers": WORKERS,
        "ray_cpus": 2,
        "ray_worker_niceness": int(niceness),
        "documents": counts,
        "identical_outputs": outputs["local"] == outputs["ray"],
    }
    for stage, docs in (("extract", n), ("filter", counts["extracted"]), ("dedupe", counts["kept"])):
        out[f"{stage}_local_docs_per_s"] = round(docs / lo[stage], 2)
        out[f"{stage}_ray_docs_per_s"] = round(docs / ra[stage], 2)
        out[f"{stage}_ratio"] = round(lo[stage] / ra[stage], 3)
    total_lo, total_ra = sum(lo.values()), sum(ra.values())
    out["chain_local_pages_per_s"] = round(n / total_lo, 2)
    out["chain_ray_pages_per_s"] = round(n / total_ra, 2)
    out["chain_ratio"] = round(total_lo / total_ra, 3)
    out["rounds"] = {k: [{s: round(t, 2) for s, t in r.items()} for r in v] for k, v in rounds.items()}
    out["load_avg_start"] = load_start
    out["load_avg_end"] = os.getloadavg()
    return out


if __name__ == "__main__":
    import json
    import sys
    import tempfile

    print(json.dumps(run(Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())), indent=1))
