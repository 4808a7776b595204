"""Plots written next to an artifact: training curves (with their numbers as Parquet) and reward histograms.

Key design choice: a plot never fails a stage. Each function returns ``{"png": file name}`` when it drew,
``{"error": text}`` when drawing failed (matplotlib missing, a bad value) and ``{}`` when there was nothing
to draw; the caller turns that into stage metadata. The numbers behind a curve are always written first.
"""

from __future__ import annotations

from pathlib import Path


def write_curve(out: Path, records: list[dict], keys: list[str], name: str = "curve") -> dict[str, str]:
    """``<name>.parquet`` (every numeric column of ``records``, one row per record) and ``<name>.png``: one
    panel per key of ``keys`` present in some record, plotted against ``step``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not records:
        return {}
    cols = sorted({k for r in records for k, v in r.items() if isinstance(v, int | float)})
    pq.write_table(
        pa.table(
            {c: [float(r[c]) if isinstance(r.get(c), int | float) else None for r in records] for c in cols}
        ),
        out / f"{name}.parquet",
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = [k for k in keys if any(k in r for r in records)]
        if not keys:
            return {}
        fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.6))
        for ax, k in zip(axes if len(keys) > 1 else [axes], keys):
            xs = [r["step"] for r in records if k in r]
            ax.plot(xs, [r[k] for r in records if k in r], marker=".")
            ax.set_title(k, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=80)
        plt.close(fig)
        return {"png": f"{name}.png"}
    except Exception as e:  # noqa: BLE001 - a missing plot never fails a stage
        return {"error": str(e)}


def reward_histogram(out: Path, chosen: list[float], rejected: list[float]) -> dict[str, str]:
    """``rewards.png``: the chosen and rejected rewards as two overlaid histograms (how far apart the two
    distributions are)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3))
        lo, hi = min(chosen + rejected), max(chosen + rejected)
        bins = [lo + (hi - lo) * i / 40 for i in range(41)] if hi > lo else 10
        ax.hist(chosen, bins=bins, alpha=0.6, label="chosen (correct)")
        ax.hist(rejected, bins=bins, alpha=0.6, label="rejected (incorrect)")
        ax.set_xlabel("reward")
        ax.set_ylabel("held-out responses")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "rewards.png", dpi=80)
        plt.close(fig)
        return {"png": "rewards.png"}
    except Exception as e:  # noqa: BLE001 - a missing plot never fails a stage
        return {"error": str(e)}
