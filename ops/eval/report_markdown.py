"""The report card's Markdown: one section per question a reader asks of a pipeline run.

Key design choice: the Markdown is rendered from ``report.json`` alone (plus the stage manifests for the
lineage), so the two never disagree; each section states how to read its numbers (interval, pairing,
beyond-noise rule) right above them, and the comparison and test-time scaling sections say so when there is
nothing to show instead of disappearing.
Sections: model metrics, stage-to-stage changes, RL against its controls, test-time scaling, decontamination
audit, cost ledger, lineage, environment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .evaluate import contamination_text
from .report_controls import render_controls
from .report_length import render_length_pairs

if TYPE_CHECKING:
    from .report import StageInfo

def origin(s: StageInfo) -> str:
    """`` <- imported from SOURCE @ REVISION (ARCH, N params, sha256 ...)`` for a model imported from
    outside lmforge (``hf_model``), else empty."""
    m = s.manifest.get("metrics") or {}
    if s.kind != "hf_model" or not m.get("source"):
        return ""
    rev = f" @ {m['revision']}" if m.get("revision") else ""
    return (f" <- imported from {m['source']}{rev} ({m.get('architecture')}, {m.get('parameters')} params, "
            f"sha256 {str(m.get('content_sha256'))[:12]})")


# metrics shown per model, in order: (key in metrics.json "overall", label, higher is better)
MODEL_METRICS = [
    ("greedy_accuracy", "greedy acc", True),
    ("pass@1", "pass@1", True),
    ("pass@k", "pass@k", True),
    ("maj@k", "maj@k", True),
    ("format_rate", "format", True),
    ("language_consistency", "lang", True),
    ("mean_response_tokens", "resp tokens", None),
    ("bits_per_byte", "bits/byte", False),
]


def _fmt(m: dict[str, Any] | None, digits: int = 3) -> str:
    if not m or m.get("value") is None:
        return "–"
    v = f"{m['value']:.{digits}f}"
    if m.get("low") is None or m.get("high") is None:
        return v
    return f"{v} [{m['low']:.{digits}f}, {m['high']:.{digits}f}]"


def wait_effect_text(e: dict[str, Any]) -> str:
    """One line: forced Waits minus stopping at the model's own ``</think>``, paired over items."""
    head = f"wait ×{e['wait_extensions']} − own </think>"
    if e.get("low") is None:
        return f"{head}: {e['n']} paired items, too few for an interval"
    verdict = "**beyond noise**" if e["beyond_noise"] else "within noise"
    return (
        f"{head}: {e['diff']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}] accuracy, paired over {e['n']} items, "
        f"{verdict}"
    )


