"""The s1 recipe (``pipelines/s1_budget.yaml``) as a spec: it loads on top of the default pipeline and reuses its
stages (same versions), its evaluation forces exactly the Wait text the recheck traces contain, and each bad
setting of its levers is one issue naming the file, the stage and the field, raised when the spec loads (before
any compute): a budget list that is not increasing, a confirmation rate outside [0, 1] or set for a style
without confirmations, a correction rate on plain solutions."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.solutions import WAIT_TEXT
from pipelines.spec import load_spec
from tests.spec_helpers import assert_one_issue, extending_spec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
S1 = ROOT / "pipelines" / "s1_budget.yaml"


def _write(tmp_path: Path, stages: str) -> Path:
    return extending_spec(tmp_path, S1, stages)


def test_the_recipe_loads_reuses_the_default_stages_and_forces_the_trained_wait():
    s1, default = load_spec(S1), load_spec("tiny_r1")
    for name in ("tasks", "problems", "sft2"):
        assert s1.stages[name].version == default.stages[name].version, name
    probs = s1.stages["s1_problems"].config
    assert probs.solution_style == "longhand" and probs.correction_rate > 0 and probs.confirm_rate > 0
    assert set(s1.stages["s1_sft"].deps) == {"sft2", "s1_problems"}
    assert s1.stages["s1_sft"].config.loss_mask == "wait_slips"  # the own stop stays the plain chain
    assert "s1_problems" in s1.stages["s1_tasks"].config.exclude
    ev = s1.stages["s1_eval"].config
    assert ev.wait_text == WAIT_TEXT and ev.wait_extensions == [1] and len(ev.budgets) >= 3
    assert ev.models == ["sft2", "s1_sft"] and ev.tasks == ["s1_tasks"]


@pytest.mark.parametrize(
    "stages, stage, field, words",
    [
        ("s1_eval: {budgets: [8, 32, 16]}", "s1_eval", "budgets", ["strictly increasing", "16 after 32"]),
        ("s1_eval: {budgets: [8, 8, 16]}", "s1_eval", "budgets", ["strictly increasing"]),
        ("s1_problems: {confirm_rate: 1.5}", "s1_problems", "confirm_rate", ["less than or equal to 1"]),
        (
            "s1_problems: {solution_style: verify}",
            "s1_problems",
            "confirm_rate",
            ["needs solution_style 'recheck'"],
        ),
        ("s1_sft: {pack: true}", "s1_sft", "loss_mask", ["one example per row", "pack: false"]),
        ("s1_sft: {loss_mask: slips}", "s1_sft", "loss_mask", ["'none' or 'wait_slips'"]),
        (
            "s1_problems: {solution_style: plain, confirm_rate: 0.0}",
            "s1_problems",
            "correction_rate",
            ["needs solution_style 'verify', 'recheck', 'review' or 'longhand'"],
        ),
    ],
)
def test_bad_s1_setting_is_one_issue_naming_file_stage_and_field(tmp_path, stages, stage, field, words):
    # a field the override leaves alone is reported where its value is written: in the recipe
    inherited = field.split(".")[0] not in stages
    assert_one_issue(_write(tmp_path, stages), stage, field, words, file=S1 if inherited else None)
