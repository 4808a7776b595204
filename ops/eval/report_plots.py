"""The report card's figures: per-model metrics with 95% intervals, accuracy against thinking tokens under
budget forcing and Wait, and the cost ledger.

Key design choice: figures are drawn from ``report.json`` alone, the same numbers the Markdown shows; a
figure with nothing to draw (no sweep ran, no stage took time) is not written, and the caller lists only
the files returned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report_length import plot_length_pairs
from .report_markdown import MODEL_METRICS


def draw_plots(r: dict[str, Any], out: Path) -> list[str]:
    """PNGs of the report ``r`` written into ``out``; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    models = list(r["models"])
    # per-model metrics with 95% intervals, one panel per metric
    keys = [
        (k, lbl)
        for k, lbl, _ in MODEL_METRICS
        if any((r["models"][m]["metrics"].get(k) or {}).get("value") is not None for m in models)
    ]
    if keys and models:
        fig, axes = plt.subplots(1, len(keys), figsize=(2.6 * len(keys), 3.2), dpi=100, squeeze=False)
        for ax, (k, lbl) in zip(axes[0], keys):
            vals, lo, hi = [], [], []
            for m in models:
                d = r["models"][m]["metrics"].get(k) or {}
                v = d.get("value")
                vals.append(v if v is not None else 0.0)
                lo.append(max(0.0, v - d["low"]) if v is not None and d.get("low") is not None else 0.0)
                hi.append(max(0.0, d["high"] - v) if v is not None and d.get("high") is not None else 0.0)
            ax.bar(range(len(models)), vals, yerr=[lo, hi], capsize=3, color="#4c72b0")
            ax.set_xticks(range(len(models)), models, rotation=45, ha="right", fontsize=7)
            ax.set_title(lbl, fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "metrics.png")
        plt.close(fig)
        written.append("metrics.png")
    # budget curves of all models
    curves = {m: d for m, d in r["models"].items() if d["budget_curve"] or d["wait_curve"]}
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for m, d in curves.items():
            pts = sorted(
                d["budget_curve"] + d["wait_curve"] + ([d["unbudgeted"]] if d.get("unbudgeted") else []),
                key=lambda p: p["mean_thinking_tokens"],
            )
            ax.errorbar(
                [p["mean_thinking_tokens"] for p in pts],
                [p["accuracy"] for p in pts],
                yerr=[
                    [max(0.0, p["accuracy"] - p["low"]) for p in pts],
                    [max(0.0, p["high"] - p["accuracy"]) for p in pts],
                ],
                fmt="o-",
                capsize=2,
                label=m,
            )
        ax.set_xlabel("mean thinking tokens")
        ax.set_ylabel("accuracy (95% CI)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title("accuracy vs thinking tokens (budget forcing / Wait)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "budget_curves.png")
        plt.close(fig)
        written.append("budget_curves.png")
    written += plot_length_pairs(r, out)
    # cost ledger
    rows = [x for x in r["ledger"] if x["wall_time_s"] > 0]
    if rows:
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(rows) + 1.2), dpi=100)
        ax.barh([x["stage"] for x in rows], [x["wall_time_s"] for x in rows], color="#dd8452")
        ax.invert_yaxis()
        ax.set_xlabel("wall time (s)")
        ax.set_title(
            f"cost ledger (total {sum(x['cost'] for x in rows):.4f} {r['price']['currency']})", fontsize=9
        )
        fig.tight_layout()
        fig.savefig(out / "cost.png")
        plt.close(fig)
        written.append("cost.png")
    return written
