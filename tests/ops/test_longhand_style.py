"""The ``longhand`` solution style (``ops.solutions``): the long-hand pass after a Wait is exact digit by digit and
ends at the gold answer, masked SFT leaves out only the Wait and the first chain's slipped part, and the s1
study's audit (``experiments/s1_longhand.py``) counts a pass's exact atoms and right steps."""

from __future__ import annotations

import random
import re

import pytest

from experiments.s1_longhand import longhand_tasks
from ops.solutions import WAIT_TEXT, _atoms, longhand_masked_spans, longhand_step

pytestmark = pytest.mark.unit


def _atom_holds(atom: str) -> bool:
    lhs, rhs = atom.split(" ")[0].split("=")
    if "/" in lhs:
        n, d = map(int, lhs.split("/"))
        q, r = map(int, rhs.split("r"))
        return divmod(n, d) == (q, r)
    return eval(lhs) == int(rhs)  # only digits and + - * here


@pytest.mark.parametrize(
    "a, op, b, want",
    [
        (1234, "*", 7, "1234*7: 4*7=28 8, 3*7+2=23 38, 2*7+2=16 638, 1*7+1=8 8638, so 1234*7=8638"),
        (1529, "+", 93, "1529+93: 9+3=12 2, 2+9+1=12 22, 5+1=6 1622, so 1529+93=1622"),
        (4567, "-", 89, "4567-89: 17-9=8 8, 16-8-1=7 78, 5-0-1=4 4478, so 4567-89=4478"),
        (1000, "-", 1, "1000-1: 10-1=9 9, 10-0-1=9 99, 10-0-1=9 999, 1-0-1=0 999, so 1000-1=999"),
        (714, "/", 7, "714/7: 7/7=1r0 1, 1/7=0r1 10, 14/7=2r0 102, so 714/7=102"),
        (196, "/", 4, "196/4: 19/4=4r3 4, 36/4=9r0 49, so 196/4=49"),
    ],
)
def test_a_step_in_long_hand(a, op, b, want):
    assert longhand_step(a, op, b) == want


def test_every_atom_is_exact_and_the_last_partial_is_the_result():
    rng = random.Random(0)
    for _ in range(3000):
        op = rng.choice("+-*/")
        b = rng.randint(2, 9) if op in "*/" else rng.randint(1, 99)
        a = {"+": rng.randint(1, 9999), "-": rng.randint(b + 1, 9999), "*": rng.randint(1, 1111)}.get(op)
        a = a if a is not None else b * rng.randint(1, 1111)
        atoms = _atoms(a, op, b)
        assert all(_atom_holds(x) for x in atoms), atoms
        assert int(atoms[-1].split(" ")[-1]) == eval(f"{a}{op.replace('/', '//')}{b}")


def test_traces_end_at_the_answer_and_mask_only_the_wait_and_the_slip():
    from ops.tasks import make_splits

    train, _ = make_splits(600, 0, seed=3, difficulties=[2, 3])
    rewritten = longhand_tasks(train, seed=1, correction_rate=0.5, confirm_rate=1.0)
    assert [t.answer for t in rewritten] == [t.answer for t in train]
    slipped = confirmed = 0
    for plain, t in zip(train, rewritten):
        assert t.solution.count(WAIT_TEXT) == 1, "at these rates every trace has its long-hand pass"
        first, again = t.solution.split(WAIT_TEXT + ", ")
        results = re.findall(r"so (\d+[-+*/]\d+=\d+)", again)
        assert results == [e for e in plain.solution.rstrip(".").split(". ")], "the pass is the right chain"
        spans = [t.solution[a:b] for a, b in longhand_masked_spans(t.solution)]
        assert spans[-1] == WAIT_TEXT
        if first == plain.solution:
            confirmed += 1
            assert spans == [WAIT_TEXT]
        else:
            slipped += 1
            # the masked equations are exactly the first chain's steps from its slip on
            kept = first.rstrip(".").split(". ")[: len(first.rstrip(".").split(". ")) - len(spans) + 1]
            assert all(e in results for e in kept) and spans[0] not in results
    assert slipped > 200 and confirmed > 100
    assert longhand_masked_spans(train[0].solution) == [], "a plain trace has nothing to mask"


def test_audit_counts_exact_atoms_and_right_steps_against_the_own_chain():
    from experiments.s1_longhand import audit

    right = longhand_step(38, "+", 55)  # 38+55: 8+5=13 3, 3+5+1=9 93, so 38+55=93
    wrong = "93*3: 3*3=9 9, 9*3=28 289, so 93*3=289"  # one atom wrong, so the step is wrong
    completions = {
        "i1/greedy": "<think>38+55=93. 93*3=279.</think><answer>279</answer>",
        "i1/wait": f"<think>38+55=93. 93*3=279.{WAIT_TEXT}, {right}. {wrong}.</think><answer>289</answer>",
        "i2/greedy": "<think>38+55=94.</think><answer>94</answer>",
        "i2/wait": "<think>38+55=94.</think><answer>94</answer>",  # no pass: nothing to count
    }
    got = audit(completions)
    assert got["atoms_exact"] == 0.75 and got["atoms_exact_by_op"] == {"*": 0.5, "+": 1.0}
    assert (got["longhand_steps"], got["longhand_steps_right"]) == (2, 0.5)
    assert (got["own_steps"], got["own_steps_right"]) == (3, round(2 / 3, 4))


def test_wait_masked_spans_reads_each_wait_style_from_its_text():
    from ops.solutions import wait_masked_spans

    cases = {
        "23+5=28. 28-7=21. Wait, 23 +5 *3 -7: 23+5=28. 28*3=84. 84-7=77.": ["28-7=21", WAIT_TEXT],  # review
        "17*3=41. Wait, 10*3=30, 7*3=21, 30+21=51, so 17*3=51.": ["41"],  # recheck: the slipped result
        "17*3=41. Wait, 17*3=51, check 51/3=17.": ["41"],  # verify
        f"18*2=86.{WAIT_TEXT}, {longhand_step(18, '*', 2)}.": ["18*2=86", WAIT_TEXT],  # longhand
        "12+5=17. 17*3=51.": [],  # plain
    }
    for text, want in cases.items():
        assert [text[a:b] for a, b in wait_masked_spans(text)] == want, text


def test_generated_longhand_tasks_pass_the_style_check_and_keep_their_answers():
    from ops.solutions import check_solution_style
    from ops.tasks import generate_tasks

    check_solution_style("longhand", 0.3, 0.3)
    plain = generate_tasks(200, seed=4, difficulties=[2, 3])
    long = generate_tasks(200, seed=4, difficulties=[2, 3], solution_style="longhand", correction_rate=0.3,
                          confirm_rate=0.3)  # fmt: skip
    assert [t.answer for t in long] == [t.answer for t in plain]
    assert 0.3 < sum(WAIT_TEXT in t.solution for t in long) / len(long) < 0.75
    for t in long:
        if WAIT_TEXT in t.solution:
            assert re.findall(r"so \d+[-+*/]\d+=(\d+)", t.solution)[-1] == t.answer
