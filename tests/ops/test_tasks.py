"""Task generator (exactness, determinism, disjoint splits), answer parsing, user Parquet loading."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ops import tasks as T
from ops.solutions import WAIT_TEXT

pytestmark = pytest.mark.unit


def _replay(solution: str) -> int:
    """Re-derive the answer from the worked solution's equations, checking each one."""
    val = None
    for eq in filter(None, (s.strip() for s in solution.split("."))):
        m = re.fullmatch(r"(\d+)([-+*/])(\d+)=(\d+)", eq)
        assert m, eq
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        if val is not None:
            assert a == val, "each step starts from the previous result"
        exact = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]
        assert exact == c, eq
        val = c
    return val


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4])
def test_generated_answers_are_exact_and_solutions_replay(difficulty):
    lo, hi, _, max_value, allowed = T.DIFFICULTY[difficulty]
    for t in T.generate_tasks(200, seed=3, difficulties=[difficulty]):
        assert int(t.answer) == _replay(t.solution)
        symbols = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
        assert set(re.findall(r"[-+*/]", t.solution)) <= {symbols[o] for o in allowed}
        assert 0 <= int(t.answer) <= max_value
        assert t.question.startswith(t.question.split()[0] + " has ")
        assert t.difficulty == difficulty
        assert T.format_ok(t.response) and T.is_correct(t.response, t.answer)


def test_generation_is_deterministic_and_splits_disjoint():
    a1, e1 = T.make_splits(500, 100, seed=7, difficulties=[1, 2])
    a2, e2 = T.make_splits(500, 100, seed=7, difficulties=[1, 2])
    assert a1 == a2 and e1 == e2
    assert not {t.question for t in a1} & {t.question for t in e1}
    assert len({t.id for t in a1}) == 500
    a3, _ = T.make_splits(500, 100, seed=8, difficulties=[1, 2])
    assert a3 != a1
    assert {t.difficulty for t in a1} == {1, 2}


def test_unknown_difficulty_is_an_error():
    with pytest.raises(ValueError, match="difficulty"):
        T.generate_tasks(3, seed=0, difficulties=[9])


@pytest.mark.parametrize(
    "text,want",
    [
        ("<think>x</think><answer>42</answer>", "42"),
        ("<think>x</think><answer> 1,200 </answer><|im_end|>", "1200"),
        ("<answer>1</answer> then <answer>2</answer>", "2"),
        ("<answer>3.0</answer>", "3"),
        ("<answer>6/4</answer>", "3/2"),
        ("the answer is 42", None),
        ("<answer></answer>", None),
        ("<think>42</think><answer>", None),
        ("", None),
    ],
)
def test_extract_answer(text, want):
    assert T.extract_answer(text) == want


@pytest.mark.parametrize(
    "text,ok",
    [
        ("<think>3+4=7.</think><answer>7</answer>", True),
        ("<think>3+4=7.</think><answer>7</answer><|im_end|>", True),
        ("<think></think><answer>7</answer>", True),
        ("<think>a</think><answer></answer>", False),
        ("<answer>7</answer>", False),
        ("<think>a</think>", False),
        ("junk<think>a</think><answer>7</answer>", False),
        ("<think>a</think><answer>7</answer>junk", False),
        ("<think>a<think>b</think><answer>7</answer>", False),
        ("<think>a</think><answer>7</answer><answer>8</answer>", False),
    ],
)
def test_format_ok(text, ok):
    assert T.format_ok(text) is ok


def test_is_correct():
    assert T.is_correct("<think>x</think><answer>1,000</answer>", "1000")
    assert T.is_correct("42", "42.0")
    assert not T.is_correct("<think>42</think><answer>41</answer>", "42")
    assert not T.is_correct("<think>42</think>", "42")
    assert not T.is_correct(None, "42")


