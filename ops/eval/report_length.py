"""The report card's long-to-short section: accuracy against mean response tokens for the long-thinking and
short-thinking models a report names (Kimi k1.5's long2short), with the paired change of each pair.

Key design choice: every figure is paired over the eval items both models answered (greedy): the token ratio
``sum(short tokens) / sum(long tokens)`` with a percentile-bootstrap interval over items, and the accuracy
change ``short - long`` with its McNemar-style normal interval. A pair ``holds`` when the short model cuts the
mean response length by at least ``MIN_CUT`` (point estimate) and its accuracy loss is not beyond noise
(the interval of the change reaches zero or above), and the evaluation's thinking budget ended the long model's
thinking on at most ``MAX_THINKING_CUT`` of the items: a long model whose traces the budget cuts is scored
shorter and less accurate than it is, so its "accuracy kept" would be an artefact of the budget. The numbers are
shown whichever way they fall.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import metrics as M

MIN_CUT = 0.30  # the share of response tokens a long-to-short recipe should remove (Kimi k1.5's target scale)
MAX_THINKING_CUT = 0.01  # the most of the long model's greedy thinking the budget may end for a pair to hold


def length_pairs(pairs: list[tuple[str, str]], by_model: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per ``(long, short)`` pair of evaluated models (``by_model``: ``EvalInfo`` by model stage)."""
    rows = []
    for long, short in pairs:
        row: dict[str, Any] = {"long": long, "short": short}
        lo_info, sh_info = by_model.get(long), by_model.get(short)
        if lo_info is None or sh_info is None:
            row["missing"] = [m for m, i in ((long, lo_info), (short, sh_info)) if i is None]
            rows.append(row)
            continue
        tok_l = lo_info.item_scores.get("mean_response_tokens") or {}
        tok_s = sh_info.item_scores.get("mean_response_tokens") or {}
        acc_l = lo_info.item_scores.get("greedy_accuracy") or {}
        acc_s = sh_info.item_scores.get("greedy_accuracy") or {}
        shared = sorted(set(tok_l) & set(tok_s) & set(acc_l) & set(acc_s))
        row["items"] = len(shared)
        if len(shared) < 2:
            rows.append(row)
            continue
        tl, ts = [tok_l[i] for i in shared], [tok_s[i] for i in shared]
        al, a_s = [acc_l[i] for i in shared], [acc_s[i] for i in shared]
        ratio = sum(ts) / sum(tl) if sum(tl) > 0 else None
        r_lo, r_hi = M.bootstrap_ratio_interval(ts, tl) if ratio is not None else (None, None)
        acc = M.paired_difference(al, a_s)
        # items whose greedy thinking the budget ended (evaluations without the record count as none)
        cut_l = lo_info.item_scores.get("greedy_thinking_cut") or {}
        cut_s = sh_info.item_scores.get("greedy_thinking_cut") or {}
        long_cut = sum(cut_l.get(i, 0.0) for i in shared) / len(shared)
        row.update(
            {
                "long_tokens": sum(tl) / len(tl),
                "short_tokens": sum(ts) / len(ts),
                "token_ratio": {"value": ratio, "low": r_lo, "high": r_hi},
                "long_accuracy": sum(al) / len(al),
                "short_accuracy": sum(a_s) / len(a_s),
                "accuracy_change": acc,
                "cut": ratio is not None and ratio <= 1.0 - MIN_CUT,
                "accuracy_kept": not (acc["beyond_noise"] and acc["diff"] < 0),
                "long_thinking_cut": long_cut,
                "short_thinking_cut": sum(cut_s.get(i, 0.0) for i in shared) / len(shared),
                "long_within_budget": long_cut <= MAX_THINKING_CUT,
            }
        )
        row["holds"] = bool(row["cut"] and row["accuracy_kept"] and row["long_within_budget"])
        rows.append(row)
    return rows


