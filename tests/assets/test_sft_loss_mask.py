"""``sft`` with ``loss_mask: wait_slips``: the stage leaves what Wait-style traces deliberately get wrong out of
the loss (the masked tokens are exactly masked SFT's), and refuses data with nothing to mask or packed rows."""

from __future__ import annotations

import pytest

from assets.registry import load_kinds
from pipelines.execute import run_kind
from resources.store import StoredArtifact
from tests import posttrain_helpers as H

load_kinds()
pytestmark = pytest.mark.unit

SFT = {"model": "base", "data": ["tasks"], "steps": 2, "eval_problems": 0, "max_len": 256, "loss_mask": "wait_slips"}


def _base():
    return StoredArtifact("pretrain", "v-base", H.base_model_dir(), {"stage": "base", "produces": "model"})


def _tasks(home, **style):
    art, _ = run_kind("reasoning_tasks", {"train": 60, "eval": 4, "difficulties": [1], **style}, home)
    return art


def test_masked_sft_leaves_out_the_slips_and_the_wait(lmforge_home):
    from ops.posttrain.common import Example, load_policy
    from ops.posttrain.masked_sft import masked_units
    from ops.posttrain.sft import SFTParams
    from ops.solutions import wait_masked_spans
    from ops.tasks import read_tasks

    tasks = _tasks(lmforge_home, solution_style="longhand", correction_rate=0.5, confirm_rate=0.5)
    art, res = run_kind("sft", SFT, lmforge_home, inputs={"model": [_base()], "data": [tasks]})
    rows = read_tasks(tasks.path / "train.parquet")
    examples = [Example(t.id, t.question, t.response, t.answer) for t in rows]
    _, tok = load_policy(H.base_model_dir())
    _, _, _, stats = masked_units(
        tok, examples, [wait_masked_spans(e.response) for e in examples], SFTParams(max_len=256)
    )
    assert res.metrics["masked_tokens"] == stats["masked_tokens"] > 0
    assert (art.path / "model.safetensors").is_file()


def test_nothing_to_mask_is_one_error_naming_stage_and_field_and_stores_nothing(lmforge_home):
    from assets.posttrain import PostTrainError

    plain = _tasks(lmforge_home)
    with pytest.raises(PostTrainError, match=r"stage 'sft', field 'loss_mask': wait_slips, but no training example"):
        run_kind("sft", SFT, lmforge_home, inputs={"model": [_base()], "data": [plain]})
    assert not (lmforge_home / "artifacts" / "sft").exists() or not any((lmforge_home / "artifacts" / "sft").iterdir())


def test_a_mask_on_packed_rows_is_refused_naming_the_field():
    from pydantic import ValidationError

    from assets.sft import SFT as KIND

    assert KIND.validate(KIND.config.model_validate({**SFT, "pack": True}), {}) == [
        ("loss_mask", "wait_slips masks one example per row; set pack: false")
    ]
    assert KIND.validate(KIND.config.model_validate(SFT), {}) == []
    with pytest.raises(ValidationError, match="loss_mask"):
        KIND.config.model_validate({**SFT, "loss_mask": "slips"})