def test_load_user_parquet_gsm8k_style(tmp_path):
    p = tmp_path / "gsm.parquet"
    pq.write_table(
        pa.table({"question": ["What is 2+3?", "Twice 21?"], "answer": ["2+3=5 #### 5", "#### 42"]}), p
    )
    ts = T.load_task_parquet(p)
    assert [t.answer for t in ts] == ["5", "42"]
    assert ts[0].solution == "2+3=5"
    assert ts[0].id.startswith("user-")
    q = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"question": ["a?"], "answer": pa.array([7], pa.int64()), "id": ["x1"]}), q)
    assert T.load_task_parquet(q)[0].answer == "7" and T.load_task_parquet(q)[0].id == "x1"


def test_bad_user_parquet_errors_name_file_and_column(tmp_path):
    missing = tmp_path / "missing_col.parquet"
    pq.write_table(pa.table({"question": ["a?"]}), missing)
    with pytest.raises(T.TaskFileError, match=r"missing_col\.parquet: missing column 'answer'"):
        T.load_task_parquet(missing)
    typed = tmp_path / "typed.parquet"
    pq.write_table(pa.table({"question": [1], "answer": [1.5]}), typed)
    with pytest.raises(T.TaskFileError, match=r"typed\.parquet: column 'question' has type int64"):
        T.load_task_parquet(typed)
    assert "column 'answer' has type double" in " ".join(T.check_task_parquet(typed))
    assert "file not found" in T.check_task_parquet(tmp_path / "nope.parquet")[0]
    notpq = tmp_path / "x.parquet"
    notpq.write_text("hello")
    assert "not a readable Parquet" in T.check_task_parquet(notpq)[0]
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"question": ["  "], "answer": ["1"]}), empty)
    with pytest.raises(T.TaskFileError, match="row 0"):
        T.load_task_parquet(empty)


def test_task_table_roundtrip(tmp_path):
    ts = T.generate_tasks(10, seed=1)
    T.write_tasks(ts, tmp_path / "train.parquet")
    assert pq.read_schema(tmp_path / "train.parquet").equals(T.TASK_SCHEMA)
    assert T.read_tasks(tmp_path / "train.parquet") == ts


def test_non_numeric_answers_are_refused_naming_file_column_and_rows(tmp_path):
    """Answers are compared as exact numbers: a word, nan, inf or scientific notation could never be scored
    correct, so a file holding them is refused with the rows named instead of being loaded."""
    bad = tmp_path / "words.parquet"
    answers = ["6", "six", "nan", "3 #### inf", "-2.5", "1e5", "$1,200", "7/2"]
    pq.write_table(pa.table({"question": [f"q{i}?" for i in range(len(answers))], "answer": answers}), bad)
    [msg] = T.check_task_parquet(bad)
    assert msg.startswith(f"{bad}: column 'answer': 4 row(s) are not numbers (")
    assert "row 1: 'six', row 2: 'nan', row 3: '3 #### inf', row 5: '1e5'" in msg
    with pytest.raises(T.TaskFileError, match=r"words\.parquet: column 'answer': 4 row\(s\) are not numbers"):
        T.load_task_parquet(bad)
    many = tmp_path / "many.parquet"
    pq.write_table(pa.table({"question": [f"q{i}" for i in range(9)], "answer": ["x"] * 9}), many)
    assert "row 4: 'x' and 4 more" in T.check_task_parquet(many)[0]
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"question": ["a", "b", "c"], "answer": ["1", " ", None]}), empty)
    assert T.check_task_parquet(empty) == [f"{empty}: column 'answer': 2 empty row(s) (0-based rows [1, 2])"]
    good = tmp_path / "good.parquet"
    ok = ["6", "-2.5", "$1,200", "7/2", "10.", "work #### 42"]
    pq.write_table(pa.table({"question": [f"q{i}?" for i in range(len(ok))], "answer": ok}), good)
    assert T.check_task_parquet(good) == []
    assert [t.answer for t in T.load_task_parquet(good)] == ["6", "-5/2", "1200", "7/2", "10", "42"]


# ---- solution styles -------------------------------------------------------------------------------------
_STEP = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


