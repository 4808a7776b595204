"""Reading a spec file: a key given twice or a key YAML reads as non-text is one issue naming the file, line
and key; ``extends:`` problems are one issue on the ``extends:`` line; and an issue in a value inherited
from a parent names the parent's file and line, where the value is written."""

from __future__ import annotations

import pytest

import tests.pipelines.toy_kinds  # noqa: F401  (registers toy kinds)
from pipelines.spec import load_spec
from tests.spec_helpers import only_issue
from tests.spec_helpers import write_spec as write

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "text, stage, field, line, first",
    [
        (
            "pipeline: t\nstages:\n  a: {kind: toy_text, words: [x]}\n  a: {kind: toy_text, words: [y]}\n",
            "a",
            None,
            4,
            3,
        ),
        (
            "pipeline: t\nstages:\n  a: {kind: toy_text, words: [x], repeat: 1, repeat: 2}\n",
            "a",
            "repeat",
            3,
            3,
        ),
        (
            "pipeline: t\nstages:\n  a:\n    kind: toy_text\n    words: [x]\n    'words': [y]\n",
            "a",
            "words",
            6,
            5,
        ),
        (
            "pipeline: t\nstages:\n  a: {kind: toy_text, words: [x]}\nstages:\n  b: {kind: toy_text, words: [y]}\n",
            None,
            "stages",
            4,
            2,
        ),
        (
            "pipeline: t\nstages:\n  a: {kind: toy_text, words: [x]}\nautomation:\n  a: {eager: true, eager: false}\n",
            "a",
            "automation.eager",
            5,
            5,
        ),
    ],
    ids=["stage", "field", "quoted-field", "top-level", "automation"],
)
def test_key_given_twice_is_one_issue_naming_file_line_and_key(tmp_path, text, stage, field, line, first):
    p = write(tmp_path, text)
    issue, msg = only_issue(p)
    assert (issue.file, issue.stage, issue.field, issue.line) == (str(p), stage, field, line)
    assert f"{p}:{line}: " in msg and f"given twice (first on line {first})" in msg


def test_yaml_merge_keys_overridden_in_place_are_not_duplicates(tmp_path):
    p = write(
        tmp_path,
        """
        pipeline: t
        stages:
          a: &base {kind: toy_text, words: [x], repeat: 2}
          b: {<<: *base, words: [y]}
        """,
    )
    b = load_spec(p).stages["b"].config
    assert (b.words, b.repeat) == (["y"], 2)


def test_key_given_twice_in_an_anchor_is_one_issue_however_often_it_is_reused(tmp_path):
    p = write(
        tmp_path,
        """
        pipeline: t
        stages:
          a: &base {kind: toy_text, words: [x], words: [y]}
          b: {<<: *base, repeat: 2}
          c: *base
        """,
    )
    issue, _ = only_issue(p)
    assert (issue.stage, issue.field, issue.line) == ("a", "words", 4)


@pytest.mark.parametrize(
    "key, read_as", [("on", "true/false"), ("no", "true/false"), ("null", "null"), ("123", "a number")]
)
def test_stage_name_yaml_reads_as_non_text_is_refused_with_advice_to_quote(tmp_path, key, read_as):
    p = write(tmp_path, f"pipeline: t\nstages:\n  {key}: {{kind: toy_text, words: [x]}}\n")
    issue, msg = only_issue(p)
    assert (issue.file, issue.stage, issue.field, issue.line) == (str(p), key, None, 3)
    assert f"YAML reads this stage name as {read_as}" in msg and f"quote it: '{key}'" in msg
    # quoted, the same name is text, and a reference to it finds it
    p.write_text(
        f"pipeline: t\nstages:\n  '{key}': {{kind: toy_text, words: [x]}}\n"
        f"  up: {{kind: toy_upper, from: '{key}'}}\n"
    )
    assert load_spec(p).stages["up"].deps == [key]


def test_field_name_yaml_reads_as_non_text_is_refused(tmp_path):
    p = write(tmp_path, "pipeline: t\nstages:\n  a:\n    kind: toy_text\n    words: [x]\n    yes: 1\n")
    issue, msg = only_issue(p)
    assert (issue.stage, issue.field, issue.line) == ("a", "yes", 6)
    assert "YAML reads this key as true/false, not as text" in msg


def test_list_as_stage_name_is_refused(tmp_path):
    p = write(tmp_path, "pipeline: t\nstages:\n  ? [a, b]\n  : {kind: toy_text, words: [x]}\n")
    issue, msg = only_issue(p)
    assert (issue.stage, issue.field, issue.line) == (None, "stages", 3)
    assert "a list or mapping cannot be a stage name" in msg


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
