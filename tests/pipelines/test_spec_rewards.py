"""Reward lists and evaluation sweeps in a spec: an unknown reward, a bad control-reward parameter, parameters
that are not a mapping, a weight that is not a number, an unknown language (of the language reward or of
evaluate's language consistency) or a sweep that is not increasing is one issue naming the file, the stage and
the field (a reward's parameter by its place in the list: ``rewards.0.accuracy``), raised when the spec loads
(before any compute); the controls themselves load."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pipelines.spec import SpecError, load_spec
from tests.spec_helpers import assert_one_issue

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, stage: str, body: str) -> Path:
    # the default pipeline with one stage's field overridden: everything else in the spec is valid
    p = tmp_path / "spec.yaml"
    head = f"pipeline: p\nextends: {ROOT / 'pipelines' / 'tiny_r1.yaml'}\nstages:\n  {stage}:\n"
    p.write_text(head + textwrap.indent(textwrap.dedent(body), "    "))
    return p


@pytest.mark.parametrize(
    "stage, body, field, words",
    [
        ("rl1", "rewards: [accuracy, acurracy]", "rewards", ["unknown reward 'acurracy'", "'random'"]),
        ("rl1", "rewards: [{random: {p: 1.5}}]", "rewards", ["p must be a probability in [0, 1]"]),
        ("rl1", "rewards: [{random: {prob: 0.5}}]", "rewards", ["no parameter(s) ['prob']"]),
        ("rl2", "rewards: [acc]", "rewards", ["unknown reward 'acc'"]),
        ("rl1", "rewards: [{accuracy: [1]}]", "rewards.0.accuracy",
         ["parameters are a mapping of ['weight', 'answer_format']", "got [1]"]),
        ("rl2", "rewards: [accuracy, {format: {weight: high}}]", "rewards.1.format.weight", ["expected a number"]),
        ("rl1", "rewards: [accuracy, {language: {target: 123}}]", "rewards.1.language.target",
         ["unknown language 123", "en, es"]),
        ("eval", "language: klingon", "language", ["unknown language 'klingon'", "known: ar"]),
        ("eval", "budgets: [32, 16, 64]", "budgets", ["strictly increasing", "16 after 32"]),
        ("eval", "budgets: [8, 8]", "budgets", ["strictly increasing"]),
        ("eval", "wait_extensions: [2, 1]", "wait_extensions", ["strictly increasing"]),
    ],
)
def test_bad_reward_or_sweep_is_one_issue_naming_file_stage_and_field(tmp_path, stage, body, field, words):
    assert_one_issue(_write(tmp_path, stage, body), stage, field, words)


def test_a_field_inside_a_list_is_located_at_the_line_that_writes_the_list(tmp_path):
    p = _write(tmp_path, "rl1", "steps: 4\nrewards:\n  - accuracy: [1]\n")
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    (issue,) = ei.value.issues
    assert (issue.field, issue.line) == ("rewards.0.accuracy", 6)  # the `rewards:` line, not the stage's


@pytest.mark.parametrize("rewards", ["[random]", "[{random: {p: 0.5, seed: 3}}]", "[format]"])
def test_control_rewards_load(tmp_path, rewards):
    spec = load_spec(_write(tmp_path, "rl1", f"rewards: {rewards}"))
    assert spec.stages["rl1"].config.rewards


def _control_spec(tmp_path: Path, controls: str) -> Path:
    p = tmp_path / "controls.yaml"
    p.write_text(
        f"pipeline: p\nextends: {ROOT / 'pipelines' / 'tiny_r1.yaml'}\nstages:\n"
        "  rl1_random: {kind: grpo, model: cold_sft, prompts: [rl_prompts], rewards: [random], steps: 40,\n"
        "               prompts_per_step: 64, group_size: 8, lr: 5.0e-5, warmup_steps: 5, beta: 0.0}\n"
        "  eval: {models: [base, cold_sft, rl1, rl1_random]}\n"
        f"  report: {{controls: {controls}}}\n"
    )
    return p


def test_report_controls_load_when_both_models_are_evaluated(tmp_path):
    spec = load_spec(_control_spec(tmp_path, "[{treatment: rl1, control: rl1_random}]"))
    (pair,) = spec.stages["report"].config.controls
    assert (pair.treatment, pair.control) == ("rl1", "rl1_random")


def test_report_control_that_is_not_evaluated_is_one_issue(tmp_path):
    p = _control_spec(tmp_path, "[{treatment: rl1, control: rl2}]")
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    (issue,) = ei.value.issues
    assert (issue.file, issue.stage, issue.field) == (str(p), "report", "controls.0.control")
    assert "'rl2' is not a model evaluated by ['eval']" in str(ei.value)
