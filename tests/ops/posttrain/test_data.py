"""Data assembly and plots of the post-training kinds, as plain ops functions: preference pairs from their
sources (``ops/posttrain/pairs.py``), the RL run summary (``ops/rl/summary.py``), curve and reward plots
(``ops/eval/plots.py``) and the SFT/audit Parquet writers."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ops.eval.plots import reward_histogram, write_curve
from ops.posttrain.pairs import collect_pairs, pairs_file_problems, read_rollout_rows
from ops.rl.summary import all_finite, grpo_summary, ppo_summary, training_steps

pytestmark = pytest.mark.unit


def _rollout(i: int, prompt_id: str, completion: str, correct: bool) -> dict:
    return {
        "id": f"r{i}",
        "prompt_id": prompt_id,
        "prompt": f"question {prompt_id}?",
        "completion": completion,
        "reward_accuracy": 1.0 if correct else 0.0,
    }


def test_pairs_file_problems_name_every_problem(tmp_path):
    assert pairs_file_problems(tmp_path / "none.parquet") == [f"{tmp_path / 'none.parquet'}: file not found"]
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    [msg] = pairs_file_problems(junk)
    assert msg.startswith(f"{junk}: not a readable Parquet file (")
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["p"], "chosen": [1]}), bad)
    assert pairs_file_problems(bad) == [
        f"{bad}: column 'chosen' has type int64, expected string",
        f"{bad}: missing column 'rejected' (has ['prompt', 'chosen'])",
    ]
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"prompt": ["p"], "chosen": ["a"], "rejected": ["b"]}), good)
    assert pairs_file_problems(good) == []


def test_collect_pairs_orders_sources_and_names_user_rows(tmp_path):
    art_pairs = tmp_path / "pairs_art"
    art_pairs.mkdir()
    pq.write_table(
        pa.table({"id": ["p1"], "prompt": ["q?"], "chosen": ["yes"], "rejected": ["no"]}),
        art_pairs / "pairs.parquet",
    )
    art_samples = tmp_path / "rl"
    art_samples.mkdir()
    rows = [_rollout(0, "a", "right", True), _rollout(1, "a", "wrong", False), _rollout(2, "b", "x", False)]
    pq.write_table(pa.Table.from_pylist(rows), art_samples / "rollouts.parquet")
    user = tmp_path / "user.parquet"
    pq.write_table(pa.table({"prompt": ["u?", "v?"], "chosen": ["c1", "c2"], "rejected": ["r1", "r2"]}), user)

    assert read_rollout_rows([art_samples]) == rows
    pairs = collect_pairs([art_pairs], [art_samples], max_per_prompt=4, seed=0, user_file=user)
    assert [p.id for p in pairs] == ["p1", "pair-r0-r1", "user-0", "user-1"]
    assert (pairs[1].chosen, pairs[1].rejected, pairs[1].parent_ids) == ("right", "wrong", ("r0", "r1"))
    # prompt "b" has no correct sample: no pair; no sources: no pairs
    assert collect_pairs([], [], 4, 0) == []


def test_grpo_and_ppo_summaries_from_history():
    history = [{"step": 0, "eval_accuracy": 0.25}] + [
        {"step": s, "reward": s / 10, "reward_accuracy": s / 20, "kl": 0.01 * s, "step_s": 2.0, "gen_s": 1.0,
         "score": float(s), "eval_accuracy": 0.5}
        for s in range(1, 9)
    ]
    assert [r["step"] for r in training_steps(history)] == list(range(1, 9))
    g = grpo_summary(history, rollouts=64)
    assert g["reward_first_quarter"] == pytest.approx((0.1 + 0.2) / 2)
    assert g["reward_last_quarter"] == pytest.approx((0.7 + 0.8) / 2)
    assert g["accuracy_last_quarter"] == pytest.approx((0.35 + 0.4) / 2)
    assert (g["kl_max"], g["kl_last"], g["gen_share"], g["rollouts"]) == (pytest.approx(0.08), 0.08, 0.5, 64)
    assert (g["eval_accuracy_start"], g["eval_accuracy_end"]) == (0.25, 0.5)
    assert "eval_parse_rate_start" not in g
    p = ppo_summary(history)
    assert (p["score_first_quarter"], p["score_last_quarter"]) == (1.5, 7.5)
    assert (p["eval_accuracy_start"], p["eval_accuracy_end"]) == (0.25, 0.5)
    assert all_finite(history) and not all_finite(history + [{"step": 9, "kl": math.nan}])


def test_write_curve_keeps_numbers_and_plots_present_keys(tmp_path):
    records = [{"step": 1, "loss": 2.0, "lr": 1e-3, "note": "x"}, {"step": 2, "loss": 1.5}]
    assert write_curve(tmp_path, records, ["loss", "lr", "absent"]) == {"png": "curve.png"}
    t = pq.read_table(tmp_path / "curve.parquet").to_pydict()
    assert t == {"loss": [2.0, 1.5], "lr": [1e-3, None], "step": [1.0, 2.0]}
    assert (tmp_path / "curve.png").stat().st_size > 0
    assert write_curve(tmp_path, [], ["loss"], name="empty") == {}
    assert not (tmp_path / "empty.parquet").exists()
    assert write_curve(tmp_path, records, ["absent"], name="nokeys") == {}
    assert (tmp_path / "nokeys.parquet").is_file() and not (tmp_path / "nokeys.png").exists()


def test_reward_histogram_draws_or_says_why(tmp_path):
    assert reward_histogram(tmp_path, [1.0, 2.0], [0.0, 0.5]) == {"png": "rewards.png"}
    assert (tmp_path / "rewards.png").stat().st_size > 0
    # no values at all: min() of an empty list; the error is reported, not raised
    assert set(reward_histogram(tmp_path / "other", [], [])) == {"error"}


def test_sft_and_audit_writers_use_their_schemas(tmp_path):
    from ops.eval.audit import AuditHit, write_hits
    from ops.posttrain.rejection import write_sft

    write_sft([{"id": "s0", "prompt": "q", "response": "r", "answer": "4", "parent_ids": ["r0"]}], tmp_path / "s.parquet")
    write_sft([], tmp_path / "empty.parquet")
    assert pq.read_table(tmp_path / "empty.parquet").schema.names == ["id", "prompt", "response", "answer", "parent_ids"]
    assert pq.read_table(tmp_path / "s.parquet").to_pylist()[0]["parent_ids"] == ["r0"]
    write_hits([AuditHit("t", "i1", 0.5, ("docs",), True)], tmp_path / "a.parquet")
    write_hits([], tmp_path / "a0.parquet")
    assert pq.read_table(tmp_path / "a.parquet").to_pylist() == [
        {"task": "t", "item_id": "i1", "overlap": 0.5, "flagged": True, "matched": ["docs"]}
    ]
    assert pq.read_table(tmp_path / "a0.parquet").num_rows == 0
