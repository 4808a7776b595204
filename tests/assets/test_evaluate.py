"""The ``evaluate`` kind run directly (as the asset factory runs it): records, metrics, partitions, audit,
validation of bad inputs."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from pipelines.execute import run_kind
from tests.assets.eval_fixtures import documents_artifact, model_artifact, tasks_artifact, tiny_model_dir

pytestmark = pytest.mark.slow

CFG = {
    "models": ["sft"],
    "tasks": ["tasks"],
    "max_items": 10,
    "samples": 3,
    "budgets": [0, 2, 5],
    "wait_extensions": [1],
    "max_think_tokens": 24,
    "max_answer_tokens": 8,
    "audit_ngram": 8,
}


@pytest.fixture(scope="module")
def model_src(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory)


def _quiet(_msg: str) -> None:
    pass


def test_evaluate_writes_records_and_metrics(lmforge_home, model_src):
    tasks = tasks_artifact(lmforge_home)
    docs = documents_artifact(
        lmforge_home, ["The standard library has many modules. " * 4, "Ann has 3 pens."] * 4
    )
    sft = model_artifact(lmforge_home, model_src, "sft", inputs={"data": [tasks]})
    art, res = run_kind(
        "evaluate",
        {**CFG, "corpus": "corpus"},
        lmforge_home,
        inputs={"models": [sft], "tasks": [tasks], "corpus": [docs]},
        partition="sft",
        log=_quiet,
    )
    recs = pq.read_table(art.path / "records.parquet").to_pylist()
    # 10 items x (greedy + 3 samples + 3 budgets + 1 wait)
    assert len(recs) == 10 * 8
    for col in (
        "model_version",
        "task",
        "item_id",
        "prompt",
        "completion",
        "extracted_answer",
        "correct",
        "thinking_tokens",
        "answer_tokens",
        "budget",
        "sample_index",
        "waits_used",
    ):
        assert col in recs[0]
    assert {r["model_version"] for r in recs} == {sft.version}
    assert all(
        r["prompt"].startswith("<|im_start|>user\n") and r["prompt"].endswith("<|im_start|>assistant\n")
        for r in recs
    )
    for r in recs:
        if r["mode"] == "budget":
            assert r["thinking_tokens"] <= r["budget"]
    # Wait extension is visible in the records: same items, longer thinking
    greedy = {r["item_id"]: r for r in recs if r["mode"] == "greedy"}
    waited = {r["item_id"]: r for r in recs if r["mode"] == "wait"}
    assert any(
        w["waits_used"] == 1 and w["thinking_tokens"] > greedy[i]["thinking_tokens"]
        for i, w in waited.items()
    )
    assert all(w["thinking_tokens"] >= greedy[i]["thinking_tokens"] for i, w in waited.items())

    m = json.loads((art.path / "metrics.json").read_text())
    ov = m["overall"]
    for name in (
        "greedy_accuracy",
        "pass@1",
        "pass@3",
        "maj@3",
        "format_rate",
        "mean_response_tokens",
        "language_consistency",
    ):
        assert ov[name]["n"] == 10 and ov[name]["low"] <= ov[name]["value"] <= ov[name]["high"], name
    assert [p["budget"] for p in m["budget_curve"]] == [0, 2, 5]
    assert m["budget_curve"][0]["max_thinking_tokens"] == 0
    assert m["bits_per_byte"]["value"] > 0 and m["bits_per_byte"]["n"] == 8
    # greedy accuracy recomputed from the records equals the metric
    assert ov["greedy_accuracy"]["value"] == pytest.approx(sum(r["correct"] for r in greedy.values()) / 10)
    assert res.metrics["greedy_accuracy"] == pytest.approx(ov["greedy_accuracy"]["value"])
    assert (art.path / "budget_curve.png").stat().st_size > 1000
    assert {c.name: c.passed for c in res.checks} == {
        "records_complete": True,
        "budget_respected": True,
        "no_contamination": True,
    }
    assert m["audit"]["datasets"] and m["audit"]["n_flagged"] == 0  # train split of tasks was audited


def test_partition_version_ignores_other_models(lmforge_home, model_src):
    """Adding a model to an evaluate stage computes only the new partition: the existing partition's
    version depends on its own model, the tasks and the config, not on the list of models."""
    tasks = tasks_artifact(lmforge_home)
    a = model_artifact(lmforge_home, model_src, "a", config={"seed": 1})
    b = model_artifact(lmforge_home, model_src, "b", config={"seed": 2})
    cfg = {**CFG, "samples": 0, "budgets": [], "wait_extensions": [], "max_items": 4}
    art_a, res = run_kind(
        "evaluate",
        {**cfg, "models": ["a"]},
        lmforge_home,
        inputs={"models": [a], "tasks": [tasks]},
        partition="a",
        log=_quiet,
    )
    assert res is not None
    # the spec now lists two models: partition "a" is a cache hit, partition "b" is computed
    art_a2, res_a2 = run_kind(
        "evaluate",
        {**cfg, "models": ["a", "b"]},
        lmforge_home,
        inputs={"models": [a], "tasks": [tasks]},
        partition="a",
        log=_quiet,
    )
    assert res_a2 is None and art_a2.version == art_a.version
    art_b, res_b = run_kind(
        "evaluate",
        {**cfg, "models": ["a", "b"]},
        lmforge_home,
        inputs={"models": [b], "tasks": [tasks]},
        partition="b",
        log=_quiet,
    )
    assert res_b is not None and art_b.version != art_a.version


def test_audit_flags_eval_item_planted_in_upstream_corpus(lmforge_home, model_src):
    from ops.eval.tiny import tiny_tasks

    ev = tiny_tasks()[1]
    planted = ev[3]
    corpus = documents_artifact(
        lmforge_home,
        ["A page about modules and functions."] * 5
        + [f"Forum post: {planted.question} I think the answer is {planted.answer}."],
        stage="corpus_dirty",
    )
    tasks = tasks_artifact(lmforge_home)
    base = model_artifact(lmforge_home, model_src, "base", inputs={"data": [corpus]}, kind="pretrain")
    sft = model_artifact(lmforge_home, model_src, "sft2", inputs={"model": [base], "data": [tasks]})
    art, res = run_kind(
        "evaluate",
        {**CFG, "samples": 0, "budgets": [], "wait_extensions": [], "max_items": 6},
        lmforge_home,
        inputs={"models": [sft], "tasks": [tasks]},
        partition="sft2",
        log=_quiet,
    )
    m = json.loads((art.path / "metrics.json").read_text())
    assert [f["item_id"] for f in m["audit"]["flagged"]] == [planted.id]
    assert m["audit"]["flagged"][0]["matched"][0].startswith("corpus_dirty@")  # found two hops up the lineage
    assert res.metrics["contaminated_items"] == 1
    # accuracy split by the audit: the one flagged item vs the five others, from the greedy records
    recs = pq.read_table(art.path / "records.parquet").to_pylist()
    by_item = {r["item_id"]: float(r["correct"]) for r in recs if r["mode"] == "greedy"}
    split = m["audit"]["by_contamination"]["greedy_accuracy"]
    assert split["flagged"]["n"] == 1 and split["flagged"]["value"] == by_item[planted.id]
    others = [v for k, v in by_item.items() if k != planted.id]
    assert split["unflagged"]["n"] == 5 and split["unflagged"]["value"] == pytest.approx(sum(others) / 5)
    assert res.metrics["greedy_accuracy_unflagged"] == pytest.approx(sum(others) / 5)
    assert "5 unflagged items" in res.metadata["summary"].text
    assert {c.name: c.passed for c in res.checks}["no_contamination"] is False


def test_task_without_answers_is_refused(lmforge_home, model_src, tmp_path):
    import pyarrow as pa

    from assets.evaluate import EvaluateConfig, validate

    cfg = EvaluateConfig.model_validate(CFG)
    # at validation, from the task stage's config (a user Parquet without an answer column) ...
    user = tmp_path / "user_tasks.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "1+1?"}]), user)

    class TasksCfg:  # the shape of a task-loading config: a path to user Parquet
        def model_dump(self):
            return {"path": str(user), "answer_column": "answer"}

    problems = validate(cfg, {"sft": "sft", "tasks": "reasoning_tasks"}, {"tasks": TasksCfg()})
    assert (
        problems and problems[0][0] == "tasks" and "answer" in problems[0][1] and str(user) in problems[0][1]
    )

    class NoAnswers:
        def model_dump(self):
            return {"answer_column": None}

    assert validate(cfg, {"tasks": "reasoning_tasks"}, {"tasks": NoAnswers()})[0][0] == "tasks"
    # ... and at run time, before any generation, when the stored eval split has empty answers
    tasks = tasks_artifact(
        lmforge_home,
        stage="tasks_noans",
        eval_rows=[
            {"id": "q1", "question": "1+1?", "answer": ""},
            {"id": "q2", "question": "2+2?", "answer": None},
        ],
    )
    sft = model_artifact(lmforge_home, model_src, "sft")
    with pytest.raises(ValueError, match=r"stage 'evaluate'.*field 'tasks'.*without an answer"):
        run_kind(
            "evaluate",
            CFG,
            lmforge_home,
            inputs={"models": [sft], "tasks": [tasks]},
            partition="sft",
            log=_quiet,
        )
    assert not list((lmforge_home / "artifacts" / "evaluate").glob("[!.]*"))  # nothing half-written


def test_non_model_and_non_task_stages_are_refused():
    from assets.evaluate import EvaluateConfig, validate

    cfg = EvaluateConfig.model_validate({**CFG, "models": ["corpus"], "tasks": ["base"]})
    kinds = {"corpus": "evaluate", "base": "evaluate"}  # a registered kind that produces "eval"
    fields = [f for f, _ in validate(cfg, kinds)]
    assert fields == ["models", "tasks"]
    with pytest.raises(ValueError):
        EvaluateConfig.model_validate({**CFG, "budgets": [-1]})
    with pytest.raises(ValueError):
        EvaluateConfig.model_validate({**CFG, "unknown_field": 1})
