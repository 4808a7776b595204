"""Acceptance tests of the ``distill`` and ``merge`` kinds (reduced scale).

Distillation: a student of at most half the teacher's parameters trained by logit KD learns the answer
format and keeps the teacher's accuracy band; a student larger than half the teacher is one clear error
before any training. Merge: the arithmetic is exact (a linear merge of a model with itself is that model;
task arithmetic with weight 1 from a base recovers the fine-tuned model) and checkpoints of different
architectures are refused with an error naming the stage and field.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import align_helpers as A
from tests import posttrain_helpers as H

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def teacher():
    return A.as_input(A.teacher_dir(), "model", "teacher")


@pytest.fixture(scope="module")
def tasks():
    return A.as_input(A.tasks_dir(), "tasks", "tasks")


def _stored(home: Path, kind: str) -> list[Path]:
    d = home / "artifacts" / kind
    return [p for p in d.iterdir() if (p / "manifest.json").is_file()] if d.is_dir() else []


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _other_arch_dir() -> Path:
    from ops.model import save_model

    out = A.ROOT / "other_arch"
    if not (out / "config.json").is_file():
        tok = H.tokenizer()
        save_model(H.tiny_model(tok, arch={**H.ARCH, "d_model": 64}), tok, out)
    return out


def _base_dir() -> Path:
    return H.base_model_dir()


@pytest.mark.slow
def test_logit_distillation_student_half_size_learns(lmforge_home, teacher, tasks):
    from pipelines.execute import run_kind

    art, res = run_kind(
        "distill",
        {
            "teacher": "teacher",
            "data": ["tasks"],
            "student": {"d_model": 64, "layers": 2, "heads": 4, "kv_heads": 2},
            "steps": 150,
            "eval_problems": 100,
            "temperature": 2.0,
            "alpha": 0.5,
        },
        lmforge_home,
        inputs={"teacher": [teacher], "data": [tasks]},
        log=lambda s: None,
    )
    m = res.metrics
    assert m["student_params"] * 2 <= m["teacher_params"]
    assert {c.name: c.passed for c in res.checks}["student_smaller"]
    import pyarrow.parquet as pq

    losses = pq.read_table(art.path / "curve.parquet").column("loss").to_pylist()
    assert losses[-1] < 0.5 * losses[0]  # the student learned from the teacher
    assert (art.path / "config.json").is_file() and (art.path / "tokenizer.json").is_file()


def test_student_larger_than_half_teacher_is_an_error_before_training(lmforge_home, teacher, tasks):
    from pipelines.execute import run_kind

    big = {"d_model": 128, "layers": 4, "heads": 4, "kv_heads": 2}  # larger than the teacher itself
    with pytest.raises(Exception, match="student"):
        run_kind(
            "distill",
            {"teacher": "teacher", "data": ["tasks"], "student": big, "steps": 1000},
            lmforge_home,
            inputs={"teacher": [teacher], "data": [tasks]},
            log=lambda s: None,
        )
    assert _stored(lmforge_home, "distill") == []


def test_linear_merge_of_a_model_with_itself_is_that_model(lmforge_home, teacher):
    from pipelines.execute import run_kind

    t2 = A.as_input(A.teacher_dir(), "model", "teacher_copy")
    art, _ = run_kind(
        "merge",
        {"models": ["teacher", "teacher_copy"], "weights": [0.3, 0.7], "eval_problems": 0},
        lmforge_home,
        inputs={"models": [teacher, t2]},
        log=lambda s: None,
    )
    a, b = _weights(art.path), _weights(A.teacher_dir())
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).abs().max() < 1e-6, k


def test_task_arithmetic_with_unit_weight_recovers_the_finetuned_model(lmforge_home, teacher):
    from pipelines.execute import run_kind

    base = A.as_input(_base_dir(), "model", "base")
    t2 = A.as_input(A.teacher_dir(), "model", "teacher_copy")
    art, _ = run_kind(
        "merge",
        {
            "models": ["teacher", "teacher_copy"],
            "weights": [0.5, 0.5],
            "base": "base",
            "method": "task_arithmetic",
            "eval_problems": 0,
        },
        lmforge_home,
        inputs={"models": [teacher, t2], "base": [base]},
        log=lambda s: None,
    )
    a, b, c = _weights(art.path), _weights(A.teacher_dir()), _weights(_base_dir())
    moved = 0
    for k in a:
        assert (a[k] - b[k]).abs().max() < 1e-5, k
        moved += int((b[k] - c[k]).abs().max() > 1e-4)
    assert moved > 0  # the base really differs from the fine-tuned model


def test_merge_of_different_architectures_is_one_clear_error(lmforge_home, teacher):
    from pipelines.execute import run_kind

    other = A.as_input(_other_arch_dir(), "model", "other")
    with pytest.raises(Exception) as ei:
        run_kind(
            "merge",
            {"models": ["teacher", "other"], "eval_problems": 0},
            lmforge_home,
            inputs={"models": [teacher, other]},
            log=lambda s: None,
        )
    msg = str(ei.value)
    assert "models" in msg and "other" in msg
    assert _stored(lmforge_home, "merge") == []


def _small_dir(name: str, other_tokenizer: bool = False) -> Path:
    """A small model (d=32, 1 layer) with the test tokenizer, or with a different BPE of its own."""
    from ops.model import save_model

    out = A.ROOT / name
    if not (out / "config.json").is_file():
        tok = H.tokenizer()
        if other_tokenizer:
            from ops.tasks import make_splits
            from ops.tokenizer import chat_prompt, chat_response, to_transformers, train_bpe

            train, _ = make_splits(300, 5, seed=5, difficulties=(1,))
            tok = to_transformers(
                train_bpe([chat_prompt(t.question) + chat_response(t.solution, t.answer) for t in train], 320)
            )
        arch = {**H.ARCH, "d_model": 32, "layers": 1, "heads": 2, "kv_heads": 1}
        save_model(H.tiny_model(tok, arch=arch), tok, out)
    return out


def test_student_init_starts_from_a_given_smaller_model_and_bad_ones_are_refused(
    lmforge_home, teacher, tasks
):
    from pipelines.execute import run_kind

    cfg = {"teacher": "teacher", "data": ["tasks"], "student_init": "small", "steps": 3, "eval_problems": 4}
    small = A.as_input(_small_dir("student_init_small"), "model", "small")
    art, res = run_kind(
        "distill",
        cfg,
        lmforge_home,
        inputs={"teacher": [teacher], "data": [tasks], "student_init": [small]},
        log=lambda s: None,
    )
    import json

    assert json.loads((art.path / "config.json").read_text())["hidden_size"] == 32  # the given model, trained
    assert res.metrics["student_params"] * 2 <= res.metrics["teacher_params"]
    n_stored = len(_stored(lmforge_home, "distill"))
    # a student_init with another tokenizer: one clear error naming the field, before training, nothing stored
    other = A.as_input(_small_dir("student_init_other_tok", other_tokenizer=True), "model", "other")
    with pytest.raises(Exception, match=r"field 'student_init': .*different tokenizer"):
        run_kind(
            "distill",
            {**cfg, "student_init": "other"},
            lmforge_home,
            inputs={"teacher": [teacher], "data": [tasks], "student_init": [other]},
            log=lambda s: None,
        )
    # the teacher itself as the student: more than half the teacher's parameters
    with pytest.raises(Exception, match=r"field 'student_init': .*more than half the teacher's"):
        run_kind(
            "distill",
            {**cfg, "student_init": "teacher"},
            lmforge_home,
            inputs={"teacher": [teacher], "data": [tasks], "student_init": [teacher]},
            log=lambda s: None,
        )
    assert len(_stored(lmforge_home, "distill")) == n_stored


def test_sft_arm_of_distillation_never_runs_the_teacher():
    """``alpha=0`` (the SFT arm of the paired KD-vs-SFT comparison) trains through the same loss without the
    teacher's forward pass, and gives the same weights as alpha=0 with the teacher run."""
    import copy

    import torch

    from ops.posttrain.common import Example
    from ops.posttrain.distill import DistillParams, train_distill
    from ops.posttrain.sft import SFTParams
    from ops.tasks import make_splits

    tok = H.tokenizer()
    train, _ = make_splits(40, 0, seed=3, difficulties=(1,))
    ex = [Example(t.id, t.question, t.response, t.answer) for t in train]
    student = H.tiny_model(tok, seed=1, arch={**H.ARCH, "d_model": 64, "layers": 1})
    teacher = H.tiny_model(tok, seed=2)
    calls = []
    # on the decoder: the KD loss runs decoder + head on the labelled positions, not the model's forward()
    teacher.get_decoder().register_forward_hook(lambda *a: calls.append(1))
    p = DistillParams("logit", 2.0, 0.0, SFTParams(steps=3, lr=1e-3, batch_size=8, seed=0, warmup_steps=0))
    s1 = copy.deepcopy(student)
    train_distill(s1, teacher, tok, ex, p, work_dir=None, log=lambda s: None)
    assert calls == []
    # with a tiny positive weight the teacher runs; the CE part of the update is the same code path
    p2 = DistillParams("logit", 2.0, 1e-12, p.sft)
    s2 = copy.deepcopy(student)
    train_distill(s2, teacher, tok, ex, p2, work_dir=None, log=lambda s: None)
    assert calls
    for a, b in zip(s1.parameters(), s2.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_student_pruned_from_the_teacher_starts_near_it_and_bad_prune_sizes_are_refused(
    lmforge_home, teacher, tasks, tmp_path
):
    """``prune:`` (Minitron): the student is the teacher with its least active residual channels and MLP
    neurons removed, then distilled. Before any training it is already far closer to the teacher than a random
    model of the same shape; it is stored as a plain checkpoint with a record of what was kept."""
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from ops.losses import kd_loss
    from ops.posttrain.common import examples_from_artifact, load_policy
    from ops.posttrain.prune import importance, prune
    from ops.posttrain.sft import SFTParams, make_batches
    from pipelines.execute import run_kind

    sizes = {"d_model": 64, "ffn": 128}
    cfg = {
        "teacher": "teacher",
        "data": ["tasks"],
        "prune": sizes,
        "steps": 20,
        "eval_problems": 10,
        "max_examples": 200,
    }
    art, res = run_kind(
        "distill", cfg, lmforge_home, inputs={"teacher": [teacher], "data": [tasks]}, log=lambda s: None
    )
    conf = json.loads((art.path / "config.json").read_text())
    assert (conf["hidden_size"], conf["intermediate_size"], conf["num_hidden_layers"]) == (64, 128, 3)
    kept = json.loads((art.path / "pruning.json").read_text())
    assert len(kept["channels"]) == 64 and kept["layers"] == [0, 1, 2] and len(kept["block_influence"]) == 3
    assert res.metrics["param_ratio"] <= 0.5 and "accuracy_after_pruning" in res.metrics
    assert res.metrics["examples"] == 200  # max_examples: the first 200 of the data
    AutoModelForCausalLM.from_pretrained(str(art.path), local_files_only=True)  # loads without lmforge

    # the pruned start vs a random init of the same shape: KL to the teacher on the distillation data
    t, tok = load_policy(A.teacher_dir())
    batch_fn, _ = make_batches(tok, examples_from_artifact("tasks", A.tasks_dir()), SFTParams(batch_size=32))
    b = batch_fn(0, 0)
    pruned, _ = prune(t, importance(t, [batch_fn(i, 0) for i in range(4)]), **sizes)
    torch.manual_seed(0)
    rand = AutoModelForCausalLM.from_config(pruned.config)

    def kl(m):
        with torch.no_grad():
            kw = {k: b[k] for k in ("input_ids", "attention_mask", "position_ids")}
            return kd_loss(m(**kw).logits, t(**kw).logits, b["labels"], temperature=1.0, alpha=1.0)[0].item()

    assert kl(pruned) < 0.5 * kl(rand)

    n_stored = len(_stored(lmforge_home, "distill"))
    # a size the teacher does not have, and a pruned student over half the teacher: one error naming the field
    for bad, msg in (({"d_model": 200}, "d_model: 200 is outside 1..96"), ({"ffn": 200}, "more than half")):
        with pytest.raises(Exception, match=rf"field 'prune': .*{msg}"):
            run_kind(
                "distill",
                {**cfg, "prune": bad},
                lmforge_home,
                inputs={"teacher": [teacher], "data": [tasks]},
                log=lambda s: None,
            )
    assert len(_stored(lmforge_home, "distill")) == n_stored
    # prune together with student_init, or a prune that removes nothing: refused when the spec is checked
    from assets.registry import KINDS

    kind = KINDS["distill"]
    both = kind.config.model_validate({**cfg, "student_init": "small"})
    assert "not both" in dict(kind.validate(both, {}))["prune"]
    empty = kind.config.model_validate({**cfg, "prune": {"calibration_batches": 2}})
    assert "at least one of" in dict(kind.validate(empty, {}))["prune"]
    with pytest.raises(Exception, match="prune.width"):
        kind.config.model_validate({**cfg, "prune": {"width": 3}})
    with pytest.raises(Exception, match="max_examples"):
        kind.config.model_validate({**cfg, "max_examples": 0})


def _other_vocabulary_dir() -> Path:
    """A model of the base model's architecture and vocabulary size whose BPE was trained on other problems:
    the same tensor shapes, a different vocabulary."""
    from ops.model import save_model

    out = A.ROOT / "other_vocabulary"
    if not (out / "config.json").is_file():
        from ops.tasks import make_splits
        from ops.tokenizer import chat_prompt, chat_response, to_transformers, train_bpe

        train, _ = make_splits(2000, 10, seed=12, difficulties=(2, 3))
        tok = to_transformers(
            train_bpe([chat_prompt(t.question) + chat_response(t.solution, t.answer) for t in train], 400)
        )
        save_model(H.tiny_model(tok), tok, out)
    return out


def test_merge_of_models_with_different_tokenizers_is_one_clear_error(lmforge_home):
    from ops.tokenizer import load_tokenizer
    from pipelines.execute import run_kind

    other_dir = _other_vocabulary_dir()
    mine, theirs = load_tokenizer(_base_dir()), load_tokenizer(other_dir)
    # same vocabulary size and architecture (the shape checks pass), different tokens
    assert len(mine) == len(theirs) and mine.get_vocab() != theirs.get_vocab()
    base = A.as_input(_base_dir(), "model", "base")
    other = A.as_input(other_dir, "model", "other")
    with pytest.raises(Exception, match=r"field 'models': 'other' .* uses a different tokenizer than 'base'"):
        run_kind(
            "merge",
            {"models": ["base", "other"], "eval_problems": 0},
            lmforge_home,
            inputs={"models": [base, other]},
            log=lambda s: None,
        )
    assert _stored(lmforge_home, "merge") == []
