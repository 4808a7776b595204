"""The report's RL-vs-control comparison on tiny hand-built evaluations: a control that equals the treatment
is not beyond noise, one that clearly trails it is; pairs come from the config or from the lineage."""

from __future__ import annotations

import pytest

from ops.eval import report as R
from ops.eval.report_controls import derive_pairs

pytestmark = pytest.mark.unit

N = 200
REAL = ["accuracy", "format", {"language": {"weight": 0.1}}]


def _eval(model: str, scores: list[float]) -> R.EvalInfo:
    acc = sum(scores) / len(scores)
    overall = {"greedy_accuracy": {"value": acc, "low": acc - 0.05, "high": acc + 0.05, "n": len(scores)}}
    info = R.EvalInfo(
        "eval",
        model,
        f"e-{model}",
        R.Path("."),
        {"inputs": {"models": [{"version": model}]}},
        {"overall": overall, "n_items": len(scores), "samples": 0},
    )
    info.item_scores["greedy_accuracy"] = {f"t/{i}": float(v) for i, v in enumerate(scores)}
    return info


def _stage(
    name: str, kind: str = "grpo", rewards=None, seed: int | None = None, parent: str = "sft"
) -> R.StageInfo:
    cfg = {"lr": 5e-5, "steps": 20}
    if rewards is not None:
        cfg["rewards"] = rewards
    if seed is not None:
        cfg["seed"] = seed
    inputs = {
        "model": [{"stage": parent, "version": f"v-{parent}"}],
        "prompts": [{"stage": "tasks", "version": "vt"}],
    }
    return R.StageInfo(name, kind, "model", f"v-{name}", {"config": cfg, "inputs": inputs})


def _scores(base: list[float], flip_every: int, offset: int) -> list[float]:
    # the base with every ``flip_every``-th wrong item (shifted by ``offset``) made right
    return [1.0 if v or (i + offset) % flip_every == 0 else 0.0 for i, v in enumerate(base)]


def _lineage(control_scores):
    parent = [1.0 if i % 2 == 0 else 0.0 for i in range(N)]
    treat = {s: _scores(parent, 3, s) for s in range(3)}  # about +0.17 over the parent, per seed
    evals = [_eval("sft", parent)] + [_eval(f"rl_s{s}", treat[s]) for s in range(3)]
    evals += [_eval(f"rnd_s{s}", control_scores(parent, treat, s)) for s in range(3)]
    stages = {"sft": R.StageInfo("sft", "sft", "model", "v-sft", {"config": {}, "inputs": {}})}
    for s in range(3):
        stages[f"rl_s{s}"] = _stage(f"rl_s{s}", rewards=REAL, seed=s)
        stages[f"rnd_s{s}"] = _stage(f"rnd_s{s}", rewards=["random"], seed=s)
    return evals, stages


def _build(tmp_path, evals, stages, controls=None):
    return R.build(
        title="t",
        evals=evals,
        stages=stages,
        out=tmp_path,
        hourly_price=1.0,
        env={"git": {}},
        controls=controls,
    )


def test_a_control_equal_to_the_treatment_is_not_beyond_noise(tmp_path):
    evals, stages = _lineage(lambda parent, treat, s: treat[s])
    rep = _build(tmp_path, evals, stages, controls=[("rl_s0", "rnd_s0")])
    (row,) = rep["controls"]
    assert row["treatment"] == ["rl_s0", "rl_s1", "rl_s2"] and row["control"] == [
        "rnd_s0",
        "rnd_s1",
        "rnd_s2",
    ]
    assert row["parent"] == "sft" and row["paired_items"] == N and row["control_kind"] == "random"
    assert row["treatment_gain"]["beyond_noise"] and row["control_gain"]["beyond_noise"]
    assert row["difference"]["diff"] == 0.0 and not row["difference"]["beyond_noise"]
    assert row["seeds"]["n"] == 3 and row["seeds"]["diff"] == 0.0
    assert row["exceeds"] is False
    md = (tmp_path / "report.md").read_text()
    assert "## RL against its controls" in md and "not beyond the control" in md


