"""The ``optim`` block of the training kinds in a spec: a bad value is one issue naming the file, the stage,
the field inside the block and its line; pretraining's optimiser fields written at the top level (where that
kind has always accepted them) still load, into ``optim``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pipelines.spec import SpecError, load_spec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
# the default pipeline with one stage's optim block overridden: everything else in the spec is valid
HEAD = f"""\
pipeline: p
extends: {ROOT / "pipelines" / "tiny_r1.yaml"}
stages:
  rl1:
"""


def _write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(HEAD + textwrap.indent(textwrap.dedent(body), "    "))
    return p


def _issues(path: Path) -> list:
    with pytest.raises(SpecError) as ei:
        load_spec(path)
    return ei.value.issues


@pytest.mark.parametrize(
    "block, field, line, words",
    [
        ("optim: {schedule: triangle}", "optim.schedule", 5, ["'cosine', 'wsd', 'linear' or 'constant'", "triangle"]),
        ("optim:\n  weight_decay: -0.1", "optim.weight_decay", 6, ["greater than or equal to 0", "-0.1"]),
        ("optim:\n  betas: [0.9, 1.5]", "optim.betas", 6, ["beta2 = 1.5 is outside [0, 1)"]),
        ("optim:\n  grad_clip: 1\n  warmup: 3", "optim.warmup", 7, ["unknown field in 'optim'", "grad_clip"]),
        ("optim: {min_lr_ratio: 2}", "optim.min_lr_ratio", 5, ["less than or equal to 1"]),
        ("optim: wsd", "optim", 5, ["valid dictionary"]),
    ],
)
def test_bad_optim_value_is_one_issue_naming_file_stage_field_and_line(tmp_path, block, field, line, words):
    p = _write(tmp_path, block)
    (issue,) = _issues(p)
    assert (issue.file, issue.stage, issue.field, issue.line) == (str(p), "rl1", field, line)
    msg = str(SpecError([issue]))
    assert f"{p}:{line}" in msg and "stage 'rl1'" in msg and f"field '{field}'" in msg
    for w in words:
        assert w in msg


@pytest.mark.parametrize("stage", ["base", "cold_sft", "rl1", "rl2", "dpo", "student"])
def test_a_good_block_loads_on_every_training_stage_of_the_default_pipeline(tmp_path, stage):
    p = tmp_path / "spec.yaml"
    p.write_text(HEAD.replace("rl1:", f"{stage}:") + "    optim: {schedule: wsd, weight_decay: 0.05, betas: [0.9, 0.98]}\n")
    st = load_spec(p).stages[stage]
    assert (st.config.optim.schedule, st.config.optim.weight_decay, st.config.optim.betas) == ("wsd", 0.05, (0.9, 0.98))


def test_pretrain_top_level_optimiser_fields_load_into_optim(tmp_path):
    from assets.pretrain import PretrainConfig

    c = PretrainConfig.model_validate(
        {"data": "t", "tokenizer": "k", "schedule": "wsd", "weight_decay": 0.0, "betas": [0.9, 0.99]}
    )
    assert (c.optim.schedule, c.optim.weight_decay, c.optim.betas) == ("wsd", 0.0, (0.9, 0.99))
    assert c.optim.min_lr_ratio == 0.1  # left out: pretraining's default
    same = PretrainConfig.model_validate(
        {"data": "t", "tokenizer": "k", "optim": {"schedule": "wsd", "weight_decay": 0.0, "betas": [0.9, 0.99]}}
    )
    assert c == same
    with pytest.raises(ValueError, match="schedule is given both at the top level and in optim"):
        PretrainConfig.model_validate({"data": "t", "tokenizer": "k", "schedule": "wsd", "optim": {"schedule": "linear"}})


def test_default_cold_start_holds_its_peak_lr_until_the_last_fifth():
    """The default ``cold_sft`` runs the wsd schedule through the sft kind's own mapping (stage config ->
    ``SFTParams`` -> ``TrainConfig``): the peak LR lasts to 80% of the steps, then decays to the floor. With
    cosine its accuracy swung with the base's draw (experiments/LEDGER.md, cold start over base draws)."""
    from assets.posttrain import params
    from ops.posttrain.sft import SFTParams
    from ops.train.optim import train_config
    from ops.train.schedule import lr_at

    cfg = train_config(params(SFTParams, load_spec(ROOT / "pipelines" / "tiny_r1.yaml").stages["cold_sft"].config))
    knobs = {k: getattr(cfg, k) for k in ("lr", "steps", "warmup_steps", "schedule", "min_lr_ratio", "decay_frac")}
    lrs = [lr_at(i, **knobs) for i in range(cfg.steps)]
    assert cfg.schedule == "wsd"
    assert lrs[cfg.warmup_steps : int(0.8 * cfg.steps)] == [cfg.lr] * (int(0.8 * cfg.steps) - cfg.warmup_steps)
    assert lrs[-1] == pytest.approx(cfg.min_lr_ratio * cfg.lr)
