"""The ``grpo`` stage's DAPO levers in a spec: bad values of ``clip_eps_high``, ``dynamic_sampling`` and
``max_refill`` are one issue naming file, stage and field, before any compute; good values load."""

from __future__ import annotations

from pathlib import Path

import pytest

from assets.registry import load_kinds
from pipelines.spec import load_spec
from tests.spec_helpers import assert_one_issue

load_kinds()
ROOT = Path(__file__).resolve().parents[2]
HEAD = f"pipeline: p\nextends: {ROOT / 'pipelines' / 'tiny_r1.yaml'}\nstages:\n  rl1: "

pytestmark = pytest.mark.unit


def _spec(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(HEAD + body + "\n")
    return p


@pytest.mark.parametrize(
    "body, field, words",
    [
        ("{clip_eps_high: 0, updates_per_batch: 2}", "clip_eps_high", ["greater than 0"]),
        ("{clip_eps_high: 0.1, updates_per_batch: 2}", "clip_eps_high", ["below clip_eps 0.2", ">= clip_eps"]),
        ("{clip_eps: 0.3, clip_eps_high: 0.28, updates_per_batch: 2}", "clip_eps_high", ["below clip_eps 0.3"]),
        ("{clip_eps_high: 0.28}", "clip_eps_high", ["no effect with updates_per_batch 1", "updates_per_batch >= 2"]),
        ("{dynamic_sampling: 2}", "dynamic_sampling", ["valid boolean"]),
        ("{dynamic_sampling: true, max_refill: 0}", "max_refill", ["greater than or equal to 1"]),
        ("{max_refill: 3}", "max_refill", ["set `dynamic_sampling: true`"]),
    ],
)
def test_bad_dapo_lever_is_one_issue_naming_file_stage_and_field(tmp_path, body, field, words):
    assert_one_issue(_spec(tmp_path, body), "rl1", field, words)


def test_dapo_levers_load_with_their_fields(tmp_path):
    body = "{clip_eps_high: 0.28, updates_per_batch: 2, dynamic_sampling: true, max_refill: 1}"
    c = load_spec(_spec(tmp_path, body)).stages["rl1"].config
    assert (c.clip_eps_high, c.updates_per_batch, c.dynamic_sampling, c.max_refill) == (0.28, 2, True, 1)
    d = load_spec(_spec(tmp_path, "{}")).stages["rl1"].config
    assert (d.clip_eps_high, d.dynamic_sampling) == (None, False)
