"""The ``report`` kind over a small lineage: base -> sft -> two RL seed replicates, each evaluated."""

from __future__ import annotations

import json

import pytest

from pipelines.execute import as_input, run_kind
from tests.assets.eval_fixtures import documents_artifact, model_artifact, tasks_artifact, tiny_model_dir

pytestmark = pytest.mark.slow

EVAL = {
    "tasks": ["tasks"],
    "corpus": "heldout",
    "max_items": 12,
    "samples": 2,
    "budgets": [0, 4],
    "max_think_tokens": 16,
    "max_answer_tokens": 6,
    "bpb_docs": 6,
}


@pytest.fixture(scope="module")
def untrained_src(tmp_path_factory):
    from ops.eval.tiny import cached_tiny_chat_model

    return cached_tiny_chat_model(tmp_path_factory.getbasetemp() / "eval-models", train_steps=0)


def test_report_lists_models_with_uncertainty_and_marks_noise(lmforge_home, tmp_path_factory, untrained_src):
    trained = tiny_model_dir(tmp_path_factory)
    tasks = tasks_artifact(lmforge_home)
    corpus = documents_artifact(lmforge_home, ["A page about modules."] * 3, stage="corpus")
    heldout = documents_artifact(
        lmforge_home, [f"Held-out page {i} on functions and classes." for i in range(6)], stage="heldout"
    )
    base = model_artifact(
        lmforge_home,
        untrained_src,
        "base",
        {"data": [corpus]},
        kind="pretrain",
        wall_time_s=30.0,
        flops=1e12,
        tokens=20000,
    )
    sft = model_artifact(lmforge_home, trained, "sft", {"model": [base], "data": [tasks]}, wall_time_s=12.0)
    # two RL runs that differ only by seed (here: identical weights, so their change is exactly zero)
    rl = [
        model_artifact(
            lmforge_home,
            trained,
            f"rl_s{s}",
            {"model": [sft], "prompts": [tasks]},
            kind="grpo",
            config={"lr": 1e-5, "seed": s},
            wall_time_s=5.0,
        )
        for s in (0, 1)
    ]
    models = [base, sft, *rl]
    names = ["base", "sft", "rl_s0", "rl_s1"]
    parts = []
    for name, m in zip(names, models):
        art, _ = run_kind(
            "evaluate",
            {**EVAL, "models": names},
            lmforge_home,
            inputs={"models": [m], "tasks": [tasks], "corpus": [heldout]},
            partition=name,
            stage="eval",
            log=lambda _m: None,
        )
        parts.append(as_input(art, stage="eval", partition=name))
    rep, res = run_kind(
        "report",
        {"from": ["eval"], "hourly_price": 3.6},
        lmforge_home,
        inputs={"from_": parts},
        stage="report",
        log=lambda _m: None,
    )
    md = (rep.path / "report.md").read_text()
    js = json.loads((rep.path / "report.json").read_text())

    # every model stage, with its metrics and 95% intervals
    assert list(js["models"]) == names
    for n in names:
        row = next(line for line in md.splitlines() if line.startswith(f"| {n} |"))
        assert row.count("[") >= 6, row
        gm = js["models"][n]["metrics"]["greedy_accuracy"]
        assert gm["low"] <= gm["value"] <= gm["high"] and gm["n"] == 12
        assert js["models"][n]["metrics"]["bits_per_byte"]["low"] is not None
    # every stage with kind, version and metrics; the eval partitions included
    for n in ["tasks", "corpus", "heldout", "base", "sft", "rl_s0", "rl_s1", "eval/base", "eval/rl_s1"]:
        assert {"kind", "version", "metrics"} <= set(js["stages"][n]), n
    assert (
        js["stages"]["eval/sft"]["metrics"]["greedy_accuracy"]
        == js["models"]["sft"]["metrics"]["greedy_accuracy"]["value"]
    )

    # seed replicates are recognised; their spread is reported
    assert js["seed_groups"] == [["rl_s0", "rl_s1"]]
    assert js["models"]["rl_s0"]["seed_spread"]["greedy_accuracy"]["n"] == 2

    cmp = {(c["parent"], c["child"], c["metric"]): c for c in js["comparisons"]}
    # untrained -> trained: the format rate jumps on the same items, a real effect
    fmt = cmp[("base", "sft", "format_rate")]
    assert fmt["beyond_noise"] and fmt["low"] > 0
    # identical weights: no change may be claimed
    for metric in ("greedy_accuracy", "format_rate", "bits_per_byte"):
        c = cmp[("sft", "rl_s0", metric)]
        assert c["diff"] == pytest.approx(0.0, abs=1e-9) and not c["beyond_noise"]
    assert ("base", "sft", "bits_per_byte") in cmp
    assert "**beyond noise**" in md and "within noise" in md

    # cost ledger at the configured price, environment, lineage, images
    ledger = {x["stage"]: x for x in js["ledger"]}
    assert ledger["base"]["cost"] == pytest.approx(30.0 / 3600 * 3.6)
    assert ledger["base"]["flops"] == 1e12 and ledger["base"]["tokens"] == 20000
    assert js["environment"]["packages"]["torch"] and "commit" in js["environment"]["git"]
    assert "sft (sft" in md and "<- base" in md
    for png in ("metrics.png", "budget_curves.png", "cost.png"):
        assert (rep.path / png).stat().st_size > 1000 and png in md
    assert res.metrics["models"] == 4 and res.metrics["changes_beyond_noise"] >= 1
    assert all(c.passed for c in res.checks)


def test_report_refuses_non_eval_input(lmforge_home):
    docs = documents_artifact(lmforge_home, ["x"], stage="corpus")
    with pytest.raises(ValueError, match=r"stage 'report', field 'from'.*metrics.json"):
        run_kind("report", {"from": ["corpus"]}, lmforge_home, inputs={"from_": [docs]}, stage="report")
    assert not list((lmforge_home / "artifacts" / "report").glob("[!.]*"))
