"""The ``ppo`` stage kind's inputs and metadata: a KL coefficient <= 0 and lever values that contradict each
other are spec issues naming file, stage and field; a reward model whose tokenizer differs from the policy's
is refused before any model is loaded (also by ``rejection_sample``, which scores samples with one); and a run
against a reward model shows the model's score and the rule-based accuracy per step as two curves, with a
verdict on reward hacking."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from assets.registry import load_kinds
from pipelines.execute import run_kind
from pipelines.spec import load_spec
from resources.store import StoredArtifact
from tests import posttrain_helpers as H
from tests.spec_helpers import assert_one_issue

load_kinds()
ROOT = Path(__file__).resolve().parents[2]
HEAD = f"pipeline: p\nextends: {ROOT / 'pipelines' / 'tiny_r1.yaml'}\nstages:\n  rl2: "


def _spec(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(HEAD + body + "\n")
    return p


def _art(path: Path, stage: str, produces: str = "model", kind: str = "sft") -> StoredArtifact:
    return StoredArtifact(kind, f"v-{stage}", path, {"stage": stage, "produces": produces})


def _stored(home: Path, kind: str) -> list:
    d = home / "artifacts" / kind
    return [p for p in d.iterdir() if (p / "manifest.json").is_file()] if d.is_dir() else []


# ------------------------------------------------------------------------------------------ spec validation
@pytest.mark.unit
@pytest.mark.parametrize(
    "body, field, words",
    [
        ("{kl_coef: 0}", "kl_coef", ["greater than 0"]),
        ("{kl_coef: -0.1}", "kl_coef", ["greater than 0", "-0.1"]),
        ("{kl_target: 0}", "kl_target", ["greater than 0"]),
        ("{kl_horizon: 0}", "kl_horizon", ["greater than or equal to 1"]),
        ("{rm_clip: 0}", "rm_clip", ["greater than 0"]),
        ("{rm_weight: -1}", "rm_weight", ["greater than 0"]),
        ("{value_warmup_steps: -1}", "value_warmup_steps", ["greater than or equal to 0"]),
        ("{steps: 10, value_warmup_steps: 10}", "value_warmup_steps", ["none of the 10 steps", "fewer than"]),
        ("{reward_model: null, rm_clip: 2.0}", "rm_clip", ["set `reward_model`"]),
    ],
)
def test_bad_ppo_field_is_one_issue_naming_file_stage_and_field(tmp_path, body, field, words):
    p = _spec(tmp_path, body)
    assert_one_issue(p, "rl2", field, words)


@pytest.mark.unit
def test_levers_load_with_their_fields(tmp_path):
    body = "{kl_target: 0.05, kl_horizon: 640, rm_clip: 3.0, rm_weight: 0.5, reward_whiten: true, value_warmup_steps: 2}"
    c = load_spec(_spec(tmp_path, body)).stages["rl2"].config
    assert (c.kl_target, c.kl_horizon, c.rm_clip, c.rm_weight, c.reward_whiten, c.value_warmup_steps) == (
        0.05, 640, 3.0, 0.5, True, 2
    )


# ------------------------------------------------------------------------------------------ tokenizers
def _model_with_other_tokenizer(tmp_path: Path) -> Path:
    """A likelihood reward model built on a tokenizer trained on other text (a smaller vocabulary)."""
    from ops.model import save_model
    from ops.tokenizer import chat_prompt, load_tokenizer, save_tokenizer, train_bpe

    texts = [chat_prompt(f"What is {i} times {i}?") + f"{i * i}" for i in range(300)]
    save_tokenizer(train_bpe(texts, vocab_size=300), tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    out = tmp_path / "other_rm"
    save_model(H.tiny_model(tok), tok, out)
    (out / "reward.json").write_text(json.dumps({"head": "likelihood", "scale": 1.0, "center": 0.0}))
    return out


def _likelihood_rm(src: Path, out: Path) -> Path:
    shutil.copytree(src, out)
    (out / "reward.json").write_text(json.dumps({"head": "likelihood", "scale": 10.0, "center": -1.0}))
    return out


@pytest.mark.unit
def test_tokenizer_difference_names_vocabulary_merges_and_template(tmp_path):
    from ops.tokenizer import tokenizer_difference

    base = H.base_model_dir()
    assert tokenizer_difference(base, base) is None
    assert tokenizer_difference(base, _likelihood_rm(base, tmp_path / "same")) is None
    assert "vocabulary sizes differ" in tokenizer_difference(base, _model_with_other_tokenizer(tmp_path))
    merged = tmp_path / "merges"
    shutil.copytree(base, merged)
    t = json.loads((merged / "tokenizer.json").read_text())
    m = t["model"]["merges"]
    m[3], m[4] = m[4], m[3]  # the same vocabulary, a merge tie broken the other way
    (merged / "tokenizer.json").write_text(json.dumps(t))
    assert "BPE merges differ (first at merge 3" in tokenizer_difference(base, merged)
    tmpl = tmp_path / "template"
    shutil.copytree(base, tmpl)
    cfg = json.loads((tmpl / "tokenizer_config.json").read_text())
    cfg["chat_template"] = cfg["chat_template"].replace("<|im_start|>", "<|im_start|> ")
    (tmpl / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert tokenizer_difference(base, tmpl) == "chat templates differ"


class _Loaded(Exception):
    pass


@pytest.fixture
def tasks_art(lmforge_home):
    art, _ = run_kind("reasoning_tasks", {"train": 40, "eval": 4, "difficulties": [1]}, lmforge_home, log=lambda s: None)
    return art


@pytest.mark.unit
@pytest.mark.parametrize("kind", ["ppo", "rejection_sample"])
def test_reward_model_with_another_tokenizer_is_refused_before_any_model_loads(
    kind, lmforge_home, tasks_art, tmp_path, monkeypatch
):
    import importlib

    import ops.posttrain.rm as rm_mod

    mod = importlib.import_module(f"assets.{kind}")

    def no_load(*a, **k):
        raise _Loaded

    monkeypatch.setattr(mod, "load_policy", no_load)
    monkeypatch.setattr(rm_mod, "load_reward_model", no_load)
    base = H.base_model_dir()
    other = _model_with_other_tokenizer(tmp_path)
    cfg = {"model": "sft2", "prompts": ["tasks"], "reward_model": "rm"}
    cfg |= {"rewards": ["accuracy"], "steps": 1} if kind == "ppo" else {"keep": "best_of_k"}
    ins = {"model": [_art(base, "sft2")], "prompts": [tasks_art], "reward_model": [_art(other, "rm", kind="reward_model")]}
    from assets.posttrain import PostTrainError

    with pytest.raises(PostTrainError) as ei:
        run_kind(kind, cfg, lmforge_home, inputs=ins, log=lambda s: None)
    msg = str(ei.value)
    assert "field 'reward_model'" in msg and "reward model 'rm'" in msg and str(other) in msg
    assert "stage 'sft2'" in msg and str(base) in msg and "vocabulary sizes differ (400 vs 292)" in msg
    assert not _stored(lmforge_home, kind)
    # the same reward model on the policy's own tokenizer passes the check and goes on to load the models
    ins["reward_model"] = [_art(_likelihood_rm(base, tmp_path / "rm_same"), "rm", kind="reward_model")]
    with pytest.raises(_Loaded):
        run_kind(kind, cfg, lmforge_home, inputs=ins, log=lambda s: None)


# ------------------------------------------------------------------------------------------ the two curves
@pytest.mark.slow
def test_ppo_metadata_shows_rm_score_and_rule_accuracy_per_step(lmforge_home, tasks_art, tmp_path):
    import pyarrow.parquet as pq

    sft = H.sft_model_dir()
    rm = _likelihood_rm(sft, tmp_path / "rm")
    art, res = run_kind(
        "ppo",
        {
            "model": "sft2", "prompts": ["tasks"], "reward_model": "rm", "rewards": ["format"], "steps": 4,
            "prompts_per_step": 16, "minibatch_size": 16, "epochs": 1, "eval_problems": 0, "max_new_tokens": 40,
            "kl_target": 0.01, "kl_horizon": 64, "rm_clip": 5.0,
        },
        lmforge_home,
        inputs={"model": [_art(sft, "sft2")], "prompts": [tasks_art], "reward_model": [_art(rm, "rm", kind="reward_model")]},
        log=lambda s: None,
    )
    assert "rewards_plot" in res.metadata and (art.path / "rewards.png").is_file()
    curves = pq.read_table(art.path / "rewards.parquet").to_pydict()
    assert curves["step"] == [1.0, 2.0, 3.0, 4.0]
    assert len(curves["reward_model"]) == 4 and all(0.0 <= a <= 1.0 for a in curves["rule_accuracy"])
    rows = [r for r in res.metadata["history"].records if r["step"] > 0]
    assert [r["rule_accuracy"] for r in rows] == pytest.approx(curves["rule_accuracy"], abs=1e-4)
    m = res.metrics
    for k in ("rm_score_first_quarter", "rm_score_last_quarter", "rule_accuracy_first_quarter",
              "rule_accuracy_last_quarter", "kl_coef_last"):
        assert k in m
    assert m["kl_coef_last"] != 0.05  # the adaptive controller moved the coefficient
    from ops.rl.summary import reward_hacking

    checks = {c.name: c.passed for c in res.checks}
    assert checks["no_reward_hacking"] == (reward_hacking(rows) is None)