def render_length_pairs(rows: list[dict[str, Any]], figure: bool = False) -> list[str]:
    """The Markdown section (empty when the report names no pair); ``figure``: long_to_short.png was drawn."""
    if not rows:
        return []
    L = [
        "## Long-to-short",
        "",
        f"Greedy, paired over the items both models answered. Token ratio = short / long mean response tokens "
        f"(95% bootstrap interval over items); holds = at least {MIN_CUT:.0%} fewer tokens and no accuracy loss "
        f"beyond noise, with the thinking budget ending at most {MAX_THINKING_CUT:.0%} of the long model's "
        "greedy thinking (thinking cut: the share of items whose thinking the budget, not the model, ended).",
        "",
        *(["![long-to-short](long_to_short.png)", ""] if figure else []),
        "| long | short | items | tokens long → short | token ratio | accuracy long → short | Δ accuracy (95% CI) "
        "| thinking cut long / short | holds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "token_ratio" not in r:
            why = (
                f"not evaluated: {r['missing']}" if r.get("missing") else f"{r.get('items', 0)} shared items"
            )
            L.append(f"| {r['long']} | {r['short']} | – | – | – | – | – | – | {why} |")
            continue
        tr, d = r["token_ratio"], r["accuracy_change"]
        ratio = f"{tr['value']:.3f} [{tr['low']:.3f}, {tr['high']:.3f}]" if tr["value"] is not None else "–"
        ci = f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" if d.get("low") is not None else "–"
        L.append(
            f"| {r['long']} | {r['short']} | {r['items']} | {r['long_tokens']:.1f} → {r['short_tokens']:.1f} "
            f"| {ratio} | {r['long_accuracy']:.3f} → {r['short_accuracy']:.3f} | {ci} | "
            f"{r['long_thinking_cut']:.1%} / {r['short_thinking_cut']:.1%} | {_verdict(r)} |"
        )
    L.append("")
    return L


def _verdict(r: dict[str, Any]) -> str:
    if r["holds"]:
        return "yes"
    if r["cut"] and r["accuracy_kept"]:
        return "no: the budget cut the long model's thinking (raise max_think_tokens)"
    return "no"


def plot_length_pairs(r: dict[str, Any], out: Path) -> list[str]:
    """``long_to_short.png``: each named model at (mean response tokens, greedy accuracy) with 95% intervals,
    an arrow from each long model to its short one; nothing is written when no pair has both points."""
    rows = r.get("long_to_short") or []
    names = [m for row in rows for m in (row["long"], row["short"])]
    pts: dict[str, tuple[dict, dict]] = {}
    for m in dict.fromkeys(names):
        met = (r["models"].get(m) or {}).get("metrics") or {}
        tok, acc = met.get("mean_response_tokens") or {}, met.get("greedy_accuracy") or {}
        if tok.get("value") is not None and acc.get("value") is not None:
            pts[m] = (tok, acc)
    if not any(row["long"] in pts and row["short"] in pts for row in rows):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def err(d: dict) -> list[list[float]]:
        v = d["value"]
        lo = v - d["low"] if d.get("low") is not None else 0.0
        hi = d["high"] - v if d.get("high") is not None else 0.0
        return [[max(0.0, lo)], [max(0.0, hi)]]

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for m, (tok, acc) in pts.items():
        ax.errorbar([tok["value"]], [acc["value"]], xerr=err(tok), yerr=err(acc), fmt="o", capsize=3, label=m)
    for row in rows:
        if row["long"] in pts and row["short"] in pts:
            (t0, a0), (t1, a1) = pts[row["long"]], pts[row["short"]]
            ax.annotate(
                "",
                xy=(t1["value"], a1["value"]),
                xytext=(t0["value"], a0["value"]),
                arrowprops={"arrowstyle": "->", "color": "grey", "alpha": 0.6},
            )
    ax.set_xlabel("mean response tokens (greedy, 95% CI)")
    ax.set_ylabel("greedy accuracy (95% CI)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("long-to-short: accuracy vs response length", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "long_to_short.png")
    plt.close(fig)
    return ["long_to_short.png"]
