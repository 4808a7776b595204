"""The report card: one Markdown/JSON/PNG summary of a whole pipeline run, built only from stored artifacts.

Key design choice: the report never claims an effect the numbers do not show. Every model metric carries
its 95% interval from the eval set size (and the spread over seeds where several seeds ran); each
model-to-parent-model change is tested *paired*, item by item on the same eval items (documents for bits
per byte), and is marked "beyond noise" only when the 95% interval of the difference excludes zero (and,
with seed replicates, when the difference also exceeds the seed-to-seed variation).

Inputs are plain dicts (:class:`StageInfo`, :class:`EvalInfo`) so this module needs neither Dagster nor the
store; ``assets/report.py`` resolves them. This module computes the report (``report.json``: metrics, seed
spread, paired comparisons, cost ledger, environment); ``report_markdown.py`` renders its sections as
Markdown and ``report_plots.py`` draws its figures, both from ``report.json`` alone.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import metrics as M
from .report_controls import control_comparisons, derive_pairs
from .report_length import length_pairs
from .report_markdown import MODEL_METRICS, render_markdown
from .report_plots import draw_plots


@dataclass
class StageInfo:
    name: str  # stage name (partitioned: "stage/partition")
    kind: str
    produces: str
    version: str
    manifest: dict[str, Any]


@dataclass
class EvalInfo:
    eval_stage: str
    model_stage: str
    version: str
    path: Path
    manifest: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)
    item_scores: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> {item key: score}


def load_eval(eval_stage: str, path: Path, version: str, manifest: dict[str, Any]) -> EvalInfo:
    """Read metrics.json, records.parquet and bpb.parquet of one evaluate partition."""
    import pyarrow.parquet as pq

    from .evaluate import per_item_scores

    summary = json.loads((path / "metrics.json").read_text())
    info = EvalInfo(
        eval_stage,
        summary.get("model_stage") or manifest.get("partition") or "?",
        version,
        path,
        manifest,
        summary,
    )
    k = int(summary.get("samples") or 0)
    rec_file = path / "records.parquet"
    if rec_file.is_file():
        recs = pq.read_table(rec_file).to_pylist()
        for key, sc in per_item_scores(recs, k).items():
            ik = f"{key[0]}/{key[1]}"
            for name, v in sc.items():
                name = {
                    "greedy_correct": "greedy_accuracy",
                    "format_ok": "format_rate",
                    "response_tokens": "mean_response_tokens",
                }.get(name, name)
                if k and name in (f"pass@{k}", f"maj@{k}") and k != 1:
                    name = name.split("@")[0] + "@k"
                info.item_scores.setdefault(name, {})[ik] = v
        # whether the thinking budget, not the model, ended each greedy response's thinking: a response cut
        # there understates the model's length and may lose its answer (the long-to-short section reports it)
        for r in recs:
            if r.get("mode") == "greedy" and "forced_end" in r:
                info.item_scores.setdefault("greedy_thinking_cut", {})[f"{r['task']}/{r['item_id']}"] = float(
                    bool(r["forced_end"])
                )
    bpb_file = path / "bpb.parquet"
    if bpb_file.is_file():
        import math

        for r in pq.read_table(bpb_file).to_pylist():
            info.item_scores.setdefault("bits_per_byte", {})[r["doc_id"]] = (
                r["nll_nats"] / math.log(2) / r["n_bytes"]
            )
    return info


def model_metric(info: EvalInfo, key: str) -> dict[str, Any] | None:
    ov = info.summary.get("overall") or {}
    k = info.summary.get("samples") or 0
    if key == "bits_per_byte":
        return info.summary.get("bits_per_byte")
    if key in ("pass@k", "maj@k"):
        return ov.get(key.replace("@k", f"@{k}")) if k and k != 1 else None
    return ov.get(key)


# ---- structure of the run -------------------------------------------------------------------------------------
def _strip_seed(cfg: Any) -> Any:
    """``cfg`` without any ``seed`` key, also inside lists (a random reward's own seed: ``[{random: {seed: 1}}]``)."""
    if isinstance(cfg, dict):
        return {k: _strip_seed(v) for k, v in cfg.items() if k != "seed"}
    if isinstance(cfg, list):
        return [_strip_seed(v) for v in cfg]
    return cfg


def seed_groups(models: list[str], stages: dict[str, StageInfo]) -> list[list[str]]:
    """Model stages that differ only by seed (same kind, same config apart from ``seed``, same inputs)."""
    from ops.fingerprint import stable_hash

    groups: dict[str, list[str]] = {}
    for m in models:
        st = stages.get(m)
        if st is None:
            continue
        inputs = {
            f: sorted(a.get("version", "") for a in arts)
            for f, arts in (st.manifest.get("inputs") or {}).items()
        }
        key = stable_hash(
            {"kind": st.kind, "config": _strip_seed(st.manifest.get("config") or {}), "inputs": inputs}
        )
        groups.setdefault(key, []).append(m)
    return [g for g in groups.values() if len(g) > 1]


def parent_model(model: str, evaluated: set[str], stages: dict[str, StageInfo]) -> str | None:
    """The nearest evaluated model stage this model was derived from (breadth-first up the lineage)."""
    st = stages.get(model)
    if st is None:
        return None
    frontier = [a.get("stage") for arts in (st.manifest.get("inputs") or {}).values() for a in arts]
    seen: set[str] = set()
    while frontier:
        nxt = []
        for s in frontier:
            if not s or s in seen:
                continue
            seen.add(s)
            if s in evaluated and s != model:
                return s
            up = stages.get(s)
            if up is not None:
                nxt += [a.get("stage") for arts in (up.manifest.get("inputs") or {}).values() for a in arts]
        frontier = nxt
    return None


def compare(
    parent: EvalInfo, child: EvalInfo, key: str, seed_values: dict[str, list[float]] | None = None
) -> dict[str, Any] | None:
    """Paired change ``child - parent`` of one metric over shared items, with the beyond-noise decision."""
    a, b = parent.item_scores.get(key) or {}, child.item_scores.get(key) or {}
    shared = sorted(set(a) & set(b))
    if len(shared) < 2:
        return None
    res = M.paired_difference([a[i] for i in shared], [b[i] for i in shared])
    res.update(
        {"metric": key, "parent": parent.model_stage, "child": child.model_stage, "paired_items": len(shared)}
    )
    if seed_values:
        pv, cv = seed_values.get(parent.model_stage), seed_values.get(child.model_stage)
        if pv and cv and (len(pv) > 1 or len(cv) > 1):
            # seed replicates: the change must also exceed seed-to-seed variation
            sd = max(M.seed_spread(pv)["sd"], M.seed_spread(cv)["sd"])
            res["seed_sd"] = sd
            res["beyond_noise"] = bool(res["beyond_noise"] and abs(res["diff"]) > M.Z95 * sd)
    return res


# ---- environment ---------------------------------------------------------------------------------------------
PACKAGES = (
    "lmforge",
    "dagster",
    "torch",
    "transformers",
    "tokenizers",
    "peft",
    "datatrove",
    "pyarrow",
    "duckdb",
    "numpy",
    "pydantic",
    "matplotlib",
)


def environment(git: dict[str, Any] | None = None) -> dict[str, Any]:
    """Package versions, hardware and the lmforge checkout's git state (given by the caller)."""
    import os
    from importlib import metadata

    pkgs = {}
    for p in PACKAGES:
        try:
            pkgs[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pkgs[p] = None
    hw: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    try:
        from ops.cpu_gemm import cpu_gemm_info

        hw.update(cpu_gemm_info())  # the fp32 CPU matmul kernels trained weights differ by, in float rounding
    except Exception:  # noqa: BLE001 - no torch / a bad LMFORGE_CPU_GEMM: the stages themselves say so
        pass
    try:
        hw["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        hw["memory_gib"] = None
    try:
        import torch

        hw["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch / no driver: report none
        hw["gpus"] = []
    return {
        "git": git or {"commit": None, "dirty": None},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": pkgs,
        "hardware": hw,
    }


# ---- building -------------------------------------------------------------------------------------------------
def build(
    *,
    title: str,
    evals: list[EvalInfo],
    stages: dict[str, StageInfo],
    out: Path,
    hourly_price: float,
    currency: str = "USD",
    env: dict[str, Any] | None = None,
    controls: list[tuple[str, str]] | None = None,
    long_to_short: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """Write report.md, report.json and PNGs into ``out``; return the report.json content. ``controls``:
    (treatment, control) model pairs to compare (``report_controls``); none given: pairs from the lineage.
    ``long_to_short``: (long, short) model pairs whose accuracy and response length are compared and plotted
    (``report_length``)."""
    env = env if env is not None else environment()
    evals = list(evals)
    by_model = {e.model_stage: e for e in evals}
    evaluated = set(by_model)
    models = [e.model_stage for e in evals]

    # per-model metrics and seed spread
    model_rows: dict[str, dict[str, Any]] = {}
    for e in evals:
        model_rows[e.model_stage] = {key: model_metric(e, key) for key, _, _ in MODEL_METRICS}
    groups = seed_groups(models, stages)
    spread: dict[str, dict[str, Any]] = {}
    seed_values: dict[str, dict[str, list[float]]] = {}
    for g in groups:
        for key, _, _ in MODEL_METRICS:
            vals = [
                model_rows[m][key]["value"]
                for m in g
                if model_rows[m].get(key) and model_rows[m][key].get("value") is not None
            ]
            if len(vals) > 1:
                s = M.seed_spread(vals)
                for m in g:
                    spread.setdefault(m, {})[key] = s
                    seed_values.setdefault(key, {})[m] = vals

    # parent -> child comparisons
    comparisons = []
    for m in models:
        p = parent_model(m, evaluated, stages)
        if p is None:
            continue
        for key, _, _ in MODEL_METRICS:
            c = compare(by_model[p], by_model[m], key, seed_values.get(key))
            if c is not None:
                comparisons.append(c)

    # real-reward RL against its random / format-only controls
    control_rows = control_comparisons(
        list(controls) if controls else derive_pairs(models, stages, groups),
        by_model,
        stages,
        groups,
        lambda m: parent_model(m, evaluated, stages),
    )

    ledger = _ledger(stages, evals, hourly_price)
    audit = {e.model_stage: (e.summary.get("audit") or {}) for e in evals}
    report_json = {
        "title": title,
        "stages": {
            n: {"kind": s.kind, "version": s.version, "metrics": s.manifest.get("metrics") or {}}
            for n, s in stages.items()
        },
        "models": {
            m: {
                "version": by_model[m].manifest.get("inputs", {}).get("models", [{}])[0].get("version"),
                "eval_version": by_model[m].version,
                "n_items": by_model[m].summary.get("n_items"),
                "samples": by_model[m].summary.get("samples"),
                "metrics": model_rows[m],
                "seed_spread": spread.get(m, {}),
                "budget_curve": by_model[m].summary.get("budget_curve") or [],
                "wait_curve": by_model[m].summary.get("wait_curve") or [],
                "wait_effect": by_model[m].summary.get("wait_effect") or [],
                "unbudgeted": by_model[m].summary.get("unbudgeted"),
            }
            for m in models
        },
        "seed_groups": groups,
        "comparisons": comparisons,
        "controls": control_rows,
        "long_to_short": length_pairs(list(long_to_short or []), by_model),
        "ledger": ledger,
        "price": {"hourly": hourly_price, "currency": currency},
        "audit": audit,
        "environment": env,
    }
    pngs = draw_plots(report_json, out)
    report_json["images"] = pngs
    (out / "report.json").write_text(json.dumps(report_json, indent=1, default=str))
    (out / "report.md").write_text(render_markdown(report_json, stages))
    return report_json


def _ledger(stages: dict[str, StageInfo], evals: list[EvalInfo], price: float) -> list[dict[str, Any]]:
    rows = []
    for n, s in stages.items():
        m = s.manifest
        wall = float(m.get("wall_time_s") or 0.0)
        rows.append(
            {
                "stage": n,
                "kind": s.kind,
                "version": s.version,
                "wall_time_s": round(wall, 3),
                "tokens": m.get("tokens"),
                "flops": m.get("flops"),
                "cost": round(wall / 3600 * price, 6),
            }
        )
    return rows
