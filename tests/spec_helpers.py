"""Assertions shared by the spec-error tests: a bad field is exactly one issue naming file, stage and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest


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
