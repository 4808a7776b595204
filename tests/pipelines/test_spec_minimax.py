"""An ``arch: minimax`` pretrain stage in a spec: every inconsistent layer pattern (a period that does not divide
the layer count, an unknown layer type, no softmax or no lightning layer, both or neither way of giving the
pattern, a lightning first layer, a setting MiniMax does not have) is one issue naming the file, the stage and the field, raised when the
spec loads (before any compute); consistent patterns load."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pipelines.spec import load_spec
from tests.spec_helpers import assert_one_issue

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, model: str) -> Path:
    # the default pipeline with the base model's architecture replaced: everything else in the spec is valid
    p = tmp_path / "spec.yaml"
    head = f"pipeline: p\nextends: {ROOT / 'pipelines' / 'tiny_r1.yaml'}\nstages:\n  base:\n"
    p.write_text(head + textwrap.indent(textwrap.dedent(f"model: {model}\n"), "    "))
    return p


MM = "arch: minimax, d_model: 64, heads: 4, kv_heads: 2"


@pytest.mark.parametrize(
    "model, field, words",
    [
        (f"{{{MM}, layers: 6, full_attention_every: 4}}", "model.full_attention_every", ["period of 4", "layers 6"]),
        (
            f"{{{MM}, layers: 4, layer_pattern: [full_attention, linear_attention, linear_attention]}}",
            "model.layer_pattern",
            ["period of 3", "layers 4"],
        ),
        (
            f"{{{MM}, layers: 4, layer_pattern: [linear_attention, sliding_attention]}}",
            "model.layer_pattern",
            ["unknown layer type(s) ['sliding_attention']", "linear_attention or full_attention"],
        ),
        (
            f"{{{MM}, layers: 4, layer_pattern: [linear_attention, linear_attention]}}",
            "model.layer_pattern",
            ["no full_attention layer"],
        ),
        (f"{{{MM}, layers: 4, layer_pattern: [full_attention]}}", "model.layer_pattern", ["no linear_attention"]),
        (
            f"{{{MM}, layers: 4, layer_pattern: [linear_attention, full_attention]}}",
            "model.layer_pattern",
            ["starts with linear_attention", "first layer must be full_attention"],
        ),
        (f"{{{MM}, layers: 4, full_attention_every: 1}}", "model.full_attention_every", ["no lightning-attention"]),
        (f"{{{MM}, layers: 4}}", "model.full_attention_every", ["needs its layer pattern"]),
        (
            f"{{{MM}, layers: 4, full_attention_every: 2, layer_pattern: [linear_attention, full_attention]}}",
            "model.layer_pattern",
            ["not both"],
        ),
        (f"{{{MM}, layers: 4, full_attention_every: 2, ffn: 256}}", "model.ffn", ["not a MiniMax setting"]),
        (f"{{{MM}, layers: 4, full_attention_every: 2, qkv_bias: true}}", "model.qkv_bias", ["no bias"]),
        ("{arch: qwen2, d_model: 64, layers: 2, full_attention_every: 2}", "model.full_attention_every",
         ["only for arch 'minimax'"]),
    ],
)
def test_inconsistent_minimax_pattern_is_one_issue_naming_file_stage_and_field(tmp_path, model, field, words):
    p = _write(tmp_path, model)
    assert_one_issue(p, "base", field, words)


@pytest.mark.parametrize(
    "model",
    [
        f"{{{MM}, layers: 8, full_attention_every: 4, experts: 4, top_k: 2, block_size: 32}}",
        f"{{{MM}, layers: 6, layer_pattern: [full_attention, linear_attention, linear_attention]}}",
        "{arch: minimax, full_attention_every: 2}",  # the planner sizes it from the stage's tokens
    ],
)
def test_consistent_minimax_patterns_load(tmp_path, model):
    spec = load_spec(_write(tmp_path, model))
    assert spec.stages["base"].config.model.arch == "minimax"
