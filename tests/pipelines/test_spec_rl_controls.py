"""The RL control recipe (``pipelines/rl_controls.yaml``) as a spec: it loads on top of the default pipeline and
reuses its stages (rl1 is the seed-0 treatment), every replicate and control is rl1's update apart from its
rewards and seed, the controls are what the report recognises as controls and groups as seed replicates, and a
bad control reward is one issue naming the file, the stage and the field before any compute."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.eval.report import _strip_seed
from ops.rewards import is_control
from pipelines.spec import load_spec
from tests.spec_helpers import assert_one_issue, extending_spec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "pipelines" / "rl_controls.yaml"
RUNS = {
    None: ("rl1", "rl1_s1", "rl1_s2"),
    "random": ("rl1_random_s0", "rl1_random_s1", "rl1_random_s2"),
    "format": ("rl1_format_s0", "rl1_format_s1", "rl1_format_s2"),
}


def _write(tmp_path: Path, stages: str) -> Path:
    return extending_spec(tmp_path, SPEC, stages)


def test_the_recipe_reuses_the_default_and_varies_only_rewards_and_seed():
    spec, default = load_spec(SPEC), load_spec("tiny_r1")
    for name in ("cold_sft", "rl_prompts", "rl1", "tasks"):
        assert spec.stages[name].version == default.stages[name].version, name
    rl1 = spec.stages["rl1"].config.model_dump()
    versions = set()
    for kind, names in RUNS.items():
        seeds = []
        for name in names:
            st = spec.stages[name]
            cfg = st.config.model_dump()
            assert is_control(cfg["rewards"]) == kind, name
            assert {k: v for k, v in cfg.items() if k not in ("rewards", "seed")} == {
                k: v for k, v in rl1.items() if k not in ("rewards", "seed")
            }, name
            assert set(st.deps) == {"cold_sft", "rl_prompts"}, name
            assert _strip_seed(cfg["rewards"]) == _strip_seed(spec.stages[names[0]].config.model_dump()["rewards"])
            seeds.append(cfg["seed"])
            versions.add(st.version)
        assert seeds == [0, 1, 2], kind
    assert len(versions) == 9
    ev = spec.stages["ctl_eval"].config
    assert ev.models[0] == "cold_sft" and set(ev.models[1:]) == {n for names in RUNS.values() for n in names}
    held = spec.stages["heldout"].config
    # every held-out problem is scored: 3000 resolve a greedy gain of about 0.02 over items, 1000 do not
    assert ev.tasks == ["heldout"] and ev.max_items == held.eval == 3000 and ev.samples >= 1
    assert set(held.exclude) == {"tasks", "problems", "rl_prompts"}


@pytest.mark.parametrize(
    "stages, stage, field, words",
    [
        ("rl1_random_s0: {rewards: [{coin: {p: 0.5}}]}", "rl1_random_s0", "rewards", ["coin"]),
        ("rl1_random_s1: {rewards: [{random: {p: 1.5, seed: 1}}]}", "rl1_random_s1", "rewards", ["probability"]),
        ("rl1_random_s2: {rewards: [{random: {p: 0.5, seed: two}}]}", "rl1_random_s2", "rewards", ["integer"]),
        ("ctl_eval: {models: [cold_sft, rl1, rl1_typo]}", "ctl_eval", "models", ["rl1_typo"]),
    ],
)
def test_bad_control_setting_is_one_issue_naming_file_stage_and_field(tmp_path, stages, stage, field, words):
    assert_one_issue(_write(tmp_path, stages), stage, field, words)
