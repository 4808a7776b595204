"""Solution styles: how a generated problem's worked solution is written.

Key design choice: a style only rewrites the chain of equations the generator produced (``"12+5=17"``...), so
every style has the same problems and answers, and a style's random choices come from their own stream.
``plain`` is the chain itself; ``verify`` checks each step and corrects slipped steps after :data:`WAIT_TEXT`,
the text the evaluator forces for a Wait extension (s1), so a model trained on these traces is forced exactly
the tokens it saw.
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
SOLUTION_STYLES = ("plain", "verify")
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


def check_solution_style(style: str, correction_rate: float) -> None:
    """ValueError naming the field for an unknown style or a correction rate outside [0, 1] (or set for a
    style that has no corrections)."""
    if style not in SOLUTION_STYLES:
        raise ValueError(f"solution_style: unknown style {style!r}; choose one of {list(SOLUTION_STYLES)}")
    if not (0.0 <= correction_rate <= 1.0):
        raise ValueError(f"correction_rate: must be within [0, 1], got {correction_rate}")
    if style == "plain" and correction_rate:
        raise ValueError(
            f"correction_rate: {correction_rate} needs solution_style 'verify' (plain solutions have no corrections)"
        )
