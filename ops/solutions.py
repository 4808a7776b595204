"""Solution styles: how a generated problem's worked solution is written.

Key design choice: a style only rewrites the chain of equations the generator produced (``"12+5=17"``...), so
every style has the same problems and answers, and a style's random choices come from their own stream.
``plain`` is the chain itself; ``verify`` checks each step and corrects slipped steps after :data:`WAIT_TEXT`,
the text the evaluator forces for a Wait extension (s1), so a model trained on these traces is forced exactly
the tokens it saw. ``recheck`` writes the plain chain and, after some steps, :data:`WAIT_TEXT` and a re-check of
the step by a different decomposition (smaller sub-steps) that either confirms the result or corrects a slipped
one: what a forced Wait at the end of thinking should make a model do, re-check the last result and keep the
re-checked value.
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
SOLUTION_STYLES = ("plain", "verify", "recheck")
WAIT_STYLES = ("verify", "recheck")
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


def write_solution(eqs: list[str], style: str, rng: random.Random, correction_rate: float, confirm_rate: float) -> str:
    """A chain of equations written in ``style`` (checked by :func:`check_solution_style`)."""
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
            f"correction_rate: {correction_rate} needs solution_style 'verify' or 'recheck' "
            f"(plain solutions have no corrections)"
        )
    if style != "recheck" and confirm_rate:
        raise ValueError(
            f"confirm_rate: {confirm_rate} needs solution_style 'recheck' (only re-checks after Wait confirm steps)"
        )
