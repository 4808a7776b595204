"""Solution styles: how a generated problem's worked solution is written.

Key design choice: a style only rewrites the chain of equations the generator produced (``"12+5=17"``...), so
every style has the same problems and answers, and a style's random choices come from their own stream.
``plain`` is the chain itself; ``verify`` checks each step and corrects slipped steps after :data:`WAIT_TEXT`,
the text the evaluator forces for a Wait extension (s1), so a model trained on these traces is forced exactly
the tokens it saw. ``recheck`` writes the plain chain and, after some steps, :data:`WAIT_TEXT` and a re-check of
the step by a different decomposition (smaller sub-steps) that either confirms the result or corrects a slipped
one: what a forced Wait at the end of thinking should make a model do, re-check the last result and keep the
re-checked value. ``review`` targets reading rather than arithmetic: the chain (in some traces with a step
skipped or misread, or cut short), then :data:`WAIT_TEXT`, a compact re-read of the problem's operations in
order (``23 +5 *3 -7``) and the chain written again from that list, which confirms a right chain (the same
equations) or corrects a wrong one. ``longhand`` checks by easier steps: the chain (in some traces with a
slipped result), then :data:`WAIT_TEXT` and the chain worked again digit by digit, each atom a one-digit fact
with a carry, so the pass is more reliable than the one-shot steps it checks.
"""

from __future__ import annotations

import random
import re

# How a worked solution is written. ``plain``: the chain of equations. ``verify``: every step is followed by a
# check (the inverse operation gives back the previous value), and with probability ``correction_rate`` a step
# is first written with a slipped result, then WAIT_TEXT, a comma and the corrected step. The text the evaluator
# forces for a Wait extension must be WAIT_TEXT (evaluate's ``wait_text``), so the forced tokens are exactly the
# ones the model saw: the byte-level pre-tokenizer attaches the space to the word, so " Wait" inside a trace
# encodes as ``encode(" Wait")``, while the bare "Wait" is other tokens.
#
# ``recheck``: the plain chain; a step drawn at ``correction_rate`` is first written with a slipped result, and a
# correct step drawn at ``confirm_rate`` is left as it is; both are followed by WAIT_TEXT, a comma and
# :func:`recheck_text` of the step, which ends by restating the step with its true result. Confirmations matter:
# with corrections alone, every Wait in training follows a wrong result, so a Wait forced after a right answer
# would teach "change it".
#
# ``review``: rates are per trace, not per step. A trace drawn at ``correction_rate`` has a first chain with one
# reading error (:data:`REVIEW_ERRORS`), then WAIT_TEXT, the op list and the right chain; one drawn at
# ``confirm_rate`` (among the others) has the right chain twice. The wrong part of a first chain is meant to be
# left out of the loss (:func:`review_masked_spans`), as is WAIT_TEXT, so the model's own stop is still the
# plain chain and only a forced Wait starts a review.
#
# ``longhand``: rates per trace, as ``review``. A trace drawn at ``correction_rate`` has a first chain with one
# result slipped by a digit and the chain carried on from it; one drawn at ``confirm_rate`` (of the others) the
# right chain; both then WAIT_TEXT, a comma and every step again in long hand (:func:`longhand_step`), each from
# the previous long-hand result with the first chain's operation and operand. Masked as ``review`` is
# (:func:`wait_masked_spans`), so only a forced Wait starts a long-hand pass.
SOLUTION_STYLES = ("plain", "verify", "recheck", "review", "longhand")
WAIT_STYLES = ("verify", "recheck", "review", "longhand")
CONFIRM_STYLES = ("recheck", "review", "longhand")
# the reading errors a review trace's first chain may carry, with their draw weights: a middle step left out
# (most of a cold start's first errors at difficulty 3), a step's operand or operation misread, the last step(s)
# left out (the chain stopped early)
REVIEW_ERRORS = {"skip": 4, "operand": 2, "operation": 1, "stop": 1}
WAIT_TEXT = " Wait"
_INVERSE = {"+": "-", "-": "+", "*": "/", "/": "*"}
_EQ = re.compile(r"^(\d+)([-+*/])(\d+)=(\d+)$")


def plain_solution(eqs: list[str]) -> str:
    """``"12+5=17. 17*3=51."``: the equations, each closed by a full stop."""
    return " ".join(e + "." for e in eqs)


