"""The s1 study's long-hand arm: plain tasks rewritten in ``ops.solutions``' ``longhand`` style (after a
forced Wait the chain is worked again digit by digit, a check made of steps easier than the one it checks), and
an audit of how reliable a trained model's long-hand passes are against its own one-shot steps.

``python -m experiments.s1_longhand --audit OUT.json COMPLETIONS.json`` reads an ``s1_wait`` run's completions.
Key design choice: :func:`longhand_tasks` rewrites plain tasks with its own random stream (the one the ledger's
runs used), so a run of ``s1_wait --arms longhand`` reproduces at any later commit of the style's code.
"""

from __future__ import annotations

import dataclasses
import random
import re

from ops.solutions import _APPLY, WAIT_TEXT, longhand_solution


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
