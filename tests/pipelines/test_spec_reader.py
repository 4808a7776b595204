"""Reading a spec file: ``extends:`` problems are one issue on the ``extends:`` line, and an issue in a value
inherited from a parent names the parent's file and line, where the value is written."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import tests.pipelines.toy_kinds  # noqa: F401  (registers toy kinds)
from pipelines.spec import SpecError, load_spec

pytestmark = pytest.mark.unit


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return p


def only_issue(path: Path):
    with pytest.raises(SpecError) as ei:
        load_spec(path)
    assert len(ei.value.issues) == 1, str(ei.value)
    return ei.value.issues[0], str(ei.value)


PARENT = """\
pipeline: parent
stages:
  words: {kind: toy_text, words: [x]}
  upper: {kind: toy_upper, from: words, sufix: "!"}
"""


def test_issue_in_an_inherited_value_names_the_parents_file_and_line(tmp_path):
    parent = write(tmp_path, PARENT, "parent.yaml")
    child = write(
        tmp_path, "pipeline: child\nextends: parent.yaml\nstages:\n  words: {repeat: 2}\n", "child.yaml"
    )
    issue, msg = only_issue(child)
    assert (issue.file, issue.stage, issue.field, issue.line) == (str(parent), "upper", "sufix", 4)
    assert msg.startswith(f"{parent}:4: stage 'upper', field 'sufix': unknown field")


def test_inherited_field_of_a_stage_the_child_overrides_names_the_parent(tmp_path):
    parent = write(
        tmp_path, "pipeline: parent\nstages:\n  w: {kind: toy_text, words: [x], repeat: 0}\n", "parent.yaml"
    )
    child = write(
        tmp_path,
        "pipeline: child\nextends: ../parent.yaml\nstages:\n  x: {kind: toy_text, words: [y]}\n"
        "  w: {words: [z]}\n",
        "sub/child.yaml",
    )
    issue, _ = only_issue(child)
    assert (issue.file, issue.stage, issue.field, issue.line) == (str(parent), "w", "repeat", 3)
    # the child writing the field itself moves the issue to the child's line
    child.write_text(child.read_text().replace("{words: [z]}", "{words: [z], repeat: -1}"))
    issue, _ = only_issue(child)
    assert (issue.file, issue.stage, issue.field, issue.line) == (str(child), "w", "repeat", 5)


@pytest.mark.parametrize(
    "extends, words",
    [
        ("nothere.yaml", ["parent spec", "nothere.yaml does not exist"]),
        ("[ok.yaml]", ["must be the file name of the parent spec (a string), got ['ok.yaml']"]),
        ("''", ["must be the file name of the parent spec (a string), got ''"]),
        ("child.yaml", ["circular extends: ", "child.yaml -> ", "child.yaml"]),
        ("sub", ["sub.yaml does not exist"]),
    ],
    ids=["missing", "list", "empty", "itself", "directory"],
)
def test_unusable_extends_is_one_issue_on_the_extends_line(tmp_path, extends, words):
    (tmp_path / "sub").mkdir()
    p = write(
        tmp_path,
        f"pipeline: child\nextends: {extends}\nstages:\n  w: {{kind: toy_text, words: [x]}}\n",
        "child.yaml",
    )
    issue, msg = only_issue(p)
    assert (issue.file, issue.stage, issue.field, issue.line) == (str(p), None, "extends", 2)
    for w in words:
        assert w in msg


def test_circular_extends_is_one_issue_where_the_circle_closes(tmp_path):
    a = write(
        tmp_path, "pipeline: a\nextends: b.yaml\nstages:\n  w: {kind: toy_text, words: [x]}\n", "a.yaml"
    )
    b = write(
        tmp_path, "pipeline: b\nextends: a.yaml\nstages:\n  v: {kind: toy_text, words: [x]}\n", "b.yaml"
    )
    issue, msg = only_issue(a)
    assert (issue.file, issue.field, issue.line) == (str(b), "extends", 2)
    assert f"circular extends: {a} -> {b} -> {a}" in msg


def test_parent_that_is_not_a_spec_is_one_issue_naming_the_parent(tmp_path):
    parent = write(tmp_path, "- just\n- a list\n", "parent.yaml")
    child = write(tmp_path, "pipeline: child\nextends: parent\nstages:\n  w: {words: [x]}\n", "child.yaml")
    issue, msg = only_issue(child)
    assert issue.file == str(parent) and "a spec must be a mapping" in msg