def _replay_verify(solution: str) -> tuple[int, int, int]:
    """Re-derive the answer from a verify-style solution: every kept step is exact and starts from the previous
    result, its check inverts it, and a slipped step is followed by WAIT_TEXT and the same step done right.
    Returns (answer, kept steps, corrections)."""
    val, steps, fixes = None, 0, 0
    wait = WAIT_TEXT.strip()
    for part in filter(None, (s.strip() for s in solution.split("."))):
        if part.startswith(wait + ", "):
            part = part[len(wait) + 2 :]
            fixes += 1
        m = re.fullmatch(r"(\d+)([-+*/])(\d+)=(\d+)(?:, check (\d+)([-+*/])(\d+)=(\d+))?", part)
        assert m, part
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        if val is not None:
            assert a == val, f"step starts from the previous result: {part}"
        if m[5] is None:  # the slipped step: wrong result, and the next part must be its correction
            assert _OPS[op](a, b) != c, part
            continue
        assert _OPS[op](a, b) == c, part
        ca, cop, cb, cc = int(m[5]), m[6], int(m[7]), int(m[8])
        assert (ca, cb, cc) == (c, b, a) and _OPS[cop](ca, cb) == cc, f"check inverts the step: {part}"
        val, steps = c, steps + 1
    return val, steps, fixes


def test_plain_style_is_the_unchanged_default():
    import hashlib

    tr, ev = T.make_splits(200, 50, 3, [1, 2, 3, 4])
    digest = hashlib.sha256(repr([(t.id, t.question, t.solution, t.answer) for t in tr + ev]).encode())
    # the generator's problems and plain solutions, byte for byte as before solution styles existed
    assert digest.hexdigest() == "f03d9ef36dbeb63712090047089f701ce8b82dd1cc5afb25840ed259d658b1f3"
    assert tr == T.make_splits(200, 50, 3, [1, 2, 3, 4], solution_style="plain")[0]


@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
def test_verify_style_replays_and_corrects_at_the_rate(rate):
    plain = T.generate_tasks(300, seed=5, difficulties=[3, 4])
    ver = T.generate_tasks(300, seed=5, difficulties=[3, 4], solution_style="verify", correction_rate=rate)
    assert [t.question for t in ver] == [t.question for t in plain], "same problems in every style"
    steps = fixes = 0
    for p, v in zip(plain, ver):
        ans, n, f = _replay_verify(v.solution)
        assert str(ans) == v.answer == p.answer
        assert n == len(p.solution.split(". "))
        assert T.format_ok(v.response) and T.is_correct(v.response, v.answer)
        steps, fixes = steps + n, fixes + f
    if rate == 0.0:
        assert fixes == 0
    elif rate == 1.0:
        assert fixes == steps
    else:
        assert abs(fixes / steps - rate) < 0.05, (fixes, steps)


def test_verify_example_reads_as_documented():
    t = T.generate_tasks(50, seed=0, difficulties=[3], solution_style="verify", correction_rate=0.5)
    fixed = next(x.solution for x in t if "Wait" in x.solution)
    m = re.search(r"(\d+[-+*/]\d+)=(\d+)\. Wait, (\d+[-+*/]\d+)=(\d+), check ", fixed)
    assert m and m[1] == m[3] and m[2] != m[4], fixed


