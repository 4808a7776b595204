"""Acceptance tests of the preference-alignment kinds ``reward_model``, ``dpo`` and ``ppo`` (reduced scale).

They run each kind through ``run_kind`` exactly as the asset factory does, on a tiny SFT'd arithmetic model
and rollouts sampled from it (``tests/align_helpers.py``), and assert behaviour: the reward model ranks
held-out pairs better than chance and than length alone, DPO raises the held-out chosen-minus-rejected
margin, PPO's rollout score rises with bounded KL and nothing is NaN; bad inputs fail before compute.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import align_helpers as A

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def inputs():
    return {
        "teacher": A.as_input(A.teacher_dir(), "model", "teacher"),
        "rollouts": A.as_input(A.rollouts_dir(), "rollouts", "rl"),
        "tasks": A.as_input(A.tasks_dir(), "tasks", "tasks"),
        "rm_teacher": A.as_input(A.teacher_dir(A.RM_TEACHER_STEPS), "model", "teacher"),
        "rm_rollouts": A.as_input(A.rollouts_dir(teacher_steps=A.RM_TEACHER_STEPS), "rollouts", "rl"),
    }


def _stored(home: Path, kind: str) -> list[Path]:
    d = home / "artifacts" / kind
    return [p for p in d.iterdir() if (p / "manifest.json").is_file()] if d.is_dir() else []


def test_reward_model_fits_its_pairs_reports_its_checks_and_loads_in_transformers(lmforge_home, inputs):
    """The trained (score-head) reward model learns its training pairs and its checks say honestly whether it
    ranks held-out pairs: at this scale its held-out accuracy is a draw around chance (0.47-0.62 over rollout
    draws), so the test asserts the fit and the checks' verdicts, not which way a draw falls."""
    import pyarrow.parquet as pq
    from transformers import AutoModelForSequenceClassification

    from pipelines.execute import run_kind

    art, res = run_kind(
        "reward_model",
        {"model": "teacher", "pairs": ["rl"], "steps": 60, "batch_size": 16},
        lmforge_home,
        inputs={"model": [inputs["rm_teacher"]], "pairs": [inputs["rm_rollouts"]]},
        log=lambda s: None,
    )
    m = res.metrics
    assert m["held_out_pairs"] >= 30
    curve = pq.read_table(art.path / "curve.parquet").to_pandas().dropna(subset=["loss"])
    k = max(1, len(curve) // 4)
    assert curve["loss"].iloc[-k:].mean() < curve["loss"].iloc[:k].mean()
    verdicts = {c.name: c.passed for c in res.checks}
    assert verdicts["beats_chance"] == (m["held_out_accuracy"] > 0.6)
    assert verdicts["beats_length_baseline"] == (m["held_out_accuracy"] > m["length_baseline_accuracy"])
    rm = AutoModelForSequenceClassification.from_pretrained(str(art.path), local_files_only=True)
    assert rm.config.num_labels == 1 and rm.config.pad_token_id is not None


def test_likelihood_reward_model_ranks_heldout_pairs_and_loads_in_transformers(lmforge_home, inputs):
    """The likelihood head: the teacher's mean log-likelihood of a response, a BT-fitted scale; its artifact is
    a causal LM + reward.json whose formula, computed by hand with transformers, gives the stage's scores."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ops.posttrain.rm import LikelihoodReward, load_reward_model, score_texts
    from pipelines.execute import run_kind

    art, res = run_kind(
        "reward_model",
        {"model": "teacher", "pairs": ["rl"], "head": "likelihood", "held_out": 0.5},
        lmforge_home,
        inputs={"model": [inputs["rm_teacher"]], "pairs": [inputs["rm_rollouts"]]},
        log=lambda s: None,
    )
    m = res.metrics
    assert m["held_out_pairs"] >= 30
    assert m["held_out_accuracy"] > 0.6
    assert m["held_out_accuracy"] > m["length_baseline_accuracy"]
    assert m["scale"] > 0
    assert {c.name: c.passed for c in res.checks}["beats_chance"]
    spec = json.loads((art.path / "reward.json").read_text())
    assert spec["head"] == "likelihood"
    rm = load_reward_model(art.path)
    assert isinstance(rm, LikelihoodReward)
    lm = AutoModelForCausalLM.from_pretrained(str(art.path), local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(art.path), local_files_only=True)
    q, a = "What is 2 + 3?", "<think>2 + 3 = 5</think><answer>5</answer>"
    prompt = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tok(a + "<|im_end|>", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + r_ids])
    with torch.no_grad():
        logp = torch.log_softmax(lm(input_ids=ids).logits[0, :-1].float(), -1)
    tgt = ids[0, 1:]
    lp = logp[torch.arange(len(tgt)), tgt][len(p_ids) - 1 :]
    by_hand = spec["scale"] * (float(lp.mean()) - spec["center"])
    assert abs(score_texts(rm, tok, [q], [a])[0] - by_hand) < 1e-3 * max(1.0, abs(by_hand))


def test_likelihood_head_refuses_trunk_training_settings():
    from assets.registry import load_kinds

    kind = load_kinds()["reward_model"]
    cfg = kind.config.model_validate({"model": "teacher", "pairs": ["rl"], "head": "likelihood", "steps": 300})
    errs = kind.validate(cfg, {"teacher": "sft", "rl": "grpo"})
    assert [f for f, _ in errs] == ["steps"] and "likelihood" in errs[0][1]
    with pytest.raises(Exception, match="head"):
        kind.config.model_validate({"model": "teacher", "pairs": ["rl"], "head": "pooled"})


def test_pairs_file_missing_column_is_one_error_before_compute(lmforge_home, inputs, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from assets.registry import load_kinds
    from pipelines.execute import run_kind

    bad = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"prompt": ["1+1?"], "chosen": ["<think>1+1=2</think><answer>2</answer>"]}), bad)
    kind = load_kinds()["reward_model"]
    cfg = kind.config.model_validate({"model": "teacher", "pairs": [], "path": str(bad)})
    errs = kind.validate(cfg, {"teacher": "sft"})
    assert errs and errs[0][0] == "path" and "rejected" in errs[0][1] and str(bad) in errs[0][1]
    for k in ("reward_model", "dpo"):
        with pytest.raises(Exception, match="rejected"):
            run_kind(
                k,
                {"model": "teacher", "pairs": [], "path": str(bad), "steps": 1},
                lmforge_home,
                inputs={"model": [inputs["teacher"]]},
                log=lambda s: None,
            )
        assert _stored(lmforge_home, k) == []


def test_dpo_raises_heldout_margin(lmforge_home, inputs):
    """On the reward-model tests' 600-step teacher's rollouts: the 200-step teacher's T=1 samples are ~8% right,
    too few pairs with signal for the held-out margin to rise on every float-rounding draw."""
    from pipelines.execute import run_kind

    _, res = run_kind(
        "dpo",
        {"model": "teacher", "pairs": ["rl"], "steps": 30, "batch_size": 16, "lr": 1e-4, "eval_problems": 0},
        lmforge_home,
        inputs={"model": [inputs["rm_teacher"]], "pairs": [inputs["rm_rollouts"]]},
        log=lambda s: None,
    )
    m = res.metrics
    assert m["held_out_pairs"] >= 30
    assert m["held_out_margin_after"] > m["held_out_margin_before"]
    assert {c.name: c.passed for c in res.checks}["margin_rises"]


def test_ppo_score_rises_with_bounded_kl_and_no_nan(lmforge_home, inputs):
    """On 16 fixed prompts where the teacher is sometimes right, PPO with the accuracy reward raises the
    rollout score (measured: 0.17 -> 0.42 first vs last quarter of 16 steps, max KL 2.8)."""
    import math

    from transformers import AutoModelForCausalLM

    from pipelines.execute import run_kind

    fixed = A.as_input(A.fixed_prompts_dir(), "tasks", "fixed")
    art, res = run_kind(
        "ppo",
        {
            "model": "teacher",
            "prompts": ["fixed"],
            "rewards": ["accuracy"],
            "steps": 16,
            "prompts_per_step": 16,
            "minibatch_size": 16,
            "epochs": 2,
            "lr": 1e-4,
            "eval_problems": 0,
            "max_new_tokens": 48,
        },
        lmforge_home,
        inputs={"model": [inputs["teacher"]], "prompts": [fixed]},
        log=lambda s: None,
    )
    m = res.metrics
    checks = {c.name: c.passed for c in res.checks}
    assert checks["no_nan"] and checks["kl_bounded"]
    assert all(math.isfinite(float(v)) for v in m.values() if isinstance(v, float))
    assert m["score_last_quarter"] > m["score_first_quarter"]
    assert (art.path / "value_head.safetensors").is_file()
    AutoModelForCausalLM.from_pretrained(str(art.path), local_files_only=True)


def test_ppo_unknown_reward_is_a_validation_error():
    from assets.registry import load_kinds

    kind = load_kinds()["ppo"]
    cfg = kind.config.model_validate(
        {"model": "m", "prompts": ["t"], "rewards": ["accuracy", "no_such_reward"]}
    )
    errs = kind.validate(cfg, {"m": "sft", "t": "reasoning_tasks"})
    assert errs and errs[0][0] == "rewards" and "no_such_reward" in errs[0][1]
    cfg = kind.config.model_validate({"model": "m", "prompts": ["t"]})
    assert kind.validate(cfg, {"m": "sft", "t": "reasoning_tasks"})
