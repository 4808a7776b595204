"""Real-reward RL against its controls in the report card: is the gain more than a random reward would give?

Key design choice: a control (RL from the same start with the same settings and seeds, rewarded at random or
for the format alone; ``ops.rewards.is_control``) is compared with the treatment through the parent model
they share, on the items all of them were scored on. The report shows the treatment's gain over the parent,
the control's gain, and the difference treatment - control paired over items (each item's score averaged
over a side's seed replicates) and, where the two sides' seeds pair up, over seeds
(``ops.eval.metrics.control_gap``). ``exceeds`` says the real reward's gain is above the control's beyond
noise at every level measured. Pairs come from the report's ``controls`` config or, when it names none, from
the lineage: evaluated models of one kind with the same inputs and the same config apart from ``rewards``
and ``seed``, one rewarded for real and the other a control.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ops.fingerprint import stable_hash
from ops.rewards import is_control

from . import metrics as M

if TYPE_CHECKING:
    from .report import EvalInfo, StageInfo

# per-item accuracies the comparison is made on: the greedy answer and the mean over the k samples
CONTROL_METRICS = ("greedy_accuracy", "pass@1")


def _config(st: StageInfo) -> dict[str, Any]:
    return st.manifest.get("config") or {}


def _control_kind(st: StageInfo | None) -> str | None:
    rewards = _config(st).get("rewards") if st is not None else None
    return is_control(list(rewards)) if isinstance(rewards, list) else None


def _recipe(st: StageInfo) -> str:
    """What a run was apart from its rewards and seed: kind, other settings, input versions."""
    inputs = {
        f: sorted(a.get("version", "") for a in arts) for f, arts in (st.manifest.get("inputs") or {}).items()
    }
    cfg = {k: v for k, v in _config(st).items() if k not in ("rewards", "seed")}
    return stable_hash({"kind": st.kind, "config": cfg, "inputs": inputs})


def derive_pairs(
    models: list[str], stages: dict[str, StageInfo], groups: list[list[str]]
) -> list[tuple[str, str]]:
    """(treatment, control) pairs found in the lineage, one per seed group."""
    first = {m: g[0] for g in groups for m in g}
    reps = list(dict.fromkeys(first.get(m, m) for m in models if m in stages))
    pairs = []
    for t in reps:
        if _control_kind(stages[t]) is not None or "rewards" not in _config(stages[t]):
            continue
        for c in reps:
            if c != t and _control_kind(stages[c]) is not None and _recipe(stages[c]) == _recipe(stages[t]):
                pairs.append((t, c))
    return pairs


def _runs(
    names: list[str], by_model: dict[str, EvalInfo], stages: dict[str, StageInfo], key: str, items: list[str]
):
    seeds = [_config(stages[m]).get("seed") if m in stages else None for m in names]
    pair_seeds = len(names) > 1 and None not in seeds and len(set(seeds)) == len(seeds)
    out = []
    for m, s in zip(names, seeds):
        sc = by_model[m].item_scores[key]
        vals = [float(sc[i]) for i in items]
        run: dict[str, Any] = {"after": {key: sum(vals) / len(vals), f"{key}_items": vals}, "model": m}
        if pair_seeds:
            run["seed"] = s
        out.append(run)
    return out


def control_comparisons(
    pairs: list[tuple[str, str]],
    by_model: dict[str, EvalInfo],
    stages: dict[str, StageInfo],
    groups: list[list[str]],
    parent_of,
) -> list[dict[str, Any]]:
    """One row per (pair, metric): gains over the shared parent and treatment - control; ``parent_of(m)`` is
    the nearest evaluated model ``m`` derives from. A pair without one shared evaluated parent is an error."""
    group_of = {m: g for g in groups for m in g}
    rows = []
    for t, c in pairs:
        for name in (t, c):
            if name not in by_model:
                raise ValueError(
                    f"controls: {name!r} is not an evaluated model (evaluated: {sorted(by_model)})"
                )
        tg, cg = group_of.get(t, [t]), group_of.get(c, [c])
        parents = {parent_of(m) for m in [*tg, *cg]}
        if len(parents) != 1 or None in parents:
            raise ValueError(
                f"controls: treatment {t!r} and control {c!r} must start from one evaluated parent model, "
                f"found {sorted(str(p) for p in parents)}"
            )
        parent = parents.pop()
        for key in CONTROL_METRICS:
            scored = [by_model[m].item_scores.get(key) for m in [parent, *tg, *cg]]
            if any(not s for s in scored):
                continue
            items = sorted(set.intersection(*(set(s) for s in scored)))
            if len(items) < 2:
                continue
            start_vals = [float(by_model[parent].item_scores[key][i]) for i in items]
            start = {key: sum(start_vals) / len(start_vals), f"{key}_items": start_vals}
            tr, cr = _runs(tg, by_model, stages, key, items), _runs(cg, by_model, stages, key, items)
            gap = M.control_gap(tr, cr, start, (key,))[key]
            rows.append(
                {
                    "metric": key,
                    "parent": parent,
                    "treatment": tg,
                    "control": cg,
                    "control_kind": _control_kind(stages.get(c)) or "control",
                    "paired_items": len(items),
                    "treatment_gain": M.item_level_gains(tr, start, (key,))[f"items_{key}"],
                    "control_gain": M.item_level_gains(cr, start, (key,))[f"items_{key}"],
                    "difference": gap["items"],
                    "seeds": gap["seeds"],
                    "exceeds": gap["exceeds"],
                }
            )
    return rows


def _ci(d: dict[str, Any] | None) -> str:
    if not d or d.get("diff") is None:
        return "–"
    ci = f" [{d['low']:+.3f}, {d['high']:+.3f}]" if d.get("low") is not None else ""
    return f"{d['diff']:+.3f}{ci}"


def render_controls(rows: list[dict[str, Any]]) -> list[str]:
    """The report section: one table row per (pair, metric)."""
    L = [
        "## RL against its controls",
        "",
        "A control is the same RL from the same parent with the same seeds, rewarded at random (Spurious Rewards) "
        "or for the format alone. Gains are over the shared parent, paired over items (each item averaged over a "
        "side's seeds); treatment − control is paired over items and, where seeds pair up, over seeds. "
        "**exceeds** = the real reward's gain is above the control's beyond noise at every level measured.",
        "",
    ]
    if not rows:
        return [*L, "No RL run has an evaluated control.", ""]
    L += [
        "| treatment vs control | metric | items | treatment gain | control gain | treatment − control (items) "
        "| over seeds | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = "**exceeds the control**" if r["exceeds"] else "not beyond the control"
        seeds = f"{_ci(r['seeds'])} (n={r['seeds']['n']})" if r.get("seeds") else "–"
        L.append(
            f"| {', '.join(r['treatment'])} vs {', '.join(r['control'])} ({r['control_kind']}; from {r['parent']}) "
            f"| {r['metric']} | {r['paired_items']} | {_ci(r['treatment_gain'])} | {_ci(r['control_gain'])} "
            f"| {_ci(r['difference'])} | {seeds} | {verdict} |"
        )
    return [*L, ""]