def _check(eq: str) -> str:
    """The check of a correct step: its result under the inverse operation gives back the first operand
    (``17*3=51`` -> ``51/3=17``); exact for all four operations because every step's result is an integer."""
    a, op, b, c = _EQ.match(eq).groups()
    return f"{c}{_INVERSE[op]}{b}={a}"


def _slip(rng: random.Random, value: int) -> int:
    """A plausible arithmetic slip: one digit of ``value`` changed (never the leading digit to 0)."""
    digits = list(str(value))
    i = rng.randrange(len(digits))
    choices = [d for d in "0123456789" if d != digits[i] and not (i == 0 and d == "0" and len(digits) > 1)]
    digits[i] = rng.choice(choices)
    return int("".join(digits))


def verify_solution(eqs: list[str], rng: random.Random, correction_rate: float) -> str:
    """The ``verify`` style of a chain: ``"17*3=51, check 51/3=17."`` per step; a step drawn at
    ``correction_rate`` reads ``"17*3=41. Wait, 17*3=51, check 51/3=17."``. The answer is unchanged: the
    trace's last result is still the final value."""
    parts = []
    for eq in eqs:
        lhs, c = eq.split("=")
        step = f"{eq}, check {_check(eq)}."
        if rng.random() < correction_rate:
            step = f"{lhs}={_slip(rng, int(c))}.{WAIT_TEXT}, {step}"
        parts.append(step)
    return " ".join(parts)


def recheck_text(eq: str) -> str:
    """The re-check of a correct step ``a<op>b=c`` by smaller sub-steps, ending with the restated step:
    ``523*7`` -> ``"500*7=3500, 23*7=161, 3500+161=3661, so 523*7=3661"``; ``4567+89`` -> ``"4567+80=4647,
    4647+9=4656, so 4567+89=4656"`` (likewise ``-``); ``196/4`` -> ``"160/4=40, 36/4=9, 40+9=49, so 196/4=49"``
    (long division). No sub-step ever needs the result it checks. A step with nothing to split (a one-digit or
    round operand, a one-digit quotient) is simply written again."""
    a, op, b, c = _EQ.match(eq).groups()
    x, y, z = int(a), int(b), int(c)
    if op in "+-" and y > 10 and y % 10:
        t = y - y % 10
        mid = x + t if op == "+" else x - t
        return f"{x}{op}{t}={mid}, {mid}{op}{y % 10}={c}, so {eq}"
    for unit in (100, 10):
        if op == "*":
            hi, lo = x - x % unit, x % unit
            if hi and lo:
                return f"{hi}*{y}={hi * y}, {lo}*{y}={lo * y}, {hi * y}+{lo * y}={c}, so {eq}"
        if op == "/":
            hi, lo = z - z % unit, z % unit
            if hi and lo:
                return f"{hi * y}/{y}={hi}, {lo * y}/{y}={lo}, {hi}+{lo}={c}, so {eq}"
    return eq


def recheck_solution(eqs: list[str], rng: random.Random, correction_rate: float, confirm_rate: float) -> str:
    """The ``recheck`` style of a chain: ``"17*3=51."`` per step; a step drawn at ``correction_rate`` reads
    ``"17*3=41. Wait, 10*3=30, 7*3=21, 30+21=51, so 17*3=51."``, one drawn at ``confirm_rate`` (among the
    others) ``"17*3=51. Wait, 10*3=30, 7*3=21, 30+21=51, so 17*3=51."``. The answer is unchanged: the trace's
    last result is still the final value."""
    parts = []
    for eq in eqs:
        lhs, c = eq.split("=")
        if rng.random() < correction_rate:
            parts.append(f"{lhs}={_slip(rng, int(c))}.{WAIT_TEXT}, {recheck_text(eq)}.")
        elif rng.random() < confirm_rate:
            parts.append(f"{eq}.{WAIT_TEXT}, {recheck_text(eq)}.")
        else:
            parts.append(f"{eq}.")
    return " ".join(parts)


_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}


def _steps(eqs: list[str]) -> list[tuple[int, str, int, int]]:
    return [(int(a), op, int(b), int(c)) for a, op, b, c in (_EQ.match(e).groups() for e in eqs)]


def review_ops(eqs: list[str]) -> str:
    """The problem's operations in order, as the question states them: ``"23 +5 *3 -7"`` for the chain
    ``23+5=28. 28*3=84. 84-7=77``."""
    st = _steps(eqs)
    return " ".join([str(st[0][0])] + [f"{op}{b}" for _, op, b, _ in st])


