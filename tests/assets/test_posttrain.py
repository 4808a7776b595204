"""Post-training stage kinds run directly (``run_kind``): bad inputs fail before compute with one clear error;
LoRA checkpoints load without peft and their adapter with peft; rejection sampling keeps only verified
answers with provenance; merge refuses mismatched architectures; the RL stages store their rollouts."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assets.registry import load_kinds
from pipelines.execute import run_kind
from resources.store import StoredArtifact
from tests import posttrain_helpers as H

load_kinds()


def _model_art(path, stage="base"):
    return StoredArtifact("pretrain", f"v-{stage}", path, {"stage": stage, "produces": "model"})


@pytest.fixture
def tasks_art(lmforge_home):
    art, _ = run_kind("reasoning_tasks", {"train": 200, "eval": 20, "difficulties": [1]}, lmforge_home)
    return art


# ------------------------------------------------------------------------------------------ bad inputs
@pytest.mark.unit
def test_reasoning_tasks_rejects_missing_and_mistyped_columns(tmp_path):
    from assets.posttrain import PostTrainError  # noqa: F401 - the module registers the kinds
    from assets.registry import KINDS

    kind = KINDS["reasoning_tasks"]
    missing = tmp_path / "missing.parquet"
    pq.write_table(pa.table({"question": ["q?"]}), missing)
    typed = tmp_path / "typed.parquet"
    pq.write_table(pa.table({"question": ["q?"], "answer": [1.5]}), typed)
    cfg = kind.config.model_validate({"generator": "parquet", "path": str(missing)})
    errs = kind.validate(cfg, {})
    assert errs == [("path", f"{missing}: missing column 'answer' (has ['question'])")]
    cfg = kind.config.model_validate({"generator": "parquet", "path": str(typed)})
    assert "column 'answer' has type double" in kind.validate(cfg, {})[0][1]


@pytest.mark.unit
def test_reasoning_tasks_run_refuses_bad_file_and_stores_nothing(lmforge_home, tmp_path):
    from ops.tasks import TaskFileError

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"q": ["x"], "answer": ["1"]}), bad)
    with pytest.raises(TaskFileError, match="bad.parquet: missing column 'question'"):
        run_kind("reasoning_tasks", {"generator": "parquet", "path": str(bad)}, lmforge_home)
    assert not list((lmforge_home / "artifacts" / "reasoning_tasks").glob("[!.]*"))


@pytest.mark.unit
def test_reasoning_tasks_refuses_non_numeric_answers(lmforge_home, tmp_path):
    """A user task file whose answers are words, nan or inf is refused when the spec is loaded (one issue
    naming the spec, the stage, the field, the Parquet file, its column and the rows) and when run directly;
    nothing is stored."""
    import textwrap

    from ops.tasks import TaskFileError
    from pipelines.spec import SpecError, load_spec

    train = tmp_path / "train.parquet"
    pq.write_table(pa.table({"question": ["a?", "b?"], "answer": ["4", "5"]}), train)
    held = tmp_path / "held.parquet"
    pq.write_table(pa.table({"question": ["c?", "d?", "e?", "f?"], "answer": ["six", "nan", "inf", "3"]}), held)
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(f"""\
        pipeline: user_tasks
        stages:
          problems:
            kind: reasoning_tasks
            generator: parquet
            path: {train}
            eval_path: {held}
        """))
    with pytest.raises(SpecError) as ei:
        load_spec(spec)
    [issue] = ei.value.issues
    assert (issue.file, issue.stage, issue.field, issue.line) == (str(spec), "problems", "eval_path", 7)
    assert issue.message.startswith(f"{held}: column 'answer': 3 row(s) are not numbers (row 0: 'six', "
                                    "row 1: 'nan', row 2: 'inf'")
    with pytest.raises(TaskFileError, match=r"eval_path: .*held\.parquet: column 'answer': 3 row\(s\)"):
        run_kind("reasoning_tasks", {"generator": "parquet", "path": str(train), "eval_path": str(held)},
                 lmforge_home)
    assert not list((lmforge_home / "artifacts" / "reasoning_tasks").glob("[!.]*"))


@pytest.mark.unit
def test_evaluate_refuses_an_empty_held_out_split(lmforge_home, tmp_path):
    """A user task stage without eval_path stores an empty eval split; evaluating it is refused by name
    instead of storing metrics over zero items."""
    from types import SimpleNamespace

    from assets.evaluate import _read_eval_items
    from assets.registry import as_input

    train = tmp_path / "train.parquet"
    pq.write_table(pa.table({"question": ["a?", "b?"], "answer": ["4", "5"]}), train)
    art, res = run_kind("reasoning_tasks", {"generator": "parquet", "path": str(train)}, lmforge_home)
    assert res.metrics["eval"] == 0
    with pytest.raises(ValueError, match=r"stage 'ev', field 'tasks' \('problems'\): .*eval\.parquet has no "
                                         r"items; .* eval_path"):
        _read_eval_items(SimpleNamespace(stage="ev"), as_input(art, stage="problems"), None)


@pytest.mark.unit
def test_reasoning_tasks_user_parquet(lmforge_home, tmp_path):
    good = tmp_path / "gsm.parquet"
    pq.write_table(
        pa.table({"question": ["What is 2+3?", "What is 4*5?"], "answer": ["2+3=5 #### 5", "#### 20"]}), good
    )
    art, res = run_kind("reasoning_tasks", {"generator": "parquet", "path": str(good)}, lmforge_home)
    rows = pq.read_table(art.path / "train.parquet").to_pylist()
    assert [r["answer"] for r in rows] == ["5", "20"] and res.metrics["train"] == 2


@pytest.mark.unit
def test_reasoning_tasks_exclude_keeps_another_task_set_out(lmforge_home, tmp_path):
    """A second prompt set (e.g. for RL or distillation) never contains the first set's questions, generated or
    from a user file; an unreadable excluded artifact is one error naming the field, and nothing is stored."""
    first, _ = run_kind("reasoning_tasks", {"train": 300, "eval": 50, "difficulties": [1]}, lmforge_home)
    seen = {
        r["question"]
        for s in ("train", "eval")
        for r in pq.read_table(first.path / f"{s}.parquet").to_pylist()
    }
    # the same seed would regenerate exactly the first set; with exclude it must draw other problems
    second, res = run_kind(
        "reasoning_tasks",
        {"train": 300, "eval": 10, "difficulties": [1], "exclude": ["first"]},
        lmforge_home,
        inputs={"exclude": [first]},
    )
    got = [
        r["question"]
        for s in ("train", "eval")
        for r in pq.read_table(second.path / f"{s}.parquet").to_pylist()
    ]
    assert len(got) == 310 and not (set(got) & seen) and res.metrics["overlap"] == 0
    user = tmp_path / "user.parquet"
    old_q = sorted(seen)[0]
    pq.write_table(pa.table({"question": [old_q, "What is 2+3?"], "answer": ["1", "5"]}), user)
    third, res = run_kind(
        "reasoning_tasks",
        {"generator": "parquet", "path": str(user), "exclude": ["first"]},
        lmforge_home,
        inputs={"exclude": [first]},
    )
    assert [r["question"] for r in pq.read_table(third.path / "train.parquet").to_pylist()] == [
        "What is 2+3?"
    ]
    assert res.metrics["excluded_rows_dropped"] == 1

    from ops.tasks import TaskFileError

    broken = tmp_path / "broken_art"
    broken.mkdir()
    (broken / "train.parquet").write_text("not parquet")
    before = sorted(p.name for p in (lmforge_home / "artifacts" / "reasoning_tasks").glob("[!.]*"))
    with pytest.raises(TaskFileError, match="field 'exclude': cannot read .*train.parquet"):
        run_kind(
            "reasoning_tasks",
            {"train": 10, "eval": 0, "seed": 5, "exclude": ["x"]},
            lmforge_home,
            inputs={
                "exclude": [
                    StoredArtifact("reasoning_tasks", "x", broken, {"stage": "x", "produces": "tasks"})
                ]
            },
        )
    assert sorted(p.name for p in (lmforge_home / "artifacts" / "reasoning_tasks").glob("[!.]*")) == before


@pytest.mark.unit
def test_unknown_reward_name_is_a_validation_error():
    from assets.registry import KINDS

    kind = KINDS["grpo"]
    cfg = kind.config.model_validate({"model": "m", "prompts": ["t"], "rewards": ["accuracy", "acuracy"]})
    errs = kind.validate(cfg, {"m": "sft", "t": "reasoning_tasks"})
    assert len(errs) == 1 and errs[0][0] == "rewards" and "unknown reward 'acuracy'" in errs[0][1]


@pytest.mark.unit
def test_unknown_reward_fails_before_compute_in_run(lmforge_home, tasks_art):
    from ops.rewards import UnknownReward

    with pytest.raises(UnknownReward, match="unknown reward 'nope'"):
        run_kind(
            "grpo",
            {"model": "base", "prompts": ["tasks"], "rewards": ["nope"], "steps": 1},
            lmforge_home,
            inputs={"model": [_model_art(H.base_model_dir())], "prompts": [tasks_art]},
        )


@pytest.mark.unit
def test_model_without_chat_template_fails_before_compute(lmforge_home, tasks_art, tmp_path):
    from assets.posttrain import PostTrainError

    bare = tmp_path / "bare_model"
    shutil.copytree(H.base_model_dir(), bare)
    cfg_file = bare / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.pop("chat_template", None)
    cfg_file.write_text(json.dumps(cfg))
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    for kind, cfgd, ins in [
        ("sft", {"model": "bare", "data": ["tasks"], "steps": 1}, {"data": [tasks_art]}),
        ("grpo", {"model": "bare", "prompts": ["tasks"], "steps": 1}, {"prompts": [tasks_art]}),
        ("rejection_sample", {"model": "bare", "prompts": ["tasks"]}, {"prompts": [tasks_art]}),
    ]:
        with pytest.raises(PostTrainError, match=r"field 'model'.*without a chat template"):
            run_kind(kind, cfgd, lmforge_home, inputs={"model": [_model_art(bare, "bare")], **ins})
        assert not (lmforge_home / "artifacts" / kind).exists() or not list(
            (lmforge_home / "artifacts" / kind).glob("[!.]*")
        )


@pytest.mark.unit
def test_reward_model_pairs_file_with_missing_columns(tmp_path):
    from assets.registry import KINDS

    bad = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"prompt": ["q"], "chosen": ["a"]}), bad)
    kind = KINDS["reward_model"]
    cfg = kind.config.model_validate({"model": "m", "pairs": ["p"], "path": str(bad)})
    assert kind.validate(cfg, {}) == [
        ("path", f"{bad}: missing column 'rejected' (has ['prompt', 'chosen'])")
    ]


# ------------------------------------------------------------------------------------------ LoRA
@pytest.mark.integration
def test_lora_sft_loads_without_peft_and_adapter_loads_with_peft(lmforge_home, tasks_art):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    art, res = run_kind(
        "sft",
        {
            "model": "base",
            "data": ["tasks"],
            "steps": 4,
            "lora_r": 4,
            "lr": 1e-2,
            "eval_problems": 4,
            "max_new_tokens": 8,
        },
        lmforge_home,
        inputs={"model": [_model_art(H.base_model_dir())], "data": [tasks_art]},
    )
    assert res.metrics["trainable_params"] < 0.2 * sum(
        p.numel() for p in AutoModelForCausalLM.from_pretrained(H.base_model_dir()).parameters()
    )
    merged = AutoModelForCausalLM.from_pretrained(art.path)  # plain checkpoint, no peft involved
    assert not any("lora" in k for k in merged.state_dict())
    base = AutoModelForCausalLM.from_pretrained(H.base_model_dir())
    with_adapter = PeftModel.from_pretrained(base, art.path / "adapter")
    x = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        a = merged(x).logits
        b = with_adapter(x).logits
        c = AutoModelForCausalLM.from_pretrained(H.base_model_dir())(x).logits
    assert torch.allclose(a, b, atol=1e-4)  # adapter on the base == merged checkpoint
    assert not torch.allclose(a, c, atol=1e-4)  # and training changed something
    assert (art.path / "curve.parquet").is_file() and (art.path / "training_state").is_dir()


# ------------------------------------------------------------------------------------------ merge
@pytest.mark.unit
def test_merge_linear_and_architecture_mismatch(lmforge_home, tmp_path):
    import torch

    from assets.posttrain import PostTrainError
    from ops.model import load_model, save_model

    tok = H.tokenizer()
    a_dir, b_dir, c_dir = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    save_model(H.tiny_model(tok, seed=1), tok, a_dir)
    save_model(H.tiny_model(tok, seed=2), tok, b_dir)
    save_model(H.tiny_model(tok, seed=3, arch={**H.ARCH, "layers": 2}), tok, c_dir)
    art, _ = run_kind(
        "merge",
        {"models": ["a", "b"], "weights": [0.25, 0.75]},
        lmforge_home,
        inputs={"models": [_model_art(a_dir, "a"), _model_art(b_dir, "b")]},
    )
    m, a, b = load_model(art.path), load_model(a_dir), load_model(b_dir)
    k = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(m.state_dict()[k], 0.25 * a.state_dict()[k] + 0.75 * b.state_dict()[k], atol=1e-6)
    with pytest.raises(PostTrainError, match="num_hidden_layers differs"):
        run_kind(
            "merge",
            {"models": ["a", "c"]},
            lmforge_home,
            inputs={"models": [_model_art(a_dir, "a"), _model_art(c_dir, "c")]},
        )
    ta, _ = run_kind(
        "merge",
        {"models": ["b"] * 2, "base": "a", "method": "task_arithmetic", "weights": [0.5, 0.5]},
        lmforge_home,
        inputs={"models": [_model_art(b_dir, "b"), _model_art(b_dir, "b")], "base": [_model_art(a_dir, "a")]},
    )
    assert torch.allclose(
        load_model(ta.path).state_dict()[k], b.state_dict()[k], atol=1e-6
    )  # a + 1.0 (b - a)


# ------------------------------------------------------------------------------------------ with a trained model
@pytest.mark.slow
def test_sft_then_rejection_sampling_keeps_only_verified_answers_with_provenance(lmforge_home, tasks_art):
    from ops.tasks import is_correct

    sft = _model_art(H.sft_model_dir(), "sft")
    art, res = run_kind(
        "rejection_sample",
        {"model": "sft", "prompts": ["tasks"], "samples": 8, "max_prompts": 40, "max_response_tokens": 64},
        lmforge_home,
        inputs={"model": [sft], "prompts": [tasks_art]},
    )
    kept = pq.read_table(art.path / "sft.parquet").to_pylist()
    rolls = {r["id"]: r for r in pq.read_table(art.path / "rollouts.parquet").to_pylist()}
    assert len(rolls) == 40 * 8
    assert kept, "the SFT'd model should solve some easy problems"
    for r in kept:
        assert is_correct(r["response"], r["answer"])
        parent = rolls[r["parent_ids"][0]]
        assert parent["prompt"] == r["prompt"] and parent["reward_accuracy"] == 1.0
    assert len({(r["prompt"], r["response"]) for r in kept}) == len(kept)  # de-duplicated
    assert all(c.passed for c in res.checks)
    # a second SFT stage can train on it (data: [rs, tasks])
    art2, res2 = run_kind(
        "sft",
        {"model": "sft", "data": ["rs", "tasks"], "steps": 3, "eval_problems": 10, "max_new_tokens": 48},
        lmforge_home,
        inputs={"model": [sft], "data": [art, tasks_art]},
    )
    assert res2.metrics["examples"] == len(kept) + 200


@pytest.mark.unit
def test_reasoning_tasks_eval_only_set_is_a_benchmark_and_an_emptied_split_fails(lmforge_home, tmp_path):
    """``train: 0`` makes an eval-only set (a held-out benchmark) that passes its checks; a split the stage asks
    for that comes out empty (every user row excluded) fails the blocking check and is never the version's
    result."""
    bench, _ = run_kind("reasoning_tasks", {"train": 0, "eval": 40, "difficulties": [1]}, lmforge_home)
    assert bench.failed is None
    assert {c["name"]: c["passed"] for c in bench.manifest["checks"]}["non_empty"] is True
    assert pq.read_table(bench.path / "train.parquet").num_rows == 0
    assert pq.read_table(bench.path / "eval.parquet").num_rows == 40

    only = sorted(r["question"] for r in pq.read_table(bench.path / "eval.parquet").to_pylist())[:1]
    user = tmp_path / "user.parquet"
    pq.write_table(pa.table({"question": only, "answer": ["1"]}), user)
    bad, _ = run_kind(
        "reasoning_tasks",
        {"generator": "parquet", "path": str(user), "exclude": ["bench"]},
        lmforge_home,
        inputs={"exclude": [bench]},
    )
    assert bad.failed and "non_empty" in bad.failed and "empty: training" in bad.failed
    check = next(c for c in bad.manifest["checks"] if c["name"] == "non_empty")
    assert check["passed"] is False and check["description"].startswith("0 training / 0 eval")
