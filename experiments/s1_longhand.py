"""The ``longhand`` trace style for the s1 study: after a forced Wait the model works the chain again digit by
digit, a check made of steps easier than the one it checks.

A plain chain computes each step in one go (``1234*7=8638``); at difficulty 3 what a model trained on it still
gets wrong is mostly that arithmetic. A ``longhand`` trace is the plain chain; in a trace drawn at
``correction_rate`` one step's result is first written with a slipped digit (and the chain carries on from the
wrong value, as a model's own slip would), in one drawn at ``confirm_rate`` (of the others) the chain is right;
both then read WAIT_TEXT, ", " and every step again in long hand, each from the previous long-hand result with
the operation and operand of the first chain's step: ``1234*7: 4*7=28 8, 3*7+2=23 38, 2*7+2=16 638, 1*7+1=8
8638, so 1234*7=8638.`` Each atom is a one-digit fact plus a carry (addition and subtraction digit by digit with
carries and borrows, multiplication by a digit right to left, division by a digit left to right with its
remainder), and the partial result after it is the previous one with one digit added, so no atom needs the
result it checks. Key design choice: the first chain's slipped part and the Wait itself are left out of the SFT
loss (:func:`longhand_masked_spans`), so the model's own stop stays the plain chain and only a forced Wait
starts a long-hand pass. It lives here, beside the study, until it shows a Wait that helps.
"""

from __future__ import annotations

import dataclasses
import random
import re

from ops.solutions import WAIT_TEXT, plain_solution

_EQ = re.compile(r"^(\d+)([-+*/])(\d+)=(\d+)$")
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}


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


def _steps(eqs: list[str]) -> list[tuple[int, str, int, int]]:
    return [(int(a), op, int(b), int(c)) for a, op, b, c in (_EQ.match(e).groups() for e in eqs)]


def _slipped_chain(rng: random.Random, eqs: list[str]) -> list[str] | None:
    """The chain with one step's result slipped by a digit and the later steps carried on from it, or None
    where no slip keeps every later value a whole number of at least 1 (a division with a remainder)."""
    from ops.solutions import _slip

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


_AGAIN = re.compile(r"so (\d+[-+*/]\d+=\d+)")
_FIRST = re.compile(r"\d+[-+*/]\d+=\d+")


def longhand_masked_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of a ``longhand`` trace to leave out of the SFT loss: WAIT_TEXT, and the
    first chain's equations from the first one that differs from the long-hand pass's results on. No Wait, no
    span."""
    w = text.find(WAIT_TEXT + ", ")
    if w < 0:
        return []
    first = list(_FIRST.finditer(text[:w]))
    again = _AGAIN.findall(text[w:])
    k = next((i for i, f in enumerate(first) if i >= len(again) or f.group() != again[i]), len(first))
    return [f.span() for f in first[k:]] + [(w, w + len(WAIT_TEXT))]


def longhand_tasks(tasks: list, seed: int, correction_rate: float, confirm_rate: float) -> list:
    """Plain-style tasks rewritten in the ``longhand`` style (their own random stream ``seed``); the problems and
    answers are unchanged."""
    rng = random.Random(seed)
    out = []
    for t in tasks:
        eqs = [e for e in t.solution.rstrip(".").split(". ") if e]
        out.append(dataclasses.replace(t, solution=longhand_solution(eqs, rng, correction_rate, confirm_rate)))
    return out


_STEP = re.compile(r"(\d+)([-+*/])(\d+): (.*), so (\d+)([-+*/])(\d+)=(\d+)$")
_ATOM = re.compile(r"(\d+(?:[-+*][\d]+)*|\d+/\d+)=(\d+)(?:r(\d+))? \d+$")


def _atom_exact(atom: str) -> bool:
    m = _ATOM.match(atom)
    if not m:
        return False
    lhs = m[1]
    if "/" in lhs:
        n, d = map(int, lhs.split("/"))
        return d > 0 and divmod(n, d) == (int(m[2]), int(m[3] or 0))
    terms = re.findall(r"[-+*]?\d+", lhs)
    v = int(terms[0])
    for t in terms[1:]:
        v = _APPLY[t[0]](v, int(t[1:]))
    return m[3] is None and v == int(m[2])


def audit(completions: dict[str, str]) -> dict:
    """How reliable a model's long-hand passes are against its own one-shot steps, from an ``s1_wait`` run's
    completions (``item/greedy`` and ``item/wait``): the share of atoms whose arithmetic is exact (per operation),
    the share of long-hand steps whose closing result is the true result of their own header, and the share of
    the own chains' one-shot equations that are exact."""
    atoms: dict[str, list[int]] = {}
    steps = [0, 0]
    for key, text in completions.items():
        if not key.endswith("/wait") or WAIT_TEXT + ", " not in text:
            continue
        body = text.split(WAIT_TEXT + ", ", 1)[1].split("</think>")[0]
        for part in body.rstrip(".").split(". "):
            m = _STEP.match(part)
            if not m:
                continue
            a, op, b = int(m[1]), m[2], int(m[3])
            steps[0] += (m[5], m[6], m[7]) == (m[1], m[2], m[3]) and int(m[8]) == _APPLY[op](a, b)
            steps[1] += 1
            for atom in m[4].split(", "):
                got = atoms.setdefault(op, [0, 0])
                got[0] += _atom_exact(atom)
                got[1] += 1
    own = [0, 0]
    for key, text in completions.items():
        if key.endswith("/greedy"):
            for a, op, b, c in re.findall(r"(\d+)([-+*/])(\d+)=(\d+)", text.split("</think>")[0]):
                own[0] += _APPLY[op](int(a), int(b)) == int(c)
                own[1] += 1
    share = lambda v: round(v[0] / v[1], 4) if v[1] else None  # noqa: E731
    return {
        "atoms_exact": share([sum(v[0] for v in atoms.values()), sum(v[1] for v in atoms.values())]),
        "atoms_exact_by_op": {op: share(v) for op, v in sorted(atoms.items())},
        "longhand_steps": steps[1],
        "longhand_steps_right": share(steps),
        "own_steps": own[1],
        "own_steps_right": share(own),
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m experiments.s1_longhand --audit OUT.json COMPLETIONS.json``."""
    import json
    import sys
    from pathlib import Path

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] != "--audit":
        raise SystemExit("usage: python -m experiments.s1_longhand --audit OUT.json COMPLETIONS.json")
    res = audit(json.loads(Path(argv[2]).read_text()))
    Path(argv[1]).write_text(json.dumps({"completions": argv[2], **res}, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