def replay(start: int, ops: list[tuple[str, int]]) -> list[str] | None:
    """The chain of ``ops`` from ``start`` as equations, or None where a step is not exact on whole numbers
    (a division with a remainder, a result below 1)."""
    out, cur = [], start
    for op, b in ops:
        if op == "/" and (b == 0 or cur % b):
            return None
        nxt = _APPLY[op](cur, b)
        if nxt < 1:
            return None
        out.append(f"{cur}{op}{b}={nxt}")
        cur = nxt
    return out


def _misread(rng: random.Random, eqs: list[str], kind: str) -> list[str] | None:
    """A first chain with one reading error of ``kind`` (:data:`REVIEW_ERRORS`), every equation in it exact,
    or None where this chain has no such error (too short, or no exact variant)."""
    st = _steps(eqs)
    start, ops = st[0][0], [(op, b) for _, op, b, _ in st]
    n = len(ops)
    if kind == "stop":
        return eqs[: rng.randrange(1, n)] if n >= 2 else None
    k = rng.randrange(n)
    op, b = ops[k]
    if kind == "skip":
        if n < 2:
            return None
        k = rng.randrange(n - 1)  # a middle step: leaving out the last one is a "stop"
        wrong = ops[:k] + ops[k + 1 :]
    elif kind == "operation":
        wrong = ops[:k] + [(_INVERSE[op], b)]  # the inverse operation: the misread one + ops[k + 1 :]
    else:  # another number of the problem, or the true operand with one digit changed
        others = {x for _, x in ops if x != b} | ({start} if op in "+-" else set())
        near = {_slip(rng, b)} if op in "+-" else {x for x in range(2, 10) if x != b}
        choices = sorted(x for x in others | near if x >= 1 and x != b and (op in "+-" or 2 <= x <= 9))
        if not choices:
            return None
        wrong = ops[:k] + [(op, rng.choice(choices))] + ops[k + 1 :]
    chain = replay(start, wrong)
    return chain if chain and chain != eqs else None


def review_solution(eqs: list[str], rng: random.Random, correction_rate: float, confirm_rate: float) -> str:
    """The ``review`` style of a chain. A trace drawn at ``correction_rate`` reads ``"23+5=28. 28-7=21. Wait,
    23 +5 *3 -7: 23+5=28. 28*3=84. 84-7=77."`` (here the step ``*3`` skipped; the error kind drawn by the weights of
    :data:`REVIEW_ERRORS`), one drawn at ``confirm_rate`` among the others ``"23+5=28. 28*3=84.
    84-7=77. Wait, 23 +5 *3 -7: 23+5=28. 28*3=84. 84-7=77."``; the rest is the plain chain. The answer is
    unchanged: the trace's last result is still the final value."""
    r = rng.random()
    if r < correction_rate:
        kind = rng.choices(list(REVIEW_ERRORS), weights=list(REVIEW_ERRORS.values()))[0]
        kinds = [kind] + [k for k in REVIEW_ERRORS if k != kind]  # the others where the chain has no such error
        first = next((c for c in (_misread(rng, eqs, k) for k in kinds) if c), None)
        if first is None:  # a one-step chain has no reading error to make: reviewed as it is
            first = eqs
    elif r < correction_rate + (1 - correction_rate) * confirm_rate:
        first = eqs
    else:
        return plain_solution(eqs)
    return f"{plain_solution(first)}{WAIT_TEXT}, {review_ops(eqs)}: {plain_solution(eqs)}"


_REVIEW = re.compile(re.escape(WAIT_TEXT) + r", \d+(?: [-+*/]\d+)+: ")
_FIRST = re.compile(r"\d+[-+*/]\d+=\d+")  # one equation of a chain


