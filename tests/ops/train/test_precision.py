"""``precision: bf16`` on the CPU: bf16 autocast with the attention kept in fp32 (``ops.train.core.autocast_ctx``),
the override put back afterwards; SFT trains under it and its loss falls; the stage field reaches the run's
``TrainConfig`` for pretrain, sft and distill; an unknown value is one spec issue naming file, stage and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import posttrain_helpers as H
from tests.spec_helpers import assert_one_issue

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]


def _sdpa():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS["sdpa"]


def test_cpu_bf16_runs_projections_in_bf16_and_attention_in_fp32_then_restores_it():
    import torch

    from ops.train.core import autocast_ctx

    model = H.tiny_model(H.tokenizer())
    before = _sdpa()
    seen: dict = {}
    attn = model.model.layers[0].self_attn
    hooks = [
        attn.q_proj.register_forward_hook(lambda m, i, o: seen.setdefault("q_proj", o.dtype) and None),
        attn.o_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("attention_out", a[0].dtype) and None),
    ]
    x = torch.randint(0, 50, (2, 12))
    with autocast_ctx(torch.device("cpu"), "bf16"):
        assert _sdpa() is not before
        logits = model(input_ids=x).logits
    for h in hooks:
        h.remove()
    assert seen == {"q_proj": torch.bfloat16, "attention_out": torch.float32}
    assert logits.dtype == torch.bfloat16
    assert _sdpa() is before  # put back on exit
    with pytest.raises(RuntimeError, match="boom"), autocast_ctx(torch.device("cpu"), "bf16"):
        raise RuntimeError("boom")
    assert _sdpa() is before  # also when the block raises
    # fp32 and auto on the CPU change nothing
    for p in ("fp32", "auto"):
        with autocast_ctx(torch.device("cpu"), p):
            assert _sdpa() is before and not torch.is_autocast_enabled("cpu")


def test_bf16_sft_trains_and_its_loss_falls_close_to_fp32():
    import torch

    from ops.posttrain.common import Example
    from ops.posttrain.sft import SFTParams, train_sft

    tok = H.tokenizer()
    train, _ = H.task_splits()
    ex = [Example(t.id, t.question, t.response, t.answer) for t in train[:400]]
    losses = {}
    for prec in ("fp32", "bf16"):
        torch.manual_seed(0)
        p = SFTParams(steps=30, lr=3e-3, batch_size=16, warmup_steps=3, precision=prec)
        model, _, info = train_sft(H.tiny_model(tok), tok, ex, p, work_dir=None, log=lambda s: None)
        losses[prec] = info["losses"]
        assert all(w.dtype == torch.float32 for w in model.parameters())  # fp32 weights either way
    bf = losses["bf16"]
    assert sum(bf[-5:]) / 5 < sum(bf[:5]) / 5 - 0.5
    assert bf[-1] == pytest.approx(losses["fp32"][-1], rel=0.05)


# ---------------------------------------------------------------- the spec field
HEAD = f"pipeline: p\nextends: {ROOT / 'pipelines' / 'tiny_r1.yaml'}\nstages:\n"


@pytest.mark.parametrize("stage", ["base", "cold_sft", "student"])
def test_unknown_precision_is_one_issue_naming_file_stage_and_field(tmp_path, stage):
    p = tmp_path / "spec.yaml"
    p.write_text(HEAD + f"  {stage}: {{precision: fp16}}\n")
    assert_one_issue(p, stage, "precision", ["fp16", "'bf16'"])


def test_precision_field_is_declared_once_and_documented():
    from assets.registry import load_kinds

    kinds = load_kinds()
    for name in ("pretrain", "sft", "distill"):
        fld = kinds[name].config.model_fields["precision"]
        assert fld.default == "auto" and "bf16" in fld.description and "fp32" in fld.description
        assert kinds[name].config.model_validate({**_refs(name), "precision": "bf16"}).precision == "bf16"


def _refs(kind: str) -> dict:
    return {"pretrain": {"data": "t", "tokenizer": "k"}, "sft": {"model": "m", "data": ["d"]},
            "distill": {"teacher": "t", "data": ["d"]}}[kind]
