"""The report's long-to-short section on hand-built evaluations: a short model with 40% fewer tokens and the
same accuracy holds, one whose accuracy drops beyond noise does not; both are plotted at (mean response
tokens, accuracy) in long_to_short.png and tabled in report.md; a report naming no pair draws nothing."""

from __future__ import annotations

import json

import pytest

from ops.eval import metrics as M
from ops.eval import report as R

pytestmark = pytest.mark.unit

N = 200


def _eval(model: str, correct: list[float], tokens: list[float]) -> R.EvalInfo:
    overall = {
        "greedy_accuracy": M.proportion(correct),
        "mean_response_tokens": M.mean_with_interval(tokens),
    }
    info = R.EvalInfo(
        "eval",
        model,
        f"e-{model}",
        R.Path("."),
        {"inputs": {"models": [{"version": model}]}},
        {"overall": overall, "n_items": len(correct), "samples": 0},
    )
    info.item_scores["greedy_accuracy"] = {f"t/{i}": float(v) for i, v in enumerate(correct)}
    info.item_scores["mean_response_tokens"] = {f"t/{i}": float(v) for i, v in enumerate(tokens)}
    return info


def _evals():
    acc = [1.0 if i % 2 == 0 else 0.0 for i in range(N)]
    long_tokens = [30.0 + i % 5 for i in range(N)]
    same_acc_short = _eval("short_ok", acc, [0.6 * t for t in long_tokens])
    # every other right answer lost: -0.25 accuracy, far beyond noise on 200 items
    worse = [v if i % 4 else 0.0 for i, v in enumerate(acc)]
    return [_eval("long", acc, long_tokens), same_acc_short, _eval("short_bad", worse, [10.0] * N)]


def _build(tmp_path, pairs):
    stages = {
        m: R.StageInfo(m, "sft", "model", f"v-{m}", {"config": {}, "inputs": {}})
        for m in ("long", "short_ok", "short_bad")
    }
    return R.build(
        title="t",
        evals=_evals(),
        stages=stages,
        out=tmp_path,
        hourly_price=1.0,
        env={"git": {}},
        long_to_short=pairs,
    )


def test_long_to_short_pairs_are_tested_paired_plotted_and_tabled(tmp_path):
    rep = _build(tmp_path, [("long", "short_ok"), ("long", "short_bad")])
    ok, bad = rep["long_to_short"]
    assert ok["items"] == N and ok["token_ratio"]["value"] == pytest.approx(0.6)
    assert ok["token_ratio"]["low"] <= 0.6 <= ok["token_ratio"]["high"]
    assert ok["accuracy_change"]["diff"] == 0.0 and ok["cut"] and ok["accuracy_kept"] and ok["holds"]
    assert bad["cut"] and bad["accuracy_change"]["diff"] == pytest.approx(-0.25)
    assert bad["accuracy_change"]["beyond_noise"] and not bad["accuracy_kept"] and not bad["holds"]
    assert "long_to_short.png" in rep["images"] and (tmp_path / "long_to_short.png").stat().st_size > 0
    md = (tmp_path / "report.md").read_text()
    assert "## Long-to-short" in md and "![long-to-short](long_to_short.png)" in md
    assert "| long | short_ok | 200 |" in md and "| long | short_bad | 200 |" in md
    assert json.loads((tmp_path / "report.json").read_text())["long_to_short"][0]["holds"] is True


def test_a_pair_naming_a_model_without_an_evaluation_is_reported_missing(tmp_path):
    rep = _build(tmp_path, [("long", "long_copy")])
    (row,) = rep["long_to_short"]
    assert row["missing"] == ["long_copy"] and "holds" not in row
    assert "long_to_short.png" not in rep["images"]


def test_no_pair_named_no_section_no_figure(tmp_path):
    rep = _build(tmp_path, None)
    assert rep["long_to_short"] == [] and "long_to_short.png" not in rep["images"]
    assert "Long-to-short" not in (tmp_path / "report.md").read_text()


def test_a_long_model_whose_thinking_the_budget_cut_does_not_hold(tmp_path):
    # the same 40% cut at the same accuracy as short_ok, but the budget ended the long model's thinking on 5%
    # of the items: its accuracy and length are the budget's, so the pair is shown and does not hold
    evals = _evals()
    evals[0].item_scores["greedy_thinking_cut"] = {f"t/{i}": float(i % 20 == 0) for i in range(N)}
    stages = {
        m: R.StageInfo(m, "sft", "model", f"v-{m}", {"config": {}, "inputs": {}})
        for m in ("long", "short_ok", "short_bad")
    }
    rep = R.build(
        title="t",
        evals=evals,
        stages=stages,
        out=tmp_path,
        hourly_price=1.0,
        env={"git": {}},
        long_to_short=[("long", "short_ok")],
    )
    (row,) = rep["long_to_short"]
    assert row["cut"] and row["accuracy_kept"] and row["long_thinking_cut"] == pytest.approx(0.05)
    assert not row["long_within_budget"] and not row["holds"]
    md = (tmp_path / "report.md").read_text()
    assert "| 5.0% / 0.0% | no: the budget cut the long model's thinking (raise max_think_tokens) |" in md


def test_the_thinking_cut_of_each_greedy_response_is_read_from_the_evaluation_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "metrics.json").write_text(json.dumps({"model_stage": "long", "samples": 0}))
    recs = [
        {
            "task": "t",
            "item_id": str(i),
            "mode": "greedy",
            "correct": True,
            "format_ok": True,
            "response_tokens": 10,
            "forced_end": i == 1,
        }
        for i in range(3)
    ]
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "records.parquet")
    info = R.load_eval("eval", tmp_path, "v", {})
    assert info.item_scores["greedy_thinking_cut"] == {"t/0": 0.0, "t/1": 1.0, "t/2": 0.0}
