"""The ``dpo`` stage kind's variants and inputs: bad values (beta <= 0, alpha < 0, an unknown loss, on-policy
fields that contradict each other) are spec issues naming file, stage and field; pairs with identical chosen
and rejected responses are refused before any model is loaded (or dropped and counted within
``max_identical``); on-policy iterations sample the policy being trained, deterministically per seed, with
the previous iteration's model as reference (or the initial one)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assets.registry import load_kinds
from pipelines.execute import run_kind
from pipelines.spec import load_spec
from resources.store import StoredArtifact
from tests import posttrain_helpers as H
from tests.spec_helpers import assert_one_issue

load_kinds()
ROOT = Path(__file__).resolve().parents[2]
HEAD = f"pipeline: p\nextends: {ROOT / 'pipelines' / 'tiny_r1.yaml'}\nstages:\n  dpo: "


def _spec(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(HEAD + body + "\n")
    return p


def _model_art(path, stage="base"):
    return StoredArtifact("pretrain", f"v-{stage}", path, {"stage": stage, "produces": "model"})


def _stored(home: Path) -> list:
    return list((home / "artifacts" / "dpo").glob("[!.]*")) if (home / "artifacts" / "dpo").exists() else []


# ------------------------------------------------------------------------------------------ spec validation
@pytest.mark.unit
@pytest.mark.parametrize(
    "body, field, words",
    [
        ("{beta: 0}", "beta", ["greater than 0"]),
        ("{beta: -0.1}", "beta", ["greater than 0", "-0.1"]),
        ("{loss: rpo, alpha: -1}", "alpha", ["greater than or equal to 0", "-1"]),
        ("{loss: kto}", "loss", ["'dpo', 'ipo' or 'rpo'", "kto"]),
        ("{pairs: [rl1, rs], iterations: 2, tasks: [rl_prompts]}", "iterations", ["leave `pairs` and `path` unset"]),
        ("{tasks: [], iterations: 2}", "tasks", ["name a tasks stage"]),
        ("{pairs: [rl1], tasks: [rl_prompts], iterations: 0}", "tasks", ["sampled only on-policy (iterations >= 1)"]),
        ("{tasks: [], iterations: 0}", "pairs", ["no preference pairs"]),
        ("{pairs: [], iterations: 2, tasks: [rl_prompts], reference_update: latest}", "reference_update",
         ["'previous' or 'initial'"]),
        ("{warmup_steps: -1}", "warmup_steps", ["greater than or equal to 0", "-1"]),
    ],
)
def test_bad_dpo_field_is_one_issue_naming_file_stage_and_field(tmp_path, body, field, words):
    p = _spec(tmp_path, body)
    assert_one_issue(p, "dpo", field, words)


@pytest.mark.unit
def test_variants_and_on_policy_load_with_their_fields(tmp_path):
    body = "{tasks: [], iterations: 0, pairs: [rl1, rs], loss: ipo, beta: 0.5}"
    c = load_spec(_spec(tmp_path, body)).stages["dpo"].config
    assert (c.loss, c.beta, c.iterations, c.pairs) == ("ipo", 0.5, 0, ["rl1", "rs"])
    body = "{pairs: [], tasks: [rl_prompts], iterations: 3, loss: rpo, alpha: 0.5, reference_update: initial}"
    c = load_spec(_spec(tmp_path, body)).stages["dpo"].config
    assert (c.loss, c.alpha, c.iterations, c.tasks, c.reference_update) == ("rpo", 0.5, 3, ["rl_prompts"], "initial")


@pytest.mark.unit
def test_warmup_steps_reach_the_training_parameters(tmp_path):
    from assets.dpo import DPOConfig
    from assets.posttrain import params
    from ops.posttrain.dpo import DPOParams
    from ops.posttrain.onpolicy import OnPolicyParams

    body = "{pairs: [], tasks: [rl_prompts], iterations: 2, warmup_steps: 3, temperature: 0.4, prompts_per_iteration: 512}"
    c = load_spec(_spec(tmp_path, body)).stages["dpo"].config
    assert params(DPOParams, c).warmup_steps == 3
    o = params(OnPolicyParams, c)
    assert (o.temperature, o.prompts_per_iteration, o.iterations) == (0.4, 512, 2)
    # unset, the stage keeps the training core's warm-up
    assert params(DPOParams, DPOConfig(model="m", path="p.parquet")).warmup_steps == DPOParams().warmup_steps == 10


# ------------------------------------------------------------------------------------------ identical pairs
def _pairs_file(tmp_path: Path, n: int, identical: int) -> Path:
    rows = [
        {
            "id": f"p{i}",
            "prompt": f"What is {i}+1?",
            "chosen": f"<think>{i}+1</think><answer>{i + 1}</answer>",
            "rejected": f"<think>{i}+1</think><answer>{i + 1}</answer>"
            if i < identical
            else f"<think>no</think><answer>{i}</answer>",
        }
        for i in range(n)
    ]
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.unit
@pytest.mark.parametrize("identical, max_identical", [(10, 0.0), (3, 0.0), (3, 0.2)])
def test_identical_pairs_above_the_share_are_refused_before_any_model_loads(
    lmforge_home, tmp_path, monkeypatch, identical, max_identical
):
    import assets.dpo as dpo
    from assets.posttrain import PostTrainError

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the pairs were checked")

    monkeypatch.setattr(dpo, "load_policy", no_load)
    path = _pairs_file(tmp_path, 10, identical)
    cfg = {"model": "base", "path": str(path), "steps": 1, "max_identical": max_identical}
    with pytest.raises(PostTrainError) as ei:
        run_kind("dpo", cfg, lmforge_home, inputs={"model": [_model_art(H.base_model_dir())]}, log=lambda s: None)
    msg = str(ei.value)
    assert "field 'path'" in msg and str(path) in msg and "stage " in msg
    assert f"{identical} of 10 pairs have identical chosen and rejected responses" in msg
    assert "first: id 'p0'" in msg and "max_identical" in msg
    assert not _stored(lmforge_home)


@pytest.mark.unit
def test_identical_pairs_in_a_pairs_artifact_name_its_stage(lmforge_home, tmp_path):
    from assets.posttrain import PostTrainError

    d = tmp_path / "prefs"
    d.mkdir()
    _pairs_file(tmp_path, 4, 4).rename(d / "pairs.parquet")
    art = StoredArtifact("reward_model", "v-prefs", d, {"stage": "prefs", "produces": "pairs"})
    with pytest.raises(PostTrainError, match=r"field 'pairs': stage 'prefs' .*4 of 4 pairs have identical"):
        run_kind(
            "dpo",
            {"model": "base", "pairs": ["prefs"]},
            lmforge_home,
            inputs={"model": [_model_art(H.base_model_dir())], "pairs": [art]},
            log=lambda s: None,
        )
    assert not _stored(lmforge_home)


@pytest.mark.integration
def test_identical_pairs_within_the_share_are_dropped_and_counted(lmforge_home, tmp_path):
    path = _pairs_file(tmp_path, 10, 3)
    cfg = {"model": "base", "path": str(path), "steps": 2, "max_identical": 0.3, "held_out": 0.2, "loss": "rpo"}
    _, res = run_kind(
        "dpo", cfg, lmforge_home, inputs={"model": [_model_art(H.base_model_dir())]}, log=lambda s: None
    )
    md = res.metrics
    assert md["identical_pairs_dropped"] == 3
    assert md["train_pairs"] + md["held_out_pairs"] == 7


# ------------------------------------------------------------------------------------------ on-policy
@pytest.fixture(scope="module")
def sft_policy():
    from ops.posttrain.common import load_policy

    return load_policy(H.sft_model_dir())


@pytest.mark.slow
def test_on_policy_pairs_are_sampled_from_the_policy_and_deterministic_per_seed(sft_policy):
    from ops.answers import is_correct
    from ops.posttrain.onpolicy import OnPolicyParams, on_policy_pairs

    model, tok = sft_policy
    tasks = H.task_splits()[0][:40]
    o = OnPolicyParams(samples=6, prompts_per_iteration=16, max_new_tokens=48, temperature=1.5)
    a, st = on_policy_pairs(model, tok, tasks, o, seed=3)
    b, _ = on_policy_pairs(model, tok, tasks, o, seed=3)
    c, _ = on_policy_pairs(model, tok, tasks, o, seed=4)
    assert a and a == b and a != c
    assert st["prompts"] == 16 and st["samples"] == 96 and st["pairs"] == len(a)
    gold = {t.question: t for t in tasks}
    for p in a:  # chosen verified correct, rejected not, in the task's own answer format
        t = gold[p.prompt]
        assert is_correct(p.chosen, t.answer, t.answer_format)
        assert not is_correct(p.rejected, t.answer, t.answer_format)
        assert p.chosen != p.rejected


@pytest.mark.slow
@pytest.mark.parametrize("update", ["previous", "initial"])
def test_each_iteration_trains_against_the_documented_reference(sft_policy, monkeypatch, update):
    import copy

    import torch

    import ops.posttrain.dpo as dpo_ops
    from ops.posttrain.dpo import DPOParams
    from ops.posttrain.onpolicy import OnPolicyParams, train_iterative_dpo

    model, tok = sft_policy
    policy, ref0 = copy.deepcopy(model).train(), copy.deepcopy(model).eval()
    seen = []
    real = dpo_ops.train_dpo

    def spy(policy, ref, *a, **k):
        seen.append((ref, [x.detach().clone() for x in policy.parameters()]))
        out = real(policy, ref, *a, **k)
        seen[-1] += ([x.detach().clone() for x in policy.parameters()],)
        return out

    monkeypatch.setattr(dpo_ops, "train_dpo", spy)
    o = OnPolicyParams(iterations=2, samples=6, prompts_per_iteration=16, max_new_tokens=48, temperature=1.5,
                       reference_update=update)
    p = DPOParams(steps=2, lr=1e-3, loss="rpo", batch_size=4, warmup_steps=0)
    out = train_iterative_dpo(policy, ref0, tok, H.task_splits()[0][:40], p, o, work_dir=None, log=lambda s: None)
    assert [r["iteration"] for r in out["iterations"]] == [0, 1] and len(seen) == 2
    assert seen[0][0] is ref0
    ref1, start1, _ = seen[1]
    end0 = seen[0][2]
    assert all(torch.equal(a, b) for a, b in zip(start1, end0))  # the policy continues from iteration 0
    if update == "initial":
        assert ref1 is ref0
    else:  # the reference of iteration 1 is the model iteration 0 trained, frozen
        assert ref1 is not policy and all(torch.equal(a, b) for a, b in zip(ref1.parameters(), end0))
        assert not any(x.requires_grad for x in ref1.parameters()) or not ref1.training
        assert not all(torch.equal(a, b) for a, b in zip(ref1.parameters(), ref0.parameters()))


@pytest.mark.integration
@pytest.mark.slow
def test_on_policy_stage_runs_iterations_and_stores_a_model(lmforge_home):
    tasks, _ = run_kind("reasoning_tasks", {"train": 60, "eval": 4, "difficulties": [1]}, lmforge_home)
    cfg = {
        "model": "sft", "tasks": ["tasks"], "iterations": 2, "loss": "rpo", "alpha": 1.0, "steps": 2,
        "samples": 6, "prompts_per_iteration": 16, "max_new_tokens": 48, "temperature": 1.5, "batch_size": 4,
    }
    art, res = run_kind(
        "dpo", cfg, lmforge_home, inputs={"model": [_model_art(H.sft_model_dir(), "sft")], "tasks": [tasks]},
        log=lambda s: None,
    )
    md = res.metrics
    assert md["iterations"] == 2 and md["pairs_0"] > 0 and md["pairs_1"] > 0
    assert (art.path / "model.safetensors").is_file() and (art.path / "curve.parquet").is_file()