def test_a_control_that_clearly_trails_is_exceeded(tmp_path):
    # the control moves a few items at random per seed: far below the treatment's gain
    evals, stages = _lineage(lambda parent, treat, s: _scores(parent, 40, s))
    rep = _build(tmp_path, evals, stages)  # no controls configured: the pair comes from the lineage
    (row,) = rep["controls"]
    d = row["difference"]
    assert d["diff"] > 0.1 and d["low"] > 0 and d["beyond_noise"]
    assert row["seeds"]["n"] == 3 and row["seeds"]["low"] > 0
    assert row["exceeds"] is True
    md = (tmp_path / "report.md").read_text()
    assert (
        "**exceeds the control**" in md
        and "rl_s0, rl_s1, rl_s2 vs rnd_s0, rnd_s1, rnd_s2 (random; from sft)" in md
    )


def test_seed_pairing_is_required_for_the_verdict_when_seeds_disagree(tmp_path):
    # over items the treatment is ahead (about +0.08), but seed 1's control beats its treatment (0.77 vs
    # 0.67): the seeds disagree, so the gain is not beyond the control
    def control(parent, treat, s):
        return [1.0 if v or i % 15 < 8 else 0.0 for i, v in enumerate(parent)] if s == 1 else parent

    evals, stages = _lineage(control)
    (row,) = _build(tmp_path, evals, stages)["controls"]
    assert row["difference"]["beyond_noise"] and row["difference"]["diff"] > 0
    assert not row["seeds"]["beyond_noise"] and row["exceeds"] is False


def test_lineage_pairs_need_the_same_recipe_and_a_control_reward():
    _, stages = _lineage(lambda parent, treat, s: parent)
    groups = [[f"rl_s{s}" for s in range(3)], [f"rnd_s{s}" for s in range(3)]]
    models = list(stages)
    assert derive_pairs(models, stages, groups) == [("rl_s0", "rnd_s0")]
    stages["fmt"] = _stage("fmt", rewards=["format"], seed=0)
    assert derive_pairs(models + ["fmt"], stages, groups) == [("rl_s0", "rnd_s0"), ("rl_s0", "fmt")]
    other = _stage("rnd_lr", rewards=["random"], seed=0)
    other.manifest["config"]["lr"] = 1e-4  # another learning rate is another recipe, not a control
    stages["rnd_lr"] = other
    assert ("rl_s0", "rnd_lr") not in derive_pairs(models + ["rnd_lr"], stages, groups)


def test_a_pair_without_a_shared_parent_is_refused(tmp_path):
    evals, stages = _lineage(lambda parent, treat, s: parent)
    stages["rnd_s0"] = _stage("rnd_s0", rewards=["random"], seed=0, parent="base")
    with pytest.raises(ValueError, match="must start from one evaluated parent model"):
        _build(tmp_path, evals, stages, controls=[("rl_s0", "rnd_s0")])
    with pytest.raises(ValueError, match="'nope' is not an evaluated model"):
        _build(tmp_path, evals, stages, controls=[("rl_s0", "nope")])


def test_report_config_names_only_evaluated_models():
    from assets.registry import KINDS
    from assets.report import validate

    cfg = KINDS["report"].config.model_validate(
        {
            "from": ["eval"],
            "controls": [{"treatment": "rl1", "control": "rl1_rnd"}, {"treatment": "x", "control": "x"}],
        }
    )

    class Ev:
        models = ["cold_sft", "rl1"]

    errs = validate(cfg, {"eval": "evaluate"}, {"eval": Ev()})
    assert [f for f, _ in errs] == [
        "controls.0.control",
        "controls.1",
        "controls.1.treatment",
        "controls.1.control",
    ]
    assert "'rl1_rnd' is not a model evaluated by ['eval']" in errs[0][1]