def review_masked_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of a ``review`` trace to leave out of the SFT loss: WAIT_TEXT, and the
    first chain's equations from the first one that differs from the reviewed chain on (the injected error and
    what followed from it). Read from the text, so any stored trace can be masked; no review, no span."""
    m = _REVIEW.search(text)
    if not m:
        return []
    return _first_chain_spans(text, m.start(), _FIRST.findall(text[m.end() :]))


def _first_chain_spans(text: str, wait_at: int, again: list[str]) -> list[tuple[int, int]]:
    """The spans of the first chain's equations (before ``wait_at``) from the first one that differs from the
    checked chain ``again`` on, and of WAIT_TEXT at ``wait_at``."""
    first = list(_FIRST.finditer(text[:wait_at]))
    k = next((i for i, f in enumerate(first) if i >= len(again) or f.group() != again[i]), len(first))
    return [f.span() for f in first[k:]] + [(wait_at, wait_at + len(WAIT_TEXT))]


def _atoms(a: int, op: str, b: int) -> list[str]:
    """The one-digit atoms of ``a op b``, each followed by the partial result so far (the last by the result)."""
    xs, ys = str(a)[::-1], str(b)[::-1]
    out: list[str] = []
    if op == "+":
        carry, part = 0, ""
        for i in range(max(len(ys), 1)):
            x, y = int(xs[i]) if i < len(xs) else 0, int(ys[i]) if i < len(ys) else 0
            s = x + y + carry
            part = str(s % 10) + part
            out.append(f"{x}+{y}{f'+{carry}' if carry else ''}={s} {part}")
            carry = s // 10
        i = len(ys)
        while carry:  # the carry runs into a's higher digits
            x = int(xs[i]) if i < len(xs) else 0
            s = x + carry
            part = str(s % 10) + part
            out.append(f"{x}+{carry}={s} {part}")
            carry, i = s // 10, i + 1
    elif op == "-":
        borrow, part = 0, ""
        i = 0
        while i < len(ys) or borrow:
            x, y = int(xs[i]), int(ys[i]) if i < len(ys) else 0
            need = 1 if x - y - borrow < 0 else 0
            d = x + 10 * need - y - borrow
            part = str(d) + part
            out.append(f"{x + 10 * need}-{y}{'-1' if borrow else ''}={d} {part}")
            borrow, i = need, i + 1
    elif op == "*":
        carry, part = 0, ""
        for i, ch in enumerate(xs):
            v = int(ch) * b + carry
            part = (str(v) if i == len(xs) - 1 else str(v % 10)) + part
            out.append(f"{ch}*{b}{f'+{carry}' if carry else ''}={v} {part}")
            carry = v // 10
    else:
        digits, rem, part = str(a), 0, ""
        for ch in digits:
            n = rem * 10 + int(ch)
            if not part and n < b:  # the leading digits below the divisor join the next one
                rem = n
                continue
            q, rem = divmod(n, b)
            part += str(q)
            out.append(f"{n}/{b}={q}r{rem} {part}")
    # the last partial is the whole result: a's untouched higher digits joined, a borrow's leading 0 dropped
    head, _, _ = out[-1].rpartition(" ")
    out[-1] = f"{head} {_APPLY[op](a, b)}"
    return out


def longhand_step(a: int, op: str, b: int) -> str:
    """``"1234*7: 4*7=28 8, 3*7+2=23 38, 2*7+2=16 638, 1*7+1=8 8638, so 1234*7=8638"``: the step worked digit
    by digit, closed by the step with its result."""
    c = _APPLY[op](a, b)
    return f"{a}{op}{b}: {', '.join(_atoms(a, op, b))}, so {a}{op}{b}={c}"


def _slipped_chain(rng: random.Random, eqs: list[str]) -> list[str] | None:
    """The chain with one step's result slipped by a digit and the later steps carried on from it, or None
    where no slip keeps every later value a whole number of at least 1 (a division with a remainder)."""
    st = _steps(eqs)
    for _ in range(8):
        k = rng.randrange(len(st))
        out = [f"{a}{op}{b}={c}" for a, op, b, c in st[:k]]
        a, op, b, c = st[k]
        cur = _slip(rng, c)
        out.append(f"{a}{op}{b}={cur}")
        for _, op2, b2, _ in st[k + 1 :]:
            if op2 == "/" and cur % b2:
                break
            nxt = _APPLY[op2](cur, b2)
            if nxt < 1:
                break
            out.append(f"{cur}{op2}{b2}={nxt}")
            cur = nxt
        else:
            return out
    return None


def longhand_solution(eqs: list[str], rng: random.Random, correction_rate: float, confirm_rate: float) -> str:
    """A chain written in the ``longhand`` style (module docstring). The trace's last result is the answer."""
    r = rng.random()
    if r < correction_rate:
        first = _slipped_chain(rng, eqs) or eqs
    elif r < correction_rate + (1 - correction_rate) * confirm_rate:
        first = eqs
    else:
        return plain_solution(eqs)
    again = [longhand_step(a, op, b) for a, op, b, _ in _steps(eqs)]
    return f"{plain_solution(first)}{WAIT_TEXT}, {'. '.join(again)}."


