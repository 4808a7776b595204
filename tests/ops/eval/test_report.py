"""The report card (``ops.eval.report`` and its Markdown and plots) built from hand-made stage and eval infos:
which model is compared with which, when a change is called beyond noise, seed replicates, the cost ledger,
and the files written."""

from __future__ import annotations

import json

import pytest

from ops.eval import metrics as M
from ops.eval.report import EvalInfo, StageInfo, build, compare, parent_model, seed_groups

pytestmark = pytest.mark.unit

ENV = {
    "git": {"commit": "abc123", "dirty": False},
    "python": "3.11",
    "platform": "test",
    "packages": {"lmforge": "0"},
    "hardware": {"cpu": "x", "cpu_count": 2, "memory_gib": 1.0, "gpus": []},
}


def _stage(name: str, kind: str, inputs: dict[str, list[str]] | None = None, **extra) -> StageInfo:
    manifest = {
        "inputs": {f: [{"stage": s, "version": f"v-{s}"} for s in names] for f, names in (inputs or {}).items()},
        "config": extra.pop("config", {}),
        **extra,
    }
    return StageInfo(name, kind, "model", f"v-{name}", manifest)


def _eval(model: str, scores: dict[str, list[float]]) -> EvalInfo:
    overall = {k: {"value": sum(v) / len(v), "low": 0.0, "high": 1.0} for k, v in scores.items()}
    summary = {"model_stage": model, "n_items": 40, "samples": 1, "overall": overall}
    manifest = {"inputs": {"models": [{"stage": model, "version": f"v-{model}"}]}}
    info = EvalInfo("eval", model, f"e-{model}", None, manifest, summary)
    info.item_scores = {k: {f"tasks/{i}": s for i, s in enumerate(v)} for k, v in scores.items()}
    return info


def _lineage() -> dict[str, StageInfo]:
    return {
        "base": _stage("base", "pretrain", wall_time_s=3600.0, tokens=1000, flops=2e12),
        "sft": _stage("sft", "sft", {"model": ["base"]}, wall_time_s=1800.0),
        # not evaluated: rl's nearest evaluated ancestor is sft, two hops up
        "rm": _stage("rm", "reward_model", {"model": ["sft"]}),
        "rl": _stage("rl", "ppo", {"model": ["sft"], "reward_model": ["rm"]}),
    }


def test_parent_model_is_the_nearest_evaluated_ancestor():
    stages = _lineage()
    assert parent_model("sft", {"base", "sft", "rl"}, stages) == "base"
    assert parent_model("rl", {"base", "sft", "rl"}, stages) == "sft"
    assert parent_model("rl", {"base", "rl"}, stages) == "base"  # sft not evaluated: one more hop
    assert parent_model("base", {"base", "sft"}, stages) is None


def test_seed_groups_are_stages_equal_but_for_their_seed():
    stages = {
        "a": _stage("a", "grpo", {"model": ["sft"]}, config={"lr": 1e-5, "seed": 0}),
        "b": _stage("b", "grpo", {"model": ["sft"]}, config={"lr": 1e-5, "seed": 1}),
        "c": _stage("c", "grpo", {"model": ["sft"]}, config={"lr": 2e-5, "seed": 2}),
        "d": _stage("d", "grpo", {"model": ["base"]}, config={"lr": 1e-5, "seed": 3}),
    }
    assert seed_groups(["a", "b", "c", "d"], stages) == [["a", "b"]]


def test_random_reward_controls_group_across_their_reward_seeds_not_across_p():
    def ctl(name: str, seed: int, p: float = 0.5) -> StageInfo:
        cfg = {"lr": 1e-5, "seed": seed, "rewards": [{"random": {"p": p, "seed": seed}}]}
        return _stage(name, "grpo", {"model": ["sft"]}, config=cfg)

    stages = {"r0": ctl("r0", 0), "r1": ctl("r1", 1), "r2": ctl("r2", 2), "q": ctl("q", 3, p=0.25)}
    assert seed_groups(["r0", "r1", "r2", "q"], stages) == [["r0", "r1", "r2"]]