def render_markdown(r: dict[str, Any], stages: dict[str, StageInfo]) -> str:
    """``report.md`` from the report ``r`` (the content of ``report.json``) and the stages it covers."""
    L: list[str] = [f"# {r['title']}", ""]
    env = r["environment"]
    git = env.get("git") or {}
    L += [
        f"Generated from stored artifacts. Git commit `{git.get('commit') or 'unknown'}`"
        f"{' (dirty working tree)' if git.get('dirty') else ''}.",
        "",
    ]
    # metrics table
    L += [
        "## Model metrics",
        "",
        "Each cell: value [95% interval from the eval set size]; ± s.d. over seeds where seed replicates ran.",
        "pass@k and maj@k use the k samples per item; bits/byte is on the held-out corpus (lower is better).",
        "",
    ]
    L.append("| model | items | " + " | ".join(lbl for _, lbl, _ in MODEL_METRICS) + " |")
    L.append("|---|---|" + "---|" * len(MODEL_METRICS))
    for m, d in r["models"].items():
        cells = []
        for key, _, _ in MODEL_METRICS:
            c = _fmt(d["metrics"].get(key))
            sp = d["seed_spread"].get(key)
            if sp:
                c += f" ±{sp['sd']:.3f} (seeds n={sp['n']})"
            cells.append(c)
        L.append(f"| {m} | {d['n_items']} | " + " | ".join(cells) + " |")
    L.append("")
    if r["seed_groups"]:
        L += ["Seed replicates: " + "; ".join(", ".join(g) for g in r["seed_groups"]), ""]
    # comparisons
    L += [
        "## Stage-to-stage changes",
        "",
        "Each model is compared with the nearest evaluated model it was derived from, paired on the same eval "
        "items (documents for bits/byte). **beyond noise** = the 95% interval of the paired difference "
        "excludes 0 (and exceeds 1.96 × the seed s.d. where seeds ran); otherwise the change is not "
        "distinguishable from noise at this eval size.",
        "",
    ]
    if r["comparisons"]:
        L += ["| parent → child | metric | change [95% CI] | items | verdict |", "|---|---|---|---|---|"]
        for c in r["comparisons"]:
            ci = f"[{c['low']:+.3f}, {c['high']:+.3f}]" if c.get("low") is not None else ""
            verdict = "**beyond noise**" if c["beyond_noise"] else "within noise"
            L.append(
                f"| {c['parent']} → {c['child']} | {c['metric']} | {c['diff']:+.3f} {ci} | "
                f"{c['paired_items']} | {verdict} |"
            )
    else:
        L.append("No evaluated model descends from another evaluated model; nothing to compare.")
    L.append("")
    L += render_controls(r.get("controls") or [])
    L += render_length_pairs(r.get("long_to_short") or [], "long_to_short.png" in r.get("images", []))
    # budget forcing
    L += ["## Test-time scaling (budget forcing, Wait)", ""]
    if "budget_curves.png" in r.get("images", []):
        L += ["![budget curves](budget_curves.png)", ""]
    any_curve = False
    for m, d in r["models"].items():
        pts = [(f"budget {p['budget']}", p) for p in d["budget_curve"]] + [
            (f"wait ×{p['wait_extensions']}", p) for p in d["wait_curve"]
        ]
        if d.get("unbudgeted"):
            pts.append(("unbudgeted", d["unbudgeted"]))
        if not pts:
            continue
        any_curve = True
        L.append(
            f"- **{m}**: "
            + "; ".join(
                f"{lbl}: {p['accuracy']:.3f} [{p['low']:.3f}, {p['high']:.3f}] @ {p['mean_thinking_tokens']:.1f} tokens"
                for lbl, p in pts
            )
        )
        for e in d.get("wait_effect") or []:
            L.append(f"  - {wait_effect_text(e)}")
    if not any_curve:
        L.append("No budget sweep was run.")
    L.append("")
    # audit
    L += ["## Decontamination audit", ""]
    for m, a in r["audit"].items():
        if not a:
            continue
        L.append(
            f"- **{m}**: {a.get('n_flagged', 0)} of {a.get('n_items', 0)} eval items flagged "
            f"({a.get('ngram')}-gram overlap ≥ {a.get('threshold')}) against "
            f"{len(a.get('datasets') or [])} upstream training datasets"
            + (
                ": "
                + ", ".join(
                    f"`{f['task']}/{f['item_id']}` ({f['overlap']:.2f} in {', '.join(f['matched'])})"
                    for f in (a.get("flagged") or [])[:20]
                )
                if a.get("flagged")
                else ""
            )
            + (f". {split}" if (split := contamination_text(a.get("by_contamination"))) else "")
        )
    L.append("")
    # ledger
    price = r["price"]
    L += [
        "## Cost ledger",
        "",
        f"Estimated cost at {price['hourly']:.2f} {price['currency']} per machine-hour.",
        "",
        "| stage | kind | version | wall time (s) | tokens | FLOPs | est. cost |",
        "|---|---|---|---|---|---|---|",
    ]
    tw = tc = 0.0
    for row in r["ledger"]:
        tw += row["wall_time_s"]
        tc += row["cost"]
        fl = f"{row['flops']:.3g}" if row.get("flops") else "–"
        L.append(
            f"| {row['stage']} | {row['kind']} | `{row['version'][:10]}` | {row['wall_time_s']:.1f} | "
            f"{row['tokens'] if row.get('tokens') is not None else '–'} | {fl} | {row['cost']:.4f} |"
        )
    L += [f"| **total** | | | {tw:.1f} | | | {tc:.4f} |", ""]
    if "cost.png" in r.get("images", []):
        L += ["![cost](cost.png)", ""]
    # lineage
    L += ["## Lineage", "", "```"]
    for n, s in stages.items():
        ins = sorted(
            {
                a.get("stage") + (f"/{a['partition']}" if a.get("partition") else "")
                for arts in (s.manifest.get("inputs") or {}).values()
                for a in arts
                if a.get("stage")
            }
        )
        L.append(f"{n} ({s.kind} {s.version[:10]})" + (f" <- {', '.join(ins)}" if ins else "") + origin(s))
    L += ["```", ""]
    # environment
    hw = env.get("hardware") or {}
    L += [
        "## Environment",
        "",
        f"- git: `{git.get('commit')}`, dirty: {git.get('dirty')}",
        f"- python {env.get('python')} on {env.get('platform')}",
        f"- hardware: {hw.get('cpu_count')} CPUs ({hw.get('cpu')}), {hw.get('memory_gib')} GiB, "
        f"GPUs: {', '.join(hw.get('gpus') or []) or 'none'}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items() if v),
        "",
    ]
    if "metrics.png" in r.get("images", []):
        L += ["![metrics](metrics.png)", ""]
    return "\n".join(L)
