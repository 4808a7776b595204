"""Evaluate one model: generation sweeps (greedy, k samples, budget forcing, Wait extension), bits per byte,
and the metrics with their 95% intervals.

Key design choice: every generation becomes one *record* (item, mode, budget, sample index, completion,
parsed answer, token counts) and every metric is computed from the records afterwards, so metrics.json can
always be recomputed from records.parquet and the report can pair models item by item. Answers are parsed
only by ``ops.answers`` in each item's answer format (``extract`` / ``answers_match`` / ``well_formed``),
the same code rewards and rejection sampling use. Items in lmforge's ``think_answer`` format decode through
the budget-forcing loop; items in any other format (``boxed``, ``gsm8k``...) decode plainly for up to
``max_think_tokens + max_answer_tokens`` tokens, and budget/Wait sweeps apply to ``think_answer`` items only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import metrics as M
from .budget import wait_effect

RECORD_COLUMNS = [
    "model_stage",
    "model_version",
    "task",
    "item_id",
    "mode",
    "budget",
    "wait_extensions",
    "waits_used",
    "sample_index",
    "temperature",
    "prompt",
    "completion",
    "extracted_answer",
    "gold_answer",
    "correct",
    "format_ok",
    "thinking_tokens",
    "answer_tokens",
    "response_tokens",
    "forced_end",
    "finished",
    "answer_format",
]


@dataclass
class EvalSettings:
    samples: int = 4
    temperature: float = 0.8
    budgets: list[int] = field(default_factory=list)
    wait_extensions: list[int] = field(default_factory=list)
    max_think_tokens: int = 128
    max_answer_tokens: int = 16
    wait_text: str = "Wait"
    batch_size: int = 32
    seed: int = 0
    language: str = "en"
    bpb_max_tokens: int = 256


@dataclass
class EvalItem:
    task: str
    id: str
    question: str  # as stored in the task set (what the decontamination audit compares)
    answer: str
    prompt: str | None = None  # the question through the task set's prompt template; None: the question
    answer_format: str = "think_answer"


def record_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("model_stage", pa.string()),
            ("model_version", pa.string()),
            ("task", pa.string()),
            ("item_id", pa.string()),
            ("mode", pa.string()),
            ("budget", pa.int32()),
            ("wait_extensions", pa.int32()),
            ("waits_used", pa.int32()),
            ("sample_index", pa.int32()),
            ("temperature", pa.float32()),
            ("prompt", pa.string()),
            ("completion", pa.string()),
            ("extracted_answer", pa.string()),
            ("gold_answer", pa.string()),
            ("correct", pa.bool_()),
            ("format_ok", pa.bool_()),
            ("thinking_tokens", pa.int32()),
            ("answer_tokens", pa.int32()),
            ("response_tokens", pa.int32()),
            ("forced_end", pa.bool_()),
            ("finished", pa.bool_()),
            ("answer_format", pa.string()),
        ]
    )


def generate_records(
    model, tok, items: list[EvalItem], s: EvalSettings, *, model_stage: str, model_version: str, log=print
) -> list[dict[str, Any]]:
    """All generations for ``items``: greedy, ``samples`` sampled, one greedy run per budget and per Wait
    count. Modes: ``greedy``, ``sample``, ``budget``, ``wait``."""
    from ops.answers import answers_match, extract, well_formed
    from ops.generate import chat_prompts

    from .budget import generate_sweep

    prompts = chat_prompts(tok, [it.prompt or it.question for it in items])
    prompt_texts = [tok.decode(p, skip_special_tokens=False) for p in prompts]
    # (mode, budget, wait count, number of samples, temperature); the k samples of an item are decoded in one
    # batch (prompts repeated k times), which keeps the decode loop's batch wide on small eval sets
    runs: list[tuple[str, int | None, int, int, float]] = [("greedy", None, 0, 1, 0.0)]
    if s.samples:
        runs.append(("sample", None, 0, s.samples, s.temperature))
    runs += [("budget", b, 0, 1, 0.0) for b in s.budgets]
    runs += [("wait", None, w, 1, 0.0) for w in s.wait_extensions]
    # the greedy runs of think_answer items decode together, sharing the steps before they differ (same results)
    greedy = [(budget, n_wait) for _, budget, n_wait, reps, temp in runs if reps == 1 and temp == 0.0]
    think_prompts = [p for it, p in zip(items, prompts) if it.answer_format == "think_answer"]
    swept = dict(zip(greedy, generate_sweep(model, tok, think_prompts, greedy, max_think_tokens=s.max_think_tokens,
                                             max_answer_tokens=s.max_answer_tokens, wait_text=s.wait_text,
                                             batch_size=s.batch_size))) if think_prompts else {}
    out: list[dict[str, Any]] = []
    for mode, budget, n_wait, reps, temp in runs:
        rows = [
            (it, ptxt, p, j)
            for j in range(reps)
            for it, ptxt, p in zip(items, prompt_texts, prompts)
            if mode in ("greedy", "sample") or it.answer_format == "think_answer"
        ]
        gens = _generate(model, tok, rows, s, budget, n_wait, temp, swept.get((budget, n_wait)) if reps == 1 else None)
        for (it, ptxt, _, j), g in zip(rows, gens):
            pred = extract(g.completion, it.answer_format)
            out.append(
                {
                    "model_stage": model_stage,
                    "model_version": model_version,
                    "task": it.task,
                    "item_id": it.id,
                    "mode": mode,
                    "budget": budget,
                    "wait_extensions": n_wait,
                    "waits_used": g.waits_used,
                    "sample_index": j,
                    "temperature": temp,
                    "prompt": ptxt,
                    "completion": g.completion,
                    "extracted_answer": pred,
                    "gold_answer": it.answer,
                    "correct": answers_match(pred, it.answer, it.answer_format),
                    "format_ok": bool(well_formed(g.completion, it.answer_format)),
                    "answer_format": it.answer_format,
                    "thinking_tokens": g.thinking_tokens,
                    "answer_tokens": g.answer_tokens,
                    "response_tokens": len(g.token_ids),
                    "forced_end": g.forced_end,
                    "finished": g.finished,
                }
            )
        log(f"evaluate {model_stage}: {mode} budget={budget} wait={n_wait}: {len(gens)} generations")
    return out


def _generate(model, tok, rows, s: EvalSettings, budget, n_wait: int, temp: float, think_gens=None) -> list:
    """One :class:`~ops.eval.budget.Generated` per ``(item, prompt text, prompt ids, sample)`` row, in order:
    ``think_answer`` items through the budget-forcing loop (or ``think_gens``, their generations already
    made, in row order), the others by plain decoding."""
    from ops.generate import pad_token_id, sample, stop_token_ids

    from .budget import Generated, generate_with_budget

    think = [i for i, r in enumerate(rows) if r[0].answer_format == "think_answer"]
    plain = [i for i, r in enumerate(rows) if r[0].answer_format != "think_answer"]
    out: list = [None] * len(rows)
    if think:
        gens = think_gens if think_gens is not None else generate_with_budget(
            model, tok, [rows[i][2] for i in think], budget=budget, max_think_tokens=s.max_think_tokens,
            max_answer_tokens=s.max_answer_tokens, wait_extensions=n_wait, wait_text=s.wait_text,
            temperature=temp, seed=s.seed, batch_size=s.batch_size)
        for i, g in zip(think, gens, strict=True):
            out[i] = g
    if plain:
        smp = sample(
            model,
            [rows[i][2] for i in plain],
            max_new_tokens=s.max_think_tokens + s.max_answer_tokens,
            stop_ids=stop_token_ids(tok),
            pad_id=pad_token_id(tok),
            temperature=temp,
            seed=s.seed,
            batch_size=s.batch_size,
        )
        texts = tok.batch_decode([x.ids for x in smp], skip_special_tokens=False)
        for i, x, t in zip(plain, smp, texts):
            out[i] = Generated(t, list(x.ids), 0, len(x.ids), 0, False, x.finished)
    return out


def _think_text(completion: str) -> str:
    from ops.tasks import split_response

    think, _ = split_response(completion)
    return think if think is not None else completion


def per_item_scores(records: list[dict[str, Any]], k: int) -> dict[tuple[str, str], dict[str, float]]:
    """Per (task, item): greedy correctness/format, pass@1 / pass@k / maj@k from the sampled records."""
    from ops.answers import answers_match

    by_item: dict[tuple[str, str], dict[str, Any]] = defaultdict(lambda: {"samples": []})
    for r in records:
        key = (r["task"], r["item_id"])
        if r["mode"] == "greedy":
            by_item[key]["greedy"] = r
        elif r["mode"] == "sample":
            by_item[key]["samples"].append(r)
    out = {}
    for key, d in by_item.items():
        g = d.get("greedy")
        sc: dict[str, float] = {}
        if g is not None:
            sc["greedy_correct"] = float(g["correct"])
            sc["format_ok"] = float(g["format_ok"])
            sc["response_tokens"] = float(g["response_tokens"])
        smp = sorted(d["samples"], key=lambda r: r["sample_index"])
        if smp:
            n, c = len(smp), sum(1 for r in smp if r["correct"])
            sc["pass@1"] = M.pass_at_k(n, c, 1)
            sc[f"pass@{min(k, n)}"] = M.pass_at_k(n, c, min(k, n))
            gold, fmt = smp[0]["gold_answer"], smp[0].get("answer_format") or "think_answer"
            sc[f"maj@{min(k, n)}"] = M.maj_at_k(
                [r["extracted_answer"] for r in smp],
                gold,
                min(k, n),
                correct=lambda a, gl, fmt=fmt: answers_match(a, gl, fmt),
            )
        out[key] = sc
    return out


def summarize(records: list[dict[str, Any]], s: EvalSettings) -> dict[str, Any]:
    """Metrics (each ``{value, low, high, n}``) overall and per task, plus the budget and Wait curves."""
    from ops.rewards import language_share

    k = s.samples
    tasks = sorted({r["task"] for r in records})

    def block(recs: list[dict[str, Any]]) -> dict[str, Any]:
        items = per_item_scores(recs, k)
        vals = list(items.values())
        res: dict[str, Any] = {}
        for name in ("greedy_correct", "format_ok"):
            xs = [v[name] for v in vals if name in v]
            res["greedy_accuracy" if name == "greedy_correct" else "format_rate"] = M.proportion(xs)
        for name in ("pass@1", f"pass@{k}", f"maj@{k}"):
            xs = [v[name] for v in vals if name in v]
            if xs:
                res[name] = M.proportion(xs)
        greedy = [r for r in recs if r["mode"] == "greedy"]
        res["mean_response_tokens"] = M.mean_with_interval([r["response_tokens"] for r in greedy])
        res["mean_thinking_tokens"] = M.mean_with_interval([r["thinking_tokens"] for r in greedy])
        res["language_consistency"] = M.mean_with_interval(
            [language_share(_think_text(r["completion"]), s.language) for r in greedy]
        )
        return res

    summary: dict[str, Any] = {
        "overall": block(records),
        "tasks": {t: block([r for r in records if r["task"] == t]) for t in tasks},
    }
    summary["budget_curve"] = _curve(records, "budget", "budget")
    summary["wait_curve"] = _curve(records, "wait", "wait_extensions")
    summary["wait_effect"] = wait_effect(records)  # ops.eval.budget: forced Waits vs the model's own stop
    # the unconstrained greedy run is the reference point of both curves
    greedy = [r for r in records if r["mode"] == "greedy"]
    if greedy:
        summary["unbudgeted"] = _point(greedy)
    return summary


def accuracy_by_contamination(
    records: list[dict[str, Any]], flagged: set[tuple[str, str]], k: int
) -> dict[str, Any]:
    """Greedy accuracy and pass@1 on the eval items the decontamination audit flagged vs the rest, and the
    difference flagged - unflagged (Welch interval; different items, so unpaired). A contaminated benchmark
    shows up as flagged items scoring beyond noise above the clean ones; the clean subset's accuracy is the
    number to trust when some items are flagged."""
    items = per_item_scores(records, k)
    out: dict[str, Any] = {}
    for metric, key in (("greedy_accuracy", "greedy_correct"), ("pass@1", "pass@1")):
        dirty = [v[key] for i, v in items.items() if key in v and i in flagged]
        clean = [v[key] for i, v in items.items() if key in v and i not in flagged]
        if not dirty and not clean:
            continue
        out[metric] = {
            "unflagged": M.proportion(clean),
            "flagged": M.proportion(dirty),
            "flagged_minus_unflagged": M.unpaired_difference(clean, dirty),
        }
    return out


def contamination_text(by_contamination: dict[str, Any]) -> str:
    """One sentence (no final stop) for the report: greedy accuracy on unflagged vs flagged items and their
    difference; empty when one side has no items."""
    g = (by_contamination or {}).get("greedy_accuracy")
    if not g or not g["flagged"]["n"] or not g["unflagged"]["n"]:
        return ""
    c, f, d = g["unflagged"], g["flagged"], g["flagged_minus_unflagged"]
    if d["diff"] is None:
        diff = "too few items for an interval"
    else:
        diff = f"flagged - unflagged {d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}], " + (
            "beyond noise" if d["beyond_noise"] else "within noise"
        )
    return (
        f"Greedy accuracy on the {c['n']} unflagged items {c['value']:.3f} [{c['low']:.3f}, {c['high']:.3f}], "
        f"on the {f['n']} flagged {f['value']:.3f} ({diff})"
    )


def _point(recs: list[dict[str, Any]]) -> dict[str, Any]:
    acc = M.proportion([float(r["correct"]) for r in recs])
    th = [r["thinking_tokens"] for r in recs]
    return {
        "accuracy": acc["value"],
        "low": acc["low"],
        "high": acc["high"],
        "n": acc["n"],
        "mean_thinking_tokens": sum(th) / len(th),
        "max_thinking_tokens": max(th),
        "mean_waits_used": sum(r["waits_used"] for r in recs) / len(recs),
        "forced_end_rate": sum(1 for r in recs if r["forced_end"]) / len(recs),
    }


def _curve(records: list[dict[str, Any]], mode: str, key: str) -> list[dict[str, Any]]:
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r["mode"] == mode:
            groups[int(r[key])].append(r)
    return [{key: x, **_point(groups[x])} for x in sorted(groups)]


def bits_per_byte(
    model, tok, docs: list[tuple[str, str]], s: EvalSettings
) -> tuple[dict[str, Any], list[dict]]:
    """Corpus bits per byte (ratio of sums) with a document-bootstrap 95% interval; per-document rows."""
    import math

    from .likelihood import score_documents

    scores = score_documents(
        model, tok, [t for _, t in docs], max_tokens=s.bpb_max_tokens, batch_size=max(1, s.batch_size // 4)
    )
    rows = [
        {"doc_id": d, "nll_nats": sc.nll_nats, "n_bytes": sc.n_bytes, "n_tokens": sc.n_tokens}
        for (d, _), sc in zip(docs, scores)
        if sc.n_bytes > 0
    ]
    if not rows:
        return {"value": None, "low": None, "high": None, "n": 0}, rows
    nll, nb = [r["nll_nats"] for r in rows], [r["n_bytes"] for r in rows]
    value = M.bits_per_byte(sum(nll), sum(nb))
    lo, hi = M.bootstrap_ratio_interval(nll, nb, seed=s.seed, scale=1 / math.log(2))
    return {
        "value": value,
        "low": lo,
        "high": hi,
        "n": len(rows),
        "bytes": sum(nb),
        "tokens": sum(r["n_tokens"] for r in rows),
    }, rows


def budget_curve_png(summary: dict[str, Any], title: str, path: Path) -> None:
    """Accuracy versus mean thinking tokens: the budget sweep, the Wait sweep and the unbudgeted point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=100)
    for curve, key, label, style in (
        (summary.get("budget_curve") or [], "budget", "budget forcing", "o-"),
        (summary.get("wait_curve") or [], "wait_extensions", "Wait extension", "s--"),
    ):
        if not curve:
            continue
        xs = [p["mean_thinking_tokens"] for p in curve]
        ys = [p["accuracy"] for p in curve]
        err = _yerr(curve)
        ax.errorbar(xs, ys, yerr=err, fmt=style, capsize=3, label=label)
        for p, x, y in zip(curve, xs, ys):
            ax.annotate(f"{key[0]}={p[key]}", (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7)
    u = summary.get("unbudgeted")
    if u:
        ax.errorbar(
            [u["mean_thinking_tokens"]],
            [u["accuracy"]],
            yerr=_yerr([u]),
            fmt="k*",
            markersize=10,
            capsize=3,
            label="unbudgeted greedy",
        )
    ax.set_xlabel("mean thinking tokens")
    ax.set_ylabel("accuracy (95% CI)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _yerr(points: list[dict[str, Any]]) -> list[list[float]]:
    """Asymmetric error bars from interval bounds (0 where a bound is missing; never negative)."""
    lo = [max(0.0, p["accuracy"] - p["low"]) if p.get("low") is not None else 0.0 for p in points]
    hi = [max(0.0, p["high"] - p["accuracy"]) if p.get("high") is not None else 0.0 for p in points]
    return [lo, hi]


def flat_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The stage metrics of an evaluation summary: each overall metric with its 95% interval, bits per
    byte, the budget and wait curves' points and the decontamination figures."""
    out: dict[str, Any] = {"n_items": summary.get("n_items", 0)}
    for name, m in (summary.get("overall") or {}).items():
        if isinstance(m, dict) and m.get("value") is not None:
            out[name] = round(m["value"], 6)
            if m.get("low") is not None:
                out[f"{name}_low"], out[f"{name}_high"] = round(m["low"], 6), round(m["high"], 6)
    b = summary.get("bits_per_byte")
    if b and b.get("value") is not None:
        out["bits_per_byte"] = round(b["value"], 6)
        out["bits_per_byte_low"], out["bits_per_byte_high"] = round(b["low"], 6), round(b["high"], 6)
    for p in summary.get("budget_curve") or []:
        out[f"budget_{p['budget']}_accuracy"] = round(p["accuracy"], 6)
        out[f"budget_{p['budget']}_thinking_tokens"] = round(p["mean_thinking_tokens"], 3)
    for p in summary.get("wait_curve") or []:
        out[f"wait_{p['wait_extensions']}_accuracy"] = round(p["accuracy"], 6)
        out[f"wait_{p['wait_extensions']}_thinking_tokens"] = round(p["mean_thinking_tokens"], 3)
    out["contaminated_items"] = (summary.get("audit") or {}).get("n_flagged", 0)
    clean = ((summary.get("audit") or {}).get("by_contamination") or {}).get("greedy_accuracy")
    if clean and clean["unflagged"]["value"] is not None:
        out["greedy_accuracy_unflagged"] = round(clean["unflagged"]["value"], 6)
    return out


def _fmt(m: dict[str, Any] | None) -> str:
    if not m or m.get("value") is None:
        return "–"
    if m.get("low") is None:
        return f"{m['value']:.3f}"
    return f"{m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"


def summary_markdown(summary: dict[str, Any]) -> str:
    """An evaluation summary as a Markdown table (value [95% CI] per metric) and the audit's sentence."""
    lines = [
        f"### {summary['model_stage']} (`{summary['model_version']}`)",
        "",
        "| metric | value [95% CI] |",
        "|---|---|",
    ]
    for name, m in (summary.get("overall") or {}).items():
        lines.append(f"| {name} | {_fmt(m)} |")
    if summary.get("bits_per_byte"):
        lines.append(f"| bits_per_byte | {_fmt(summary['bits_per_byte'])} |")
    for p in summary.get("budget_curve") or []:
        lines.append(
            f"| budget {p['budget']}: accuracy @ {p['mean_thinking_tokens']:.1f} thinking tokens | "
            f"{p['accuracy']:.3f} [{p['low']:.3f}, {p['high']:.3f}] |"
        )
    for p in summary.get("wait_curve") or []:
        lines.append(
            f"| wait ×{p['wait_extensions']}: accuracy @ {p['mean_thinking_tokens']:.1f} thinking tokens"
            f" | {p['accuracy']:.3f} [{p['low']:.3f}, {p['high']:.3f}] |"
        )
    a = summary.get("audit") or {}
    lines += [
        "",
        f"Decontamination audit ({a.get('ngram')}-grams over {len(a.get('datasets', []))} upstream "
        f"training datasets): {a.get('n_flagged', 0)} of {a.get('n_items', 0)} items flagged.",
    ]
    split = contamination_text(a.get("by_contamination") or {})
    if split:
        lines[-1] += f" {split}."
    return "\n".join(lines)
