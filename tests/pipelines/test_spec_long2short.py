"""The long-to-short recipe (``pipelines/long2short.yaml``) as a spec: it loads on top of the default pipeline
and reuses its stages (same versions), builds its long model from sft2 on fresh verify-style problems, and
shortens that one model three ways; each bad setting of its levers is one issue naming the file, the stage and
the field, raised when the spec loads (before any compute): corrections asked of plain long-model traces, an
unknown selection mode, a reward model or a per-prompt cap that a shortest-sample selection would ignore, a merge of models with different tokenizers, a
report pair naming a model that is not evaluated or the same model twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.spec import load_spec
from tests.spec_helpers import assert_one_issue, extending_spec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
L2S = ROOT / "pipelines" / "long2short.yaml"

# a second tokenizer (a different vocabulary size on the same corpus) and a model pretrained with it
OTHER_TOKENIZER = """\
tok2:  {kind: train_tokenizer, from: corpus_dc, vocab_size: 1024}
toks2: {kind: tokenize, from: corpus_dc, tokenizer: tok2}
base2: {kind: pretrain, data: toks2, tokenizer: tok2, model: {arch: qwen2, d_model: 128, layers: 4, heads: 4, kv_heads: 2}, tokens: 1000}
"""


def _write(tmp_path: Path, stages: str) -> Path:
    return extending_spec(tmp_path, L2S, stages)


def test_the_recipe_loads_and_reuses_the_default_stages():
    l2s, default = load_spec(L2S), load_spec("tiny_r1")
    for name in ("rl_prompts", "problems", "tasks", "sft2"):
        assert l2s.stages[name].version == default.stages[name].version, name
    st = l2s.stages
    # the long model: sft2 on fresh verify-style problems (disjoint from the benchmark) mixed with plain ones
    assert st["long_problems"].config.solution_style == "verify"
    assert set(st["long_problems"].config.exclude) == {"tasks", "problems", "rl_prompts"}
    assert st["long_start"].config.model == "sft2" and st["long"].config.model == "long_start"
    assert st["long_start"].config.data == st["long"].config.data == ["long_problems", "problems"]
    assert st["l2s_rs"].config.keep == "shortest"
    assert {st[s].config.model for s in ("l2s_rs", "l2s_sft", "l2s_rl")} == {"long"}
    assert set(st["l2s_merged"].deps) == {"long", "l2s_rl"} and set(st["l2s_merged_short"].deps) == {
        "long",
        "sft2",
    }
    # every length cap on the way fits a verify trace; the eval budget is what the ledger entry measured
    assert st["l2s_rs"].config.max_response_tokens >= 192 and st["l2s_rl"].config.max_new_tokens >= 192
    assert st["l2s_eval"].config.max_think_tokens >= 160 and st["l2s_eval"].config.max_items == 300
    assert [(p.long, p.short) for p in st["l2s_report"].config.long_to_short] == [
        ("long", "l2s_sft"),
        ("long", "l2s_rl"),
        ("long", "l2s_merged"),
        ("long", "l2s_merged_short"),
    ]


@pytest.mark.parametrize(
    "stages, stage, field, words",
    [
        (
            "long_problems: {solution_style: plain}",
            "long_problems",
            "correction_rate",
            ["needs solution_style 'verify'"],
        ),
        ("l2s_rs: {keep: longest}", "l2s_rs", "keep", ["'correct', 'best_of_k' or 'shortest'", "longest"]),
        ("l2s_rs: {reward_model: rm}", "l2s_rs", "reward_model", ["keep=shortest selects by length alone"]),
        ("l2s_rs: {max_per_prompt: 2}", "l2s_rs", "max_per_prompt", ["one sample per prompt"]),
        ("l2s_rl: {rewards: [accuracy, lenght]}", "l2s_rl", "rewards", ["unknown reward 'lenght'"]),
        (
            OTHER_TOKENIZER + "l2s_merged: {models: [long, base2]}",
            "l2s_merged",
            "models",
            ["'base2' and 'long' use different tokenizers", "['tok2']", "['tokenizer']", "one vocabulary"],
        ),
        (
            "l2s_report: {long_to_short: [{long: long, short: dpo}]}",
            "l2s_report",
            "long_to_short.0.short",
            ["'dpo' is not a model evaluated by ['l2s_eval']"],
        ),
        (
            "l2s_report: {long_to_short: [{long: long, short: long}]}",
            "l2s_report",
            "long_to_short.0",
            ["long and short are both 'long'"],
        ),
    ],
)
def test_bad_long_to_short_setting_is_one_issue_naming_file_stage_and_field(
    tmp_path, stages, stage, field, words
):
    # a field the override leaves alone is reported where its value is written: in the recipe
    inherited = field.split(".")[0] not in stages
    assert_one_issue(_write(tmp_path, stages), stage, field, words, file=L2S if inherited else None)


def test_models_sharing_a_tokenizer_merge_and_a_second_import_of_it_counts_as_the_same(tmp_path):
    # sft2 and rl2 share the default's tokenizer; a copy of the tokenizer stage with the same config (and so
    # the same vocabulary) is the same source
    p = _write(
        tmp_path,
        OTHER_TOKENIZER.replace(
            "tok2:  {kind: train_tokenizer, from: corpus_dc, vocab_size: 1024}",
            "tok2:  {kind: train_tokenizer, from: corpus_dc, tasks: [tasks], vocab_size: 2048}",
        )
        + "l2s_merged: {models: [rl2, sft2, base2]}",
    )
    spec = load_spec(p)
    assert spec.stages["l2s_merged"].deps == ["rl2", "sft2", "base2"]
