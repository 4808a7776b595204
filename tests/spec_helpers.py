"""Assertions shared by the spec-error tests: a bad field is exactly one issue naming file, stage and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest


def write_spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    """``text`` (dedented) written to ``tmp_path / name``."""
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return p


def only_issue(path: Path):
    """Loading ``path`` fails with exactly one issue: ``(issue, the error's text)``."""
    from pipelines.spec import SpecError, load_spec

    with pytest.raises(SpecError) as ei:
        load_spec(path)
    assert len(ei.value.issues) == 1, str(ei.value)
    return ei.value.issues[0], str(ei.value)


def extending_spec(tmp_path: Path, parent: Path, stages: str) -> Path:
    """A spec file ``pipeline: p`` that extends ``parent`` with ``stages`` (a YAML mapping, any indentation)."""
    p = tmp_path / "spec.yaml"
    p.write_text(f"pipeline: p\nextends: {parent}\nstages:\n" + textwrap.indent(textwrap.dedent(stages), "  "))
    return p


def assert_one_issue(path: Path, stage: str, field: str, words: list[str] | tuple[str, ...] = (),
                     file: Path | None = None) -> str:
    """Loading ``path`` fails with one issue for ``stage``/``field`` whose message holds every word; returns it.
    ``file``: where the field's value is written when not in ``path`` (a parent named by ``extends:``)."""
    from pipelines.spec import SpecError, load_spec

    with pytest.raises(SpecError) as ei:
        load_spec(path)
    (issue,) = ei.value.issues
    assert (issue.file, issue.stage, issue.field) == (str(file or path), stage, field)
    msg = str(ei.value)
    assert f"stage '{stage}'" in msg and f"field '{field}'" in msg
    for w in words:
        assert w in msg
    return msg
