"""Compare two lmforge homes artifact by artifact: which files are byte-identical, and for Parquet files that
are not, which columns differ (timings and timestamps are expected to; weights are not).

    python -m experiments.compare_homes HOME_A HOME_B OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from resources.manifest import file_sha256


def _parquet_columns(a: Path, b: Path) -> list[str]:
    import pandas as pd

    x, y = pd.read_parquet(a), pd.read_parquet(b)
    if x.shape != y.shape or list(x.columns) != list(y.columns):
        return ["<shape or columns>"]
    return [c for c in x.columns if not x[c].equals(y[c])]


def compare(home_a: str, home_b: str) -> dict:
    """Every file under ``artifacts/`` of ``home_b`` against the same path in ``home_a``."""
    a, b = Path(home_a) / "artifacts", Path(home_b) / "artifacts"
    if not a.is_dir() or not b.is_dir():
        raise SystemExit(f"compare_homes: {a if not a.is_dir() else b} is not an artifacts folder")
    same, differ, missing = [], {}, []
    for pb in sorted(p for p in b.rglob("*") if p.is_file()):
        rel = pb.relative_to(b).as_posix()
        pa = a / rel
        if not pa.exists():
            missing.append(rel)
        elif file_sha256(pa) == file_sha256(pb):
            same.append(rel)
        else:
            differ[rel] = _parquet_columns(pa, pb) if rel.endswith(".parquet") else None
    weights = [r for r in same + list(differ) if r.endswith(".safetensors")]
    return {
        "home_a": str(home_a),
        "home_b": str(home_b),
        "identical_files": len(same),
        "differing_files": differ,
        "missing_in_a": missing,
        "weights_files": len(weights),
        "weights_identical": sum(r in set(same) for r in weights),
    }


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    result = compare(sys.argv[1], sys.argv[2])
    Path(sys.argv[3]).write_text(json.dumps(result, indent=1))
    print(
        f"{result['identical_files']} identical, {len(result['differing_files'])} differ, "
        f"weights {result['weights_identical']}/{result['weights_files']} identical"
    )
