"""Assertions shared by the spec-error tests: a bad field is exactly one issue naming file, stage and field."""

from __future__ import annotations

from pathlib import Path

import pytest


def assert_one_issue(path: Path, stage: str, field: str, words: list[str] | tuple[str, ...] = ()) -> str:
    """Loading ``path`` fails with one issue for ``stage``/``field`` whose message holds every word; returns it."""
    from pipelines.spec import SpecError, load_spec

    with pytest.raises(SpecError) as ei:
        load_spec(path)
    (issue,) = ei.value.issues
    assert (issue.file, issue.stage, issue.field) == (str(path), stage, field)
    msg = str(ei.value)
    assert f"stage '{stage}'" in msg and f"field '{field}'" in msg
    for w in words:
        assert w in msg
    return msg