def _replay_recheck(solution: str) -> tuple[int, int, int, int]:
    """Re-derive the answer from a recheck-style solution: every step starts from the previous result; a step
    followed by WAIT_TEXT is re-checked by true sub-steps computed from its operands alone, ending with
    the same step restated with its true result, which the chain goes on from. Returns (answer, steps,
    corrections, confirmations)."""
    from ops.solutions import recheck_text

    val, steps, fixes, confirms = None, 0, 0, 0
    step = r"(\d+)([-+*/])(\d+)=(\d+)"
    wait = WAIT_TEXT.strip() + ", "
    parts = [s.strip() for s in solution.split(".") if s.strip()]
    for i, part in enumerate(parts):
        if part.startswith(wait):
            continue  # checked with the step before it
        a, op, b, c = (int(x) if x.isdigit() else x for x in re.fullmatch(step, part).groups())
        if val is not None:
            assert a == val, f"step starts from the previous result: {part}"
        steps += 1
        recheck = parts[i + 1][len(wait):] if i + 1 < len(parts) and parts[i + 1].startswith(wait) else None
        if recheck is None:
            assert _OPS[op](a, b) == c, part
            val = c
            continue
        *subs, last = recheck.split(", ")
        restated = re.fullmatch("(?:so )?" + step, last)
        assert restated and (int(restated[1]), restated[2], int(restated[3])) == (a, op, b), recheck
        true = int(restated[4])
        assert _OPS[op](a, b) == true, recheck
        for sub in subs:
            x, sop, y, z = re.fullmatch(step, sub).groups()
            assert _OPS[sop](int(x), int(y)) == int(z), f"sub-step is exact: {recheck}"
        if subs:
            assert int(re.fullmatch(step, subs[-1])[4]) == true, f"the sub-steps end at the result: {recheck}"
        # the re-check depends on the step's operands only, never on the (possibly slipped) result written
        assert recheck == recheck_text(f"{a}{op}{b}={true}"), recheck
        fixes, confirms = fixes + (c != true), confirms + (c == true)
        val = true
    return val, steps, fixes, confirms


@pytest.mark.parametrize("correction, confirm", [(0.0, 0.0), (0.2, 0.3), (1.0, 0.0), (0.0, 1.0)])
def test_recheck_style_confirms_and_corrects_at_the_rates(correction, confirm):
    plain = T.generate_tasks(300, seed=5, difficulties=[2, 3, 4])
    rec = T.generate_tasks(300, seed=5, difficulties=[2, 3, 4], solution_style="recheck",
                           correction_rate=correction, confirm_rate=confirm)
    assert [t.question for t in rec] == [t.question for t in plain], "same problems in every style"
    steps = fixes = confirms = 0
    for p, r in zip(plain, rec):
        ans, n, f, c = _replay_recheck(r.solution)
        assert str(ans) == r.answer == p.answer
        assert n == len(p.solution.split(". "))
        assert T.format_ok(r.response) and T.is_correct(r.response, r.answer)
        assert r.solution.count(WAIT_TEXT + ", ") == f + c
        steps, fixes, confirms = steps + n, fixes + f, confirms + c
    assert abs(fixes / steps - correction) < 0.05, (fixes, steps)
    # a confirmation is drawn among the steps that were not slipped
    assert abs(confirms / steps - (1 - correction) * confirm) < 0.05, (confirms, steps)
    if correction == confirm == 0.0:
        assert rec == plain


@pytest.mark.parametrize(
    "eq, text",
    [
        ("523*7=3661", "500*7=3500, 23*7=161, 3500+161=3661, so 523*7=3661"),
        ("56*8=448", "50*8=400, 6*8=48, 400+48=448, so 56*8=448"),
        ("4567+89=4656", "4567+80=4647, 4647+9=4656, so 4567+89=4656"),
        ("99-45=54", "99-40=59, 59-5=54, so 99-45=54"),
        ("196/4=49", "160/4=40, 36/4=9, 40+9=49, so 196/4=49"),
        ("77-4=73", "77-4=73"),  # nothing to split: the step written again
        ("720+60=780", "720+60=780"),
        ("7*7=49", "7*7=49"),
    ],
)
def test_recheck_text_reads_as_documented(eq, text):
    from ops.solutions import recheck_text

    assert recheck_text(eq) == text