_LONGHAND = re.compile(re.escape(WAIT_TEXT) + r", \d+[-+*/]\d+: ")
_AGAIN = re.compile(r"so (\d+[-+*/]\d+=\d+)")


def longhand_masked_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of a ``longhand`` trace to leave out of the SFT loss: WAIT_TEXT, and the
    first chain's equations from the first one that differs from the long-hand pass's results on. No Wait, no
    span."""
    w = text.find(WAIT_TEXT + ", ")
    if w < 0:
        return []
    return _first_chain_spans(text, w, _AGAIN.findall(text[w:]))


# one step of a worked solution: ``a<op>b=c`` with whole numbers
_STEP = re.compile(r"(?<!\d)(\d+)([-+*/])(\d+)=(\d+)(?!\d)")


def _exact(a: int, op: str, b: int, c: int) -> bool:
    """Whether ``a<op>b=c`` holds (a division by zero never does)."""
    if op == "/":
        return b != 0 and a == b * c
    return {"+": a + b, "-": a - b, "*": a * b}[op] == c


def slipped_result_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the wrong results in ``text``: the digits ``c`` of every ``a<op>b=c``
    that does not hold. In a ``verify`` or ``recheck`` trace these are exactly the
    deliberately slipped results, since every other step, check and sub-step is exact. Read from the text
    rather than carried beside it, so any stored trace can be masked and the task schema stays as it is."""
    out = []
    for m in _STEP.finditer(text):
        a, op, b, c = m.groups()
        if not _exact(int(a), op, int(b), int(c)):
            out.append(m.span(4))
    return out


def wait_masked_spans(text: str) -> list[tuple[int, int]]:
    """What masked SFT (``sft`` with ``loss_mask: wait_slips``) leaves out of the loss in a trace of any Wait
    style, read from the text: a ``longhand`` or ``review`` trace's WAIT_TEXT and first-chain part from its
    first wrong equation on; in a ``verify`` or ``recheck`` trace the slipped results (every equation that does
    not hold). A plain trace has nothing to mask."""
    if _LONGHAND.search(text):
        return longhand_masked_spans(text)
    if _REVIEW.search(text):
        return review_masked_spans(text)
    return slipped_result_spans(text)


def write_solution(eqs: list[str], style: str, rng: random.Random, correction_rate: float, confirm_rate: float) -> str:
    """A chain of equations written in ``style`` (checked by :func:`check_solution_style`)."""
    if style == "review":
        return review_solution(eqs, rng, correction_rate, confirm_rate)
    if style == "longhand":
        return longhand_solution(eqs, rng, correction_rate, confirm_rate)
    if style == "verify":
        return verify_solution(eqs, rng, correction_rate)
    if style == "recheck":
        return recheck_solution(eqs, rng, correction_rate, confirm_rate)
    return plain_solution(eqs)


def check_solution_style(style: str, correction_rate: float, confirm_rate: float = 0.0) -> None:
    """ValueError naming the field for an unknown style, a correction or confirmation rate outside [0, 1], or a
    rate set for a style that has no Wait (``plain``) or no confirmations (``verify`` checks every step)."""
    if style not in SOLUTION_STYLES:
        raise ValueError(f"solution_style: unknown style {style!r}; choose one of {list(SOLUTION_STYLES)}")
    for name, rate in (("correction_rate", correction_rate), ("confirm_rate", confirm_rate)):
        if not (0.0 <= rate <= 1.0):
            raise ValueError(f"{name}: must be within [0, 1], got {rate}")
    if style not in WAIT_STYLES and correction_rate:
        raise ValueError(
            f"correction_rate: {correction_rate} needs solution_style 'verify', 'recheck', 'review' or 'longhand' "
            f"(plain solutions have no corrections)"
        )
    if style not in CONFIRM_STYLES and confirm_rate:
        raise ValueError(
            f"confirm_rate: {confirm_rate} needs solution_style 'recheck', 'review' or 'longhand' (only re-checks, "
            f"reviews and long-hand passes after Wait confirm)"
        )
