"""Rule rewards: values on hand-written responses, group-relative length penalty, pluggability, errors."""

from __future__ import annotations

import pytest

from ops import rewards as R

pytestmark = pytest.mark.unit

GOOD = "<think>3+4=7.</think><answer>7</answer><|im_end|>"
WRONG = "<think>3+4=8.</think><answer>8</answer>"
NOFMT = "the answer is 7"


def _batch(comps, answers, lengths=None, g=1):
    return R.RewardBatch(comps, answers, lengths or [len(c) for c in comps], g)


def test_accuracy_and_format():
    b = _batch([GOOD, WRONG, NOFMT, "<answer>7</answer>"], ["7"] * 4)
    total, comps = R.score(R.parse_specs(["accuracy", "format"]), b)
    assert comps["accuracy"] == [1.0, 0.0, 0.0, 1.0]
    assert comps["format"] == [1.0, 1.0, 0.0, 0.0]
    assert total == [2.0, 1.0, 0.0, 1.0]


def test_weights_apply():
    total, _ = R.score(
        R.parse_specs([{"accuracy": {"weight": 2.0}}, {"format": {"weight": 0.5}}]), _batch([GOOD], ["7"])
    )
    assert total == [2.5]


def test_language_share_counts_target_script_words():
    assert R.language_share("add three and four", "en") == 1.0
    assert R.language_share("add три and четыре", "en") == 0.5
    assert R.language_share("3+4=7", "en") == 1.0  # no words: nothing inconsistent
    assert R.language_share("加 three", "zh") == 0.5
    _, comps = R.score(
        R.parse_specs([{"language": {"target": "en"}}]),
        _batch(["<think>plus три</think><answer>7</answer>"], ["7"]),
    )
    assert comps["language"] == [0.5]


def test_length_penalty_within_groups():
    comps = [GOOD, GOOD, WRONG, WRONG]
    b = _batch(comps, ["7"] * 4, lengths=[10, 20, 10, 20], g=2)
    _, c = R.score(R.parse_specs(["length"]), b)
    # group 1 (both correct): shortest +0.5, longest -0.5; group 2 (both wrong): min(0, lambda)
    assert c["length"] == [0.5, -0.5, 0.0, -0.5]
    flat = _batch([GOOD, WRONG], ["7", "7"], lengths=[5, 5], g=2)
    assert R.score(R.parse_specs(["length"]), flat)[1]["length"] == [0.0, 0.0]


def test_unknown_reward_is_one_clear_error():
    with pytest.raises(R.UnknownReward, match="unknown reward 'acuracy'.*accuracy"):
        R.parse_specs(["acuracy"])


def test_unknown_reward_parameter_is_an_error():
    with pytest.raises(ValueError, match="no parameter"):
        R.parse_specs([{"accuracy": {"target": "en"}}])


@pytest.mark.parametrize(
    "items, where",
    [
        ([{"accuracy": [1]}], "0.accuracy"),
        (["format", {"accuracy": {"weight": "high"}}], "1.accuracy.weight"),
        (["accuracy", {"language": {"target": "tlh"}}], "1.language.target"),
    ],
)
def test_a_bad_parameter_value_is_an_error_saying_where(items, where):
    with pytest.raises(R.RewardParamError) as ei:
        R.parse_specs(items)
    assert ei.value.where == where and str(ei.value).startswith(f"{where}: ")


def test_language_targets_are_checked_by_one_function():
    R.check_language("en")
    with pytest.raises(ValueError, match="unknown language 'tlh'; known: ar, de"):
        R.language_share("qapla", "tlh")
    assert set(R.LANGUAGES) >= {"en", "zh", "ru"}


def test_custom_reward_plugs_in_and_is_versioned():
    name = "test_short_answer"
    if name not in R.REWARDS:

        @R.register_reward(name, "v7", "1 for answers under 3 characters")
        def _short(batch):
            return [1.0 if len(c) < 3 else 0.0 for c in batch.completions]

    specs = R.parse_specs([name, "accuracy"])
    assert R.reward_versions(specs) == {name: "v7", "accuracy": "v1"}
    assert R.score(specs, _batch(["ab", GOOD], ["7", "7"]))[1][name] == [1.0, 0.0]