@pytest.mark.parametrize(
    "kw, match",
    [
        (
            {"solution_style": "verbose"},
            r"solution_style: unknown style 'verbose'; choose one of \['plain', 'verify', 'recheck', 'review', 'longhand'\]",
        ),
        ({"solution_style": "recheck", "confirm_rate": 2.0}, r"confirm_rate: must be within \[0, 1\], got 2.0"),
        ({"solution_style": "verify", "confirm_rate": 0.2}, r"confirm_rate: 0.2 needs solution_style 'recheck'"),
        ({"confirm_rate": 0.2}, r"confirm_rate: 0.2 needs solution_style 'recheck'"),
        ({"solution_style": "verify", "correction_rate": 1.5}, r"correction_rate: must be within \[0, 1\], got 1.5"),
        ({"solution_style": "verify", "correction_rate": -0.1}, r"correction_rate: must be within"),
        ({"correction_rate": 0.2}, r"correction_rate: 0.2 needs solution_style 'verify'"),
        ({"solution_style": "review", "correction_rate": 1.2}, r"correction_rate: must be within \[0, 1\], got 1.2"),
        ({"solution_style": "review", "confirm_rate": -0.5}, r"confirm_rate: must be within \[0, 1\], got -0.5"),
    ],
)
def test_bad_solution_style_or_rate_is_a_clear_error(kw, match):
    with pytest.raises(ValueError, match=match):
        T.generate_tasks(3, seed=0, difficulties=[3], **kw)


@pytest.mark.parametrize(
    "style",
    [{"solution_style": "verify"}, {"solution_style": "recheck", "confirm_rate": 0.3},
     {"solution_style": "review", "confirm_rate": 0.3}],
    ids=lambda s: s["solution_style"],
)
def test_trace_wait_tokens_are_the_tokens_evaluation_forces(style):
    """The Wait a verify, recheck or review trace contains is encoded exactly as ``encode(WAIT_TEXT)``, the token ids
    the budget-forcing loop forces (SpecialIds.wait), while the bare word "Wait" after a full stop is not."""
    from ops.eval.budget import SpecialIds
    from ops.tokenizer import chat_prompt, chat_response, to_transformers, train_bpe

    tasks = T.generate_tasks(400, seed=1, difficulties=[3, 4], correction_rate=0.3, **style)
    tok = to_transformers(
        train_bpe([chat_prompt(t.question) + chat_response(t.solution, t.answer) for t in tasks], vocab_size=400)
    )
    forced = SpecialIds.from_tokenizer(tok, WAIT_TEXT).wait
    assert forced == tuple(tok.encode(WAIT_TEXT, add_special_tokens=False))

    with_wait = [t for t in tasks if "Wait" in t.solution]
    assert with_wait
    for t in with_wait[:50]:
        ids = tok.encode(chat_response(t.solution, t.answer), add_special_tokens=False)
        n_text = t.solution.count(WAIT_TEXT + ",")
        n_ids = sum(1 for i in range(len(ids)) if tuple(ids[i : i + len(forced)]) == forced)
        assert n_text == n_ids >= 1, t.solution
    # evaluate's default wait_text "Wait" would force other tokens than the trained ones
    assert tuple(tok.encode("Wait", add_special_tokens=False)) != forced


# ---- review style ------------------------------------------------------------------------------------------
_SENTENCE_OP = [(r"gets (\d+) more|finds (\d+) more|buys (\d+) more", "+"), (r"gives away (\d+)|loses (\d+)|sells (\d+)", "-"),
                (r"has (\d+) times as many|multiplies the \w+ by (\d+)", "*"), (r"into (\d+) equal|among (\d+) friends", "/")]


def _question_ops(question: str) -> str:
    """The operations a question states, read from its sentences: ``"23 +5 *3 -7"``."""
    sentences = question.split(". ")
    out = [re.match(r"\w+ has (\d+) ", sentences[0])[1]]
    for s in sentences[1:]:
        for pat, op in _SENTENCE_OP:
            m = re.search(pat, s)
            if m:
                out.append(op + next(g for g in m.groups() if g))
                break
    return " ".join(out)


def _exact_chain(text: str) -> list[str]:
    eqs = re.findall(r"\d+[-+*/]\d+=\d+", text)
    for e in eqs:
        a, op, b, c = re.fullmatch(r"(\d+)([-+*/])(\d+)=(\d+)", e).groups()
        assert _OPS[op](int(a), int(b)) == int(c), f"every equation is exact: {e} in {text}"
    return eqs


