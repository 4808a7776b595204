"""Answer formats through the stage kinds: a task set records its prompt template and answer format, SFT
renders worked solutions in it, rejection sampling verifies in it, evaluation scores in it (plain decoding
outside think_answer), a stage's override wins, and an unknown format name is one compile-time error naming
file, stage and field."""

from __future__ import annotations

import json
import textwrap

import pyarrow.parquet as pq
import pytest

from assets.registry import load_kinds
from pipelines.execute import run_kind
from pipelines.spec import SpecError, load_spec

load_kinds()


def _gsm8k_tasks(home, **extra):
    cfg = {"train": 30, "eval": 6, "difficulties": [1], "answer_format": "gsm8k",
           "prompt_template": "{question}\nEnd with '#### <number>'.", **extra}
    art, _ = run_kind("reasoning_tasks", cfg, home)
    return art


@pytest.mark.unit
def test_unknown_answer_format_is_one_error_naming_file_stage_and_field(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text(textwrap.dedent("""
        pipeline: bad_format
        stages:
          tasks: {kind: reasoning_tasks, train: 10, eval: 2, answer_format: boxd}
        """))
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    assert len(ei.value.issues) == 1, str(ei.value)
    issue = ei.value.issues[0]
    assert (issue.file, issue.stage, issue.field) == (str(p), "tasks", "answer_format")
    assert "unknown answer format 'boxd'" in str(ei.value) and "gsm8k" in str(ei.value)


@pytest.mark.unit
def test_overrides_are_checked_on_every_consuming_kind():
    kinds = load_kinds()
    for kind, body in [
        ("grpo", {"model": "m", "prompts": ["t"]}),
        ("ppo", {"model": "m", "prompts": ["t"], "rewards": ["accuracy"]}),
        ("rejection_sample", {"model": "m", "prompts": ["t"]}),
        ("evaluate", {"models": ["m"], "tasks": ["t"]}),
        ("sft", {"model": "m", "data": ["t"]}),
    ]:
        field = "format" if kind == "sft" else "answer_format"
        assert getattr(kinds[kind].config.model_validate({**body, field: "boxed"}), field) == "boxed"
        with pytest.raises(ValueError, match="unknown answer format 'box'"):
            kinds[kind].config.model_validate({**body, field: "box"})
        with pytest.raises(ValueError, match="no \\{question\\} placeholder"):
            kinds[kind].config.model_validate({**body, "prompt_template": "Solve it."})


@pytest.mark.unit
def test_task_set_records_its_format_and_consumers_apply_or_override_it(lmforge_home):
    from ops.posttrain.common import examples_from_artifact
    from ops.tasks import read_task_set, read_tasks

    art = _gsm8k_tasks(lmforge_home)
    assert json.loads((art.path / "task_set.json").read_text()) == {
        "answer_format": "gsm8k", "prompt_template": "{question}\nEnd with '#### <number>'."
    }
    raw = read_tasks(art.path / "train.parquet")
    asked = read_task_set(art.path, "train")
    assert asked[0].question == raw[0].question + "\nEnd with '#### <number>'."
    assert {t.answer_format for t in asked} == {"gsm8k"}
    ex = examples_from_artifact("tasks", art.path)
    assert ex[0].response == f"{raw[0].solution}\n#### {raw[0].answer}"
    boxed = examples_from_artifact("tasks", art.path, "train", "boxed", "Q: {question}")
    assert boxed[0].question == "Q: " + raw[0].question and boxed[0].response.endswith(
        f"\\boxed{{{raw[0].answer}}}$."
    )
    # an artifact without task_set.json (lmforge's own default) reads as think_answer
    (art.path / "task_set.json").unlink()
    assert examples_from_artifact("tasks", art.path)[0].response.startswith("<think>")


@pytest.mark.unit
def test_rejection_sampling_verifies_in_the_task_format(monkeypatch):
    from ops.generate import Sample
    from ops.posttrain import rejection as R
    from ops.tasks import Task

    task = Task("t1", "2+3?", "5", "2+3=5.", 1, "x", answer_format="boxed")
    texts = ["so \\boxed{5}<|im_end|>", "\\boxed{4}<|im_end|>", "<think>a</think><answer>5</answer><|im_end|>",
             "\\boxed{3} then \\boxed{5.0}<|im_end|>"]

    def fake_generate(model, tok, questions, n, **kw):
        return [Sample([1], [2] * 3, True, texts[i % len(texts)]) for i in range(len(questions) * n)]

    monkeypatch.setattr(R, "generate", fake_generate)
    p = R.RejectionParams(samples=4, max_per_prompt=4, require_format=False)
    sft, rollouts, stats = R.rejection_sample(None, None, [task], p)
    assert [r["reward_accuracy"] for r in rollouts] == [1.0, 0.0, 0.0, 1.0]
    assert [r["reward_format"] for r in rollouts] == [1.0, 1.0, 0.0, 0.0]
    assert {r["response"] for r in sft} == {"so \\boxed{5}", "\\boxed{3} then \\boxed{5.0}"}
    strict = R.rejection_sample(None, None, [task], R.RejectionParams(samples=4, max_per_prompt=4))[0]
    assert [r["response"] for r in strict] == ["so \\boxed{5}"]


@pytest.mark.unit
def test_maj_at_k_compares_in_each_items_format():
    from ops.eval.evaluate import per_item_scores

    def recs(fmt):
        return [
            {"task": "t", "item_id": "a", "mode": "sample", "sample_index": j, "correct": False, "format_ok": True,
             "extracted_answer": p, "gold_answer": "12", "answer_format": fmt, "response_tokens": 3}
            for j, p in enumerate(["12.0", "12.0", "12"])
        ]

    # the majority answer "12.0" is 12 as a number, but not the exact string "12"
    assert per_item_scores(recs("last_number"), 3)[("t", "a")]["maj@3"] == 1.0
    assert per_item_scores(recs("exact"), 3)[("t", "a")]["maj@3"] == 0.0


@pytest.mark.unit
def test_evaluate_refuses_budget_forcing_outside_think_answer(lmforge_home):
    kind = load_kinds()["evaluate"]
    tcfg = load_kinds()["reasoning_tasks"].config.model_validate({"answer_format": "gsm8k"})
    cfg = kind.config.model_validate({"models": ["m"], "tasks": ["t"], "budgets": [4]})
    errs = kind.validate(cfg, {"m": "sft", "t": "reasoning_tasks"}, {"t": tcfg})
    assert [f for f, _ in errs] == ["budgets"] and "think_answer" in errs[0][1]
    ok = kind.config.model_validate({"models": ["m"], "tasks": ["t"], "budgets": [4], "answer_format": "think_answer"})
    assert kind.validate(ok, {"m": "sft", "t": "reasoning_tasks"}, {"t": tcfg}) == []
    # a task_file stage's format follows from where its answers come from
    fcfg = load_kinds()["task_file"].config.model_validate({"path": "x.jsonl", "answer_from": "gsm8k"})
    errs = kind.validate(cfg, {"m": "sft", "t": "task_file"}, {"t": fcfg})
    assert [f for f, _ in errs] == ["budgets"]


@pytest.mark.slow
def test_evaluate_scores_a_gsm8k_task_set_by_plain_decoding(lmforge_home, tmp_path_factory):
    from tests.assets.eval_fixtures import model_artifact, tiny_model_dir

    tasks = _gsm8k_tasks(lmforge_home)
    model = model_artifact(lmforge_home, tiny_model_dir(tmp_path_factory), "sft", inputs={"data": [tasks]})
    cfg = {"models": ["sft"], "tasks": ["tasks"], "max_items": 4, "samples": 2, "max_think_tokens": 6,
           "max_answer_tokens": 2, "audit_ngram": 8}
    art, res = run_kind("evaluate", cfg, lmforge_home, inputs={"models": [model], "tasks": [tasks]},
                        partition="sft", log=lambda m: None)
    recs = pq.read_table(art.path / "records.parquet").to_pylist()
    assert len(recs) == 4 * 3 and {r["answer_format"] for r in recs} == {"gsm8k"}
    assert all(r["thinking_tokens"] == 0 and 0 < r["response_tokens"] <= 8 for r in recs)
    assert all(r["prompt"].count("End with '#### <number>'.") == 1 for r in recs)
    from ops.answers import answers_match, extract, well_formed

    for r in recs:
        assert r["extracted_answer"] == extract(r["completion"], "gsm8k")
        assert r["correct"] == answers_match(r["extracted_answer"], r["gold_answer"], "gsm8k")
        assert r["format_ok"] == well_formed(r["completion"], "gsm8k")
    m = json.loads((art.path / "metrics.json").read_text())
    assert "format_rate" in m["overall"] and "maj@2" in m["overall"]


@pytest.mark.unit
@pytest.mark.parametrize(
    "fields, field, message",
    [
        ("solution_style: verbose", "solution_style", "'plain', 'verify', 'recheck', 'review' or 'longhand'"),
        ("solution_style: recheck, confirm_rate: 1.5", "confirm_rate", "less than or equal to 1"),
        ("solution_style: verify, confirm_rate: 0.2", "confirm_rate", "needs solution_style 'recheck'"),
        ("generator: parquet, path: x.parquet, confirm_rate: 0.2", "solution_style", "arithmetic generator only"),
        ("solution_style: verify, correction_rate: 1.5", "correction_rate", "less than or equal to 1"),
        ("correction_rate: 0.2", "correction_rate", "needs solution_style 'verify'"),
        ("generator: parquet, path: x.parquet, solution_style: verify", "solution_style", "arithmetic generator only"),
    ],
)
def test_bad_solution_style_is_one_error_naming_file_stage_and_field(tmp_path, fields, field, message):
    p = tmp_path / "spec.yaml"
    p.write_text(f"pipeline: bad_style\nstages:\n  tasks: {{kind: reasoning_tasks, train: 10, eval: 2, {fields}}}\n")
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    issues = [i for i in ei.value.issues if i.field == field]
    assert len(issues) == 1, str(ei.value)
    assert (issues[0].file, issues[0].stage) == (str(p), "tasks")
    assert message in str(ei.value), str(ei.value)


@pytest.mark.unit
def test_verify_style_task_set_trains_its_traces(tmp_path):
    """The stage writes verify-style solutions (checks, Wait corrections) and SFT's responses carry them."""
    from ops.solutions import WAIT_TEXT
    from ops.tasks import read_task_set

    art, _ = run_kind(
        "reasoning_tasks",
        {"train": 40, "eval": 4, "difficulties": [3, 4], "solution_style": "verify", "correction_rate": 0.5},
        tmp_path,
    )
    train = read_task_set(art.path, "train")
    assert all(", check " in t.solution for t in train)
    assert any(WAIT_TEXT + ", " in t.response and t.response.endswith(f"<answer>{t.answer}</answer>")
               for t in train)


@pytest.mark.unit
def test_recheck_style_task_set_writes_confirmations_and_corrections(tmp_path):
    """The stage passes confirm_rate through: its recheck-style solutions hold Waits after correct steps
    (confirmations) as well as after slipped ones, and every response still ends with the task's answer."""
    from ops.solutions import WAIT_TEXT
    from ops.tasks import read_task_set

    art, _ = run_kind(
        "reasoning_tasks",
        {"train": 60, "eval": 4, "difficulties": [3], "solution_style": "recheck", "correction_rate": 0.0,
         "confirm_rate": 0.5},
        tmp_path,
    )
    train = read_task_set(art.path, "train")
    waits = [t for t in train if WAIT_TEXT + ", " in t.response]
    assert waits and all(t.response.endswith(f"<answer>{t.answer}</answer>") for t in train)
    # confirmation only: the step before each Wait is restated unchanged at the end of its re-check
    for t in waits:
        for before, after in zip(t.solution.split(WAIT_TEXT + ", ")[:-1], t.solution.split(WAIT_TEXT + ", ")[1:]):
            step = before.rstrip(".").split(" ")[-1]
            assert after.split(".")[0].endswith(step), t.solution
