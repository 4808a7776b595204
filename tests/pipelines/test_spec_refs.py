"""A list of upstream stages written as ``[]`` where the stage needs one is one issue naming the file, the stage
and the field when the spec loads, instead of a stage that does nothing or (partitioned) vanishes from the
plan; every kind's required list of stages is covered, and the lists that may be empty say why."""

from __future__ import annotations

from pathlib import Path

import pytest

from assets.registry import load_kinds, ref_fields
from tests.spec_helpers import assert_one_issue, extending_spec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "pipelines" / "tiny_r1.yaml"

# (kind, python field) -> (a stage of the default pipeline of that kind, spec key, words of the issue)
REQUIRED_LISTS = {
    ("decontaminate", "against"): ("corpus_dc", "against", ["is empty", "producing tasks"]),
    ("sft", "data"): ("cold_sft", "data", ["is empty", "tasks or sft_data or rollouts"]),
    ("grpo", "prompts"): ("rl1", "prompts", ["is empty", "producing tasks"]),
    ("rejection_sample", "prompts"): ("rs", "prompts", ["is empty", "producing tasks"]),
    ("ppo", "prompts"): ("rl2", "prompts", ["is empty", "producing tasks"]),
    ("distill", "data"): ("student", "data", ["is empty"]),
    ("evaluate", "models"): ("eval", "models", ["is empty", "producing model"]),
    ("report", "from_"): ("report", "from", ["is empty", "producing eval"]),
    ("merge", "models"): ("merged", "models", ["at least two models, got 0"]),
    ("reward_model", "pairs"): ("rm", "pairs", ["no preference pairs", "`path`"]),
}
# required lists that may be empty, and why
MAY_BE_EMPTY = {("evaluate", "tasks"): "a corpus alone is an evaluation (bits per byte); none at all is refused"}


@pytest.mark.parametrize("key", sorted(REQUIRED_LISTS), ids=lambda k: f"{k[0]}-{k[1]}")
def test_empty_list_of_stages_is_one_issue(tmp_path, key):
    stage, spec_key, words = REQUIRED_LISTS[key]
    p = extending_spec(tmp_path, TINY, f"{stage}: {{{spec_key}: []}}")
    assert_one_issue(p, stage, spec_key, words)


def test_every_required_list_of_stages_is_covered():
    required = {
        (name, f)
        for name, kind in load_kinds().items()
        if kind.config.__module__.startswith("assets.")  # the product's kinds, not a test's toy kinds
        for f, (_types, many, _key) in ref_fields(kind.config).items()
        if many and kind.config.model_fields[f].is_required()
    }
    assert required == set(REQUIRED_LISTS) | set(MAY_BE_EMPTY)


def test_evaluate_with_no_tasks_and_no_corpus_is_refused(tmp_path):
    p = extending_spec(tmp_path, TINY, "eval: {tasks: [], corpus: null}")
    assert_one_issue(p, "eval", "tasks", ["nothing to evaluate"])
