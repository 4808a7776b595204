"""Answer formats (ops.answers): extraction, normalisation and comparison on adversarial strings, shared by
the rewards, rejection sampling's verifier and evaluation's scoring."""

from __future__ import annotations

import pytest

from ops import answers as A
from ops.rewards import RewardBatch, parse_specs, score, with_answer_format


@pytest.mark.parametrize(
    "a,b",
    [
        ("1,234", "1234"),
        ("$5", "5"),
        ("-$5", "-5"),
        ("50%", "50"),
        ("3/4", "0.75"),
        ("\\frac{3}{4}", "0.75"),
        ("\\dfrac{3}{4}", "3/4"),
        ("-\\frac{1}{2}", "-0.5"),
        ("12.0", "12"),
        ("12.", "12"),
        ("$\\frac12$", "0.5"),
        ("1{,}000", "1000"),
        ("-7", "-7.00"),
    ],
)
def test_numbers_normalise_to_one_value(a, b):
    assert A.to_number(a) == A.to_number(b) is not None
    assert A.normalize(a) == A.normalize(b)
    assert A.answers_match(a, b)


@pytest.mark.parametrize("s", ["six", "nan", "inf", "1e5", "1,2", "", "\\frac{1}{0}", "3/0"])
def test_non_numbers_are_not_numbers(s):
    assert A.to_number(s) is None


def test_text_answers_compare_as_text():
    assert A.answers_match("\\left(1, 2\\right)", "(1, 2)")
    assert A.answers_match("Yes", "yes")
    assert not A.answers_match("(1,2)", "(12)")
    assert not A.answers_match("12", "-12")


@pytest.mark.parametrize(
    "text,want",
    [
        ("so \\boxed{\\frac{1}{2}}", "1/2"),  # nested braces
        ("first \\boxed{3} then \\boxed{4}", "4"),  # several boxed answers: the last wins
        ("\\boxed{-5} because x", "-5"),  # negative, text after the answer
        ("\\boxed{1,234}.", "1234"),
        ("$\\boxed{50\\%}$", "50"),
        ("\\fbox{7}", "7"),
        ("\\boxed{\\text{(A)}}", "\\text{(a)}"),
        ("\\boxed{}", None),
        ("\\boxed{12", None),  # unclosed
        ("the answer is 12", None),
    ],
)
def test_boxed_extraction(text, want):
    assert A.extract(text, "boxed") == want


@pytest.mark.parametrize(
    "text,want,ok",
    [
        ("3+4=7\n#### 7", "7", True),
        ("#### 72 apples in total", "72", False),  # text after the answer: parsed, not well-formed
        ("#### -3", "-3", True),
        ("#### $1,234", "1234", True),
        ("#### 5\n#### 6", "6", False),  # the last #### wins; two are not well-formed
        ("#### 12.0<|im_end|>", "12", True),
        ("reasoning only, 42", None, False),
        ("####", None, False),
    ],
)
def test_gsm8k_extraction_and_shape(text, want, ok):
    assert A.extract(text, "gsm8k") == want
    assert A.well_formed(text, "gsm8k") is ok


@pytest.mark.parametrize(
    "text,want",
    [
        ("3 apples and 4 pears make 7.", "7"),
        ("she owes -12 dollars", "-12"),
        ("costs $1,234 and 50%", "50"),
        ("half is \\frac{1}{2}", "1/2"),
        ("3/4 of them", "3/4"),
        ("no digits", None),
    ],
)
def test_last_number(text, want):
    assert A.extract(text, "last_number") == want


def test_exact_is_exact():
    assert A.is_correct("  Paris \n", "Paris", "exact")
    assert not A.is_correct("paris", "Paris", "exact")
    assert not A.is_correct("12.0", "12", "exact")
    assert A.is_correct("New  York<|im_end|>", "New York", "exact")


def test_think_answer_is_the_default_and_unchanged():
    t = "<think>2+2=4</think><answer>4</answer><|im_end|>"
    assert A.extract(t) == A.extract(t, "think_answer") == "4"
    assert A.well_formed(t) and A.is_correct(t, "4")
    assert A.extract("<answer>1</answer> then <answer>2</answer>") == "2"
    assert A.extract("the answer is 4") is None
    # a boxed answer is not an answer in think_answer, and a tagged one is not boxed
    assert not A.is_correct("\\boxed{4}", "4")
    assert not A.is_correct(t, "4", "boxed")


def test_render_then_extract_roundtrips_in_every_format():
    for name in A.FORMATS:
        r = A.get_format(name).render("3+4=7.", "7")
        assert A.is_correct(r, "7", name), (name, r)
        assert A.well_formed(r, name), (name, r)
    # a MATH solution already ending in its boxed answer is kept as written
    sol = "So $x=\\boxed{\\frac{1}{2}}$."
    assert A.get_format("boxed").render(sol, "1/2") == sol


def test_unknown_format_is_one_clear_error():
    with pytest.raises(A.UnknownFormat, match="unknown answer format 'boxd'; known formats: boxed, exact"):
        A.get_format("boxd")


def test_prompt_templates():
    assert A.render_prompt("Q: {question}\nA:", "1+1?") == "Q: 1+1?\nA:"
    with pytest.raises(ValueError, match="no \\{question\\}"):
        A.check_template("no placeholder")
    with pytest.raises(ValueError, match="not usable"):
        A.check_template("{question} {other}")


def test_rewards_score_in_the_answer_format():
    comps = [
        "x \\boxed{\\frac{1}{2}}", "\\boxed{3} or \\boxed{0.5}", "0.5<|im_end|>", "<think>a</think><answer>0.5</answer>",
    ]
    batch = RewardBatch(comps, ["0.5"] * 4, [1, 2, 3, 4], group_size=4)
    specs = with_answer_format(parse_specs(["accuracy", "format"]), "boxed")
    _, c = score(specs, batch)
    assert c["accuracy"] == [1.0, 1.0, 0.0, 0.0]
    assert c["format"] == [1.0, 0.0, 0.0, 0.0]  # two boxed answers, or none: not well-formed
    # the default stays lmforge's own format, and a format set on the reward wins over the stage's
    _, d = score(parse_specs(["accuracy", "format"]), batch)
    assert d["accuracy"] == [0.0, 0.0, 0.0, 1.0] and d["format"] == [0.0, 0.0, 0.0, 1.0]
    kept = with_answer_format(parse_specs([{"accuracy": {"answer_format": "last_number"}}]), "boxed")
    assert kept[0].params == {"answer_format": "last_number"}


def test_reward_with_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown answer format 'hash'"):
        parse_specs([{"accuracy": {"answer_format": "hash"}}])
