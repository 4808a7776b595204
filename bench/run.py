"""``make bench``: run every benchmark module, write ``bench/results/results.json`` and ``results.md``.

Each figure is a ratio against a peer measured in the same run (bare datatrove, a bare PyTorch loop, TRL,
plain transformers generation), so machine noise cancels as far as it can; absolute numbers are shown
beside the ratios. A benchmark that cannot run here says why in its entry instead of disappearing.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

MODULES = [
    "bench_core",
    "bench_data",
    "bench_ray_data",
    "bench_tokenizer",
    "bench_pretrain",
    "bench_gemm",
    "bench_head",
    "bench_multinode",
    "bench_grpo",
    "bench_sft",
    "bench_eval",
]


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    only = (argv if argv is not None else sys.argv[1:]) or MODULES
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "cpu_vendor": _vendor(),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for name in only:
        t0 = time.time()
        try:
            mod = importlib.import_module(f"bench.{name}")
            results[name] = mod.run(out)
        except Exception as e:
            results[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
        results[name]["bench_wall_s"] = (
            round(time.time() - t0, 1) if isinstance(results[name], dict) else None
        )
        print(f"{name}: {json.dumps(results[name], default=str)[:400]}", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    lines = ["# lmforge benchmark", "", f"Machine: {results['machine']}", ""]
    for name in only:
        lines += [f"## {name}", "", "| figure | value |", "|---|---|"]
        for k, v in (results.get(name) or {}).items():
            if k == "trace":
                continue
            lines.append(f"| {k} | {json.dumps(v, default=str) if isinstance(v, dict | list) else v} |")
        lines.append("")
    (out / "results.md").write_text("\n".join(lines))
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


def _vendor() -> str:
    from ops.cpu_gemm import cpu_vendor

    return cpu_vendor()


if __name__ == "__main__":
    sys.exit(main())
