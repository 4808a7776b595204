"""Environment variables in a spec: ``${NAME}`` and ``${NAME:-default}`` inside string values of stages.

Key design choice: interpolation is textual, per file, before ``extends:`` merging, and only in the values of
``stages`` and ``automation`` (never in keys, stage names or kinds), so a recipe can name the one place a
user points it at their checkpoint and data (``path: ${LMFORGE_GSM8K_DIR}/train.parquet``) and every
other field stays literal. An unset variable without a default, or a malformed ``${...}``, is one
:class:`SpecIssue` naming the file, stage, field, line and variable. The value is kept as a marker until
``extends:`` is merged, so a child spec that overrides the field needs no value for its parent's variable;
the markers that survive the merge are reported together (:func:`unresolved`), before any validation. ``$${`` writes a literal ``${``. The substituted value is what the stage sees, so a
variable in a versioned field changes the version exactly as editing the value would.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_REF = re.compile(r"\$\$\{|\$\{(?P<body>[^}]*)\}|\$\{")
_BODY = re.compile(rf"(?P<name>{NAME})(?::-(?P<default>.*))?", re.S)
SECTIONS = ("stages", "automation")


def substitute(value: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
    """``(value with every ${...} replaced, problems)``; a problem is a sentence naming the variable."""
    problems: list[str] = []

    def repl(m: re.Match) -> str:
        if m.group(0) == "$${":
            return "${"
        body = m.group("body")
        if body is None:
            problems.append("unclosed '${' (write ${NAME} or ${NAME:-default}; $${ for a literal '${')")
            return m.group(0)
        b = _BODY.fullmatch(body)
        if not b:
            problems.append(f"'${{{body}}}' is not ${{NAME}} or ${{NAME:-default}} (NAME: letters, digits, _)")
            return m.group(0)
        name, default = b.group("name"), b.group("default")
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        problems.append(f"environment variable {name} is not set (export {name}=..., or write "
                        f"${{{name}:-default}} in the spec)")
        return m.group(0)

    return _REF.sub(repl, value), problems


class Unresolved(str):
    """A value whose variables could not be substituted; ``issues`` say why (file, stage, field, line)."""

    issues: list


def interpolate(data: dict[str, Any], lines: dict[tuple[str, ...], int], file: str,
                env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``data`` with variables substituted in the string values under :data:`SECTIONS`; a value with an
    unset variable or a malformed reference becomes an :class:`Unresolved` marker."""
    from .spec_reader import SpecIssue, place

    env = os.environ if env is None else env

    def walk(v: Any, key: tuple[str, ...]) -> Any:
        if isinstance(v, str) and "$" in v:
            out, problems = substitute(v, env)
            stage, field = place(key)
            line = next((lines[key[:n]] for n in range(len(key), 0, -1) if key[:n] in lines), None)
            if not problems:
                return out
            marker = Unresolved(v)
            marker.issues = [SpecIssue(file, stage, field, p, line) for p in problems]
            return marker
        if isinstance(v, dict):
            return {k: walk(x, (*key, str(k))) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x, (*key, str(i))) for i, x in enumerate(v)]
        return v

    out = dict(data)
    for sec in SECTIONS:
        if isinstance(data.get(sec), dict):
            out[sec] = walk(data[sec], (sec,))
    return out


def unresolved(data: dict[str, Any]) -> list:
    """The issues of every :class:`Unresolved` value left in ``data`` (after ``extends:`` merging)."""
    found: list = []

    def walk(v: Any) -> None:
        if isinstance(v, Unresolved):
            found.extend(v.issues)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for sec in SECTIONS:
        walk(data.get(sec))
    return found