def test_a_consistent_paired_gain_is_beyond_noise_and_no_change_is_not():
    parent = _eval("base", {"greedy_accuracy": [0.0] * 40, "format_rate": [1.0, 0.0] * 20})
    child = _eval("sft", {"greedy_accuracy": [1.0] * 30 + [0.0] * 10, "format_rate": [0.0, 1.0] * 20})
    gain = compare(parent, child, "greedy_accuracy")
    assert gain["diff"] == pytest.approx(0.75) and gain["beyond_noise"] is True
    assert (gain["parent"], gain["child"], gain["paired_items"]) == ("base", "sft", 40)
    flat = compare(parent, child, "format_rate")  # as many items gained as lost
    assert flat["diff"] == 0.0 and flat["beyond_noise"] is False
    # a gain that is beyond the paired noise but within the seed-to-seed spread is not called
    seeds = {"base": [0.0, 0.9], "sft": [0.75, 0.1]}
    assert M.Z95 * M.seed_spread([0.0, 0.9])["sd"] > 0.75
    assert compare(parent, child, "greedy_accuracy", seeds)["beyond_noise"] is False
    # fewer than two shared items: nothing to compare
    assert compare(_eval("x", {"pass@1": [1.0]}), _eval("y", {"pass@1": [0.0]}), "pass@1") is None


def test_build_writes_the_report_its_sections_and_plots(tmp_path):
    stages = _lineage()
    evals = [
        _eval("base", {"greedy_accuracy": [0.0] * 40}),
        _eval("sft", {"greedy_accuracy": [1.0] * 30 + [0.0] * 10}),
        _eval("rl", {"greedy_accuracy": [1.0] * 30 + [0.0] * 10}),
    ]
    r = build(title="toy run", evals=evals, stages=stages, out=tmp_path, hourly_price=2.0, env=ENV)
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(r, default=str))
    pairs = [(c["parent"], c["child"], c["metric"], c["beyond_noise"]) for c in r["comparisons"]]
    assert pairs == [("base", "sft", "greedy_accuracy", True), ("sft", "rl", "greedy_accuracy", False)]
    ledger = {row["stage"]: row for row in r["ledger"]}
    assert ledger["base"]["cost"] == 2.0 and ledger["sft"]["cost"] == 1.0 and ledger["rm"]["cost"] == 0.0
    assert r["models"]["sft"]["metrics"]["greedy_accuracy"]["value"] == 0.75
    assert r["images"] == ["metrics.png", "cost.png"]  # no budget sweep ran: no budget plot
    for png in r["images"]:
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# toy run\n")
    # 30 of 40 items gained: mean 0.75, s.d. sqrt(7.5 / 39), so the 95% interval is 0.75 +- 1.96 * 0.0693
    assert "| base → sft | greedy_accuracy | +0.750 [+0.614, +0.886] | 40 | **beyond noise** |" in md
    assert "| sft → rl | greedy_accuracy | +0.000" in md and "within noise" in md
    assert "No budget sweep was run." in md
    assert "| **total** | | | 5400.0 | | | 3.0000 |" in md
    assert "rl (ppo v-rl) <- rm, sft" in md
    assert "- git: `abc123`, dirty: False" in md


def _rec(item: int, mode: str, correct: bool, waits: int = 0, think: int = 10) -> dict:
    return {"task": "tasks", "item_id": f"i{item}", "mode": mode, "budget": None, "wait_extensions": waits,
            "waits_used": waits, "sample_index": 0, "correct": correct, "format_ok": True,
            "completion": "<think>1+1=2.</think><answer>2</answer>", "extracted_answer": "2", "gold_answer": "2",
            "answer_format": "think_answer", "thinking_tokens": think, "answer_tokens": 2,
            "response_tokens": think + 4, "forced_end": False, "finished": True}