@pytest.mark.parametrize("correction, confirm", [(0.0, 0.0), (0.3, 0.4), (1.0, 0.0), (0.0, 1.0)])
def test_review_style_rereads_the_question_and_ends_at_the_answer(correction, confirm):
    plain = T.generate_tasks(400, seed=5, difficulties=[2, 3])
    rev = T.generate_tasks(400, seed=5, difficulties=[2, 3], solution_style="review",
                           correction_rate=correction, confirm_rate=confirm)
    assert [t.question for t in rev] == [t.question for t in plain], "same problems in every style"
    fixes = confirms = 0
    for p, r in zip(plain, rev):
        assert r.answer == p.answer and T.format_ok(r.response) and T.is_correct(r.response, r.answer)
        if WAIT_TEXT not in r.solution:
            assert r.solution == p.solution
            continue
        first, review = r.solution.split(WAIT_TEXT + ", ")
        ops, again = review.split(": ")
        assert ops == _question_ops(r.question), "the review's op list is the question's operations in order"
        assert again == p.solution, "the chain after the review is the right one"
        assert _exact_chain(again)[-1].split("=")[1] == r.answer, "the reviewed chain ends at the gold answer"
        written = _exact_chain(first)
        assert written and written[0].split(re.search(r"[-+*/]", written[0])[0])[0] == ops.split()[0]
        fixes, confirms = fixes + (first != p.solution), confirms + (first == p.solution)
    n = len(rev)
    assert abs(fixes / n - correction) < 0.06, (fixes, n)  # every multi-step chain admits a reading error
    assert abs(confirms / n - (1 - correction) * confirm) < 0.06, (confirms, n)
    if correction == confirm == 0.0:
        assert rev == plain


def test_review_errors_are_reading_errors_of_every_kind():
    """A corrected first chain differs from the right one by a left-out step, a misread operand or operation, or
    by stopping early, and each kind occurs."""
    from ops.solutions import review_ops

    plain = T.generate_tasks(300, seed=2, difficulties=[3])
    rev = T.generate_tasks(300, seed=2, difficulties=[3], solution_style="review", correction_rate=1.0)
    kinds = set()
    for p, r in zip(plain, rev):
        first = _exact_chain(r.solution.split(WAIT_TEXT)[0])
        right = _exact_chain(p.solution)
        wrong_ops = review_ops(first).split()[1:]
        right_ops = review_ops(right).split()[1:]
        if wrong_ops == right_ops[: len(wrong_ops)]:
            kinds.add("stop")
        elif len(wrong_ops) == len(right_ops) - 1:
            kinds.add("skip")
        else:
            diff = [(w, g) for w, g in zip(wrong_ops, right_ops) if w != g]
            assert len(diff) == 1, (first, right)
            kinds.add("operation" if diff[0][0][0] != diff[0][1][0] else "operand")
    assert kinds == {"stop", "skip", "operand", "operation"}


def test_review_masks_the_wait_and_the_wrong_part_only():
    from ops.solutions import review_masked_spans

    text = "<think>23+5=28. 28-7=21. Wait, 23 +5 *3 -7: 23+5=28. 28*3=84. 84-7=77.</think><answer>77</answer>"
    assert [text[a:b] for a, b in review_masked_spans(text)] == ["28-7=21", WAIT_TEXT]
    stopped = "23+5=28. Wait, 23 +5 *3: 23+5=28. 28*3=84."
    assert [stopped[a:b] for a, b in review_masked_spans(stopped)] == [WAIT_TEXT]
    confirmed = "23+5=28. 28*3=84. Wait, 23 +5 *3: 23+5=28. 28*3=84."
    assert [confirmed[a:b] for a, b in review_masked_spans(confirmed)] == [WAIT_TEXT]
    assert review_masked_spans("23+5=28. 28*3=84.") == []