def test_wait_effect_is_paired_over_items_and_shown_in_the_report(tmp_path):
    from ops.eval.evaluate import EvalSettings, summarize

    # 40 items: stopping at the own </think> gets 10 right; one forced Wait keeps those and fixes 12 more
    recs = [_rec(i, "greedy", i < 10) for i in range(40)]
    recs += [_rec(i, "wait", i < 22, waits=1, think=18) for i in range(40)]
    summary = summarize(recs, EvalSettings(samples=0, wait_extensions=[1]))
    (eff,) = summary["wait_effect"]
    want = M.paired_difference([float(i < 10) for i in range(40)], [float(i < 22) for i in range(40)])
    assert eff == {"wait_extensions": 1, **want}
    assert eff["n"] == 40 and eff["diff"] == pytest.approx(0.3) and eff["beyond_noise"]
    # a Wait that changes nothing is within noise
    same = summarize([_rec(i, "greedy", i < 10) for i in range(40)] + [_rec(i, "wait", i < 10, 1) for i in range(40)],
                     EvalSettings(samples=0, wait_extensions=[1]))
    assert same["wait_effect"][0]["diff"] == 0.0 and not same["wait_effect"][0]["beyond_noise"]

    info = _eval("sft", {"greedy_accuracy": [float(i < 10) for i in range(40)]})
    info.summary.update(wait_curve=summary["wait_curve"], wait_effect=summary["wait_effect"],
                        unbudgeted=summary["unbudgeted"])
    r = build(title="t", evals=[info], stages={"sft": _stage("sft", "sft")}, out=tmp_path, hourly_price=1.0, env=ENV)
    assert r["models"]["sft"]["wait_effect"] == summary["wait_effect"]
    md = (tmp_path / "report.md").read_text()
    lo, hi = want["low"], want["high"]
    assert f"wait ×1 − own </think>: +0.300 [{lo:+.3f}, {hi:+.3f}] accuracy, paired over 40 items, **beyond noise**" in md


def test_both_rlhf_branches_are_compared_with_their_shared_start_with_intervals(tmp_path):
    # the default pipeline's shape: rl2 (PPO against rm) and dpo both start from sft2; dpo's offline pairs come
    # from rl1, itself an evaluated model, yet each branch is measured against the policy it starts from
    stages = {
        "base": _stage("base", "pretrain"),
        "rl1": _stage("rl1", "grpo", {"model": ["base"]}),
        "rs": _stage("rs", "rejection_sample", {"model": ["rl1"]}),
        "sft2": _stage("sft2", "sft", {"model": ["rl1"], "data": ["rs"]}),
        "rm": _stage("rm", "reward_model", {"model": ["sft2"], "pairs": ["rl1", "rs"]}),
        "rl2": _stage("rl2", "ppo", {"model": ["sft2"], "prompts": ["rl_prompts"], "reward_model": ["rm"]}),
        "dpo": _stage("dpo", "dpo", {"model": ["sft2"], "pairs": ["rl1", "rs"]}),
        "dpo_on": _stage("dpo_on", "dpo", {"model": ["sft2"], "tasks": ["rl_prompts"]}),
    }
    start = [1.0] * 10 + [0.0] * 30
    evals = [
        _eval("rl1", {"greedy_accuracy": [0.0] * 40}),
        _eval("sft2", {"greedy_accuracy": start}),
        _eval("rl2", {"greedy_accuracy": [1.0] * 12 + [0.0] * 28}),
        _eval("dpo", {"greedy_accuracy": [1.0] * 20 + [0.0] * 20}),
        _eval("dpo_on", {"greedy_accuracy": [1.0] * 8 + [0.0] * 32}),
    ]
    r = build(title="t", evals=evals, stages=stages, out=tmp_path, hourly_price=1.0, env=ENV)
    got = {c["child"]: c for c in r["comparisons"] if c["metric"] == "greedy_accuracy"}
    assert {k: got[k]["parent"] for k in ("rl2", "dpo", "dpo_on")} == {"rl2": "sft2", "dpo": "sft2", "dpo_on": "sft2"}
    md = (tmp_path / "report.md").read_text()
    for child, scores in (("rl2", evals[2]), ("dpo", evals[3]), ("dpo_on", evals[4])):
        want = M.paired_difference(start, list(scores.item_scores["greedy_accuracy"].values()))
        verdict = "**beyond noise**" if want["beyond_noise"] else "within noise"
        row = f"| sft2 → {child} | greedy_accuracy | {want['diff']:+.3f} [{want['low']:+.3f}, {want['high']:+.3f}] | 40 |"
        assert f"{row} {verdict} |" in md
    assert got["dpo"]["beyond_noise"] and not got["rl2"]["beyond_noise"]
