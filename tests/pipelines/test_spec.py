"""The spec compiler: validation errors (each names file, stage, field, line), versions, extends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import tests.pipelines.toy_kinds  # noqa: F401  (registers toy kinds)
from ops.fingerprint import UnhashableValue, stable_hash
from pipelines.spec import SpecError, load_spec, select_stages
from tests.spec_helpers import only_issue
from tests.spec_helpers import write_spec as write

SPECS = Path(__file__).parent / "specs"
pytestmark = pytest.mark.unit


def one_issue(path: Path):
    issue, msg = only_issue(path)
    assert issue.file == str(path)
    return issue, msg


def test_toy_spec_loads_in_topological_order():
    spec = load_spec(SPECS / "toy.yaml")
    order = list(spec.stages)
    assert order.index("words") < order.index("upper") < order.index("joined")
    assert spec.stages["joined"].deps == ["upper", "more"]


def test_unknown_kind(tmp_path):
    p = write(
        tmp_path,
        """
        pipeline: bad
        stages:
          a: {kind: toy_text, words: [x]}
          b: {kind: no_such_kind, from: a}
        """,
    )
    issue, msg = one_issue(p)
    assert (issue.stage, issue.field, issue.line) == ("b", "kind", 5)
    assert "unknown kind 'no_such_kind'" in msg and f"{p}:5" in msg


@pytest.mark.parametrize(
    "stage, words",
    [
        (
            "{kind: [toy_text], words: [x]}",
            ["must be the name of a stage kind, got ['toy_text']", "known kinds:"],
        ),
        ("{kind: {a: 1}, words: [x]}", ["must be the name of a stage kind, got {'a': 1}"]),
        ("{words: [x]}", ["field 'kind': required; known kinds:"]),
    ],
    ids=["list", "mapping", "missing"],
)
def test_kind_missing_or_not_a_name_is_one_issue(tmp_path, stage, words):
    p = write(tmp_path, f"pipeline: bad\nstages:\n  a: {stage}\n")
    issue, msg = one_issue(p)
    assert (issue.stage, issue.field, issue.line) == ("a", "kind", 3)
    for w in words:
        assert w in msg


# ASCII as Dagster requires; single inner underscores, since `<pipeline>__<stage>` must name one pair only
@pytest.mark.parametrize("name", ["tâches", "a²", "ａb", "x٣", "a-b", "a__b", "_a", "a_"])
def test_stage_and_pipeline_names_are_ascii_with_single_inner_underscores(tmp_path, name):
    p = write(tmp_path, f"pipeline: t\nstages:\n  {name}: {{kind: toy_text, words: [x]}}\n")
    issue, msg = one_issue(p)
    assert (issue.stage, issue.field, issue.line) == (name, None, 3)
    assert "stage names use ASCII letters and digits, with single underscores between them" in msg
    p = write(tmp_path, f"pipeline: {name}\nstages:\n  a: {{kind: toy_text, words: [x]}}\n")
    issue, msg = one_issue(p)
    assert (issue.stage, issue.field, issue.line) == (None, "pipeline", 1)
    assert f"a name of ASCII letters and digits, with single underscores between them (got {name!r})" in msg


def test_description_must_be_text(tmp_path):
    p = write(tmp_path, "pipeline: t\ndescription: [a, b]\nstages:\n  a: {kind: toy_text, words: [x]}\n")
    issue, msg = one_issue(p)
    assert (issue.stage, issue.field, issue.line) == (None, "description", 2)
    assert "must be text (got ['a', 'b'])" in msg


def test_self_reference_is_one_issue_not_also_a_cycle(tmp_path):
    p = write(tmp_path, "pipeline: t\nstages:\n  a: {kind: toy_upper, from: a}\n")
    issue, msg = one_issue(p)
    assert (issue.stage, issue.field, issue.line) == ("a", "from", 3)
    assert "a stage cannot reference itself" in msg


def test_unknown_field(tmp_path):
    p = write(
        tmp_path,
        """
        pipeline: bad
        stages:
          a:
            kind: toy_text
            words: [x]
            wordz: [y]
        """,
    )
    issue, msg = one_issue(p)
    assert (issue.stage, issue.field, issue.line) == ("a", "wordz", 7)
    assert "unknown field for kind 'toy_text'" in msg and "words" in msg


def test_mistyped_field(tmp_path):
    p = write(
        tmp_path,
        """
        pipeline: bad
        stages:
          a: {kind: toy_text, words: [x], repeat: many}
        """,
    )
    issue, msg = one_issue(p)
    assert (issue.stage, issue.field) == ("a", "repeat")
    assert "integer" in msg and "'many'" in msg


def test_missing_reference(tmp_path):
    p = write(
        tmp_path,
        """
        pipeline: bad
        stages:
          a: {kind: toy_text, words: [x]}
          b: {kind: toy_upper, from: nope}
        """,
    )
    issue, msg = one_issue(p)
    assert (issue.stage, issue.field, issue.line) == ("b", "from", 5)
    assert "missing stage 'nope'" in msg


def test_wrong_reference_type(tmp_path):
    # a toy kind that expects a model, pointed at documents
    from pydantic import Field  # noqa: F401

    from assets.registry import KINDS, StageConfig, StageKind, StageResult, ref, register

    class NeedsModel(StageConfig):
        model: str = ref("model", description="a model")

    if "toy_needs_model" not in KINDS:
        register(StageKind("toy_needs_model", NeedsModel, "eval", lambda r: StageResult(), "test"))
    p = write(
        tmp_path,
        """
        pipeline: bad
        stages:
          a: {kind: toy_text, words: [x]}
          b: {kind: toy_needs_model, model: a}
        """,
    )
    issue, msg = one_issue(p)
    assert (issue.stage, issue.field) == ("b", "model")
    assert "producing documents" in msg and "expects model" in msg


def test_cycle(tmp_path):
    p = write(
        tmp_path,
        """
        pipeline: bad
        stages:
          a: {kind: toy_upper, from: c}
          b: {kind: toy_upper, from: a}
          c: {kind: toy_upper, from: b}
        """,
    )
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    msgs = [str(i) for i in ei.value.issues]
    assert len(msgs) == 1 and "cycle: a -> c -> b -> a" in msgs[0]


def test_bad_automation_and_top_level(tmp_path):
    p = write(
        tmp_path,
        """
        pipeline: bad
        stagez: {}
        stages:
          a: {kind: toy_text, words: [x]}
        automation:
          a: {cron: "every day"}
          zz: {eager: true}
        """,
    )
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    msgs = "\n".join(str(i) for i in ei.value.issues)
    assert "unknown top-level field" in msgs and "5-field cron" in msgs and "missing stage 'zz'" in msgs


def test_invalid_yaml_names_line(tmp_path):
    p = write(tmp_path, "pipeline: x\nstages:\n  a: {kind: toy_text, words: [x\n")
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    assert "invalid YAML" in str(ei.value) and str(p) in str(ei.value)


def test_versions_stable_across_processes():
    spec = load_spec(SPECS / "toy.yaml")
    code = (
        "import tests.pipelines.toy_kinds; from pipelines.spec import load_spec; "
        f"s = load_spec({str(SPECS / 'toy.yaml')!r}); print(' '.join(st.version for st in s.stages.values()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    )
    assert out.stdout.split() == [st.version for st in spec.stages.values()]


def test_config_change_reversions_exactly_stage_and_descendants(tmp_path):
    base = load_spec(SPECS / "toy.yaml")
    text = (SPECS / "toy.yaml").read_text().replace("[alpha, beta, gamma]", "[alpha, beta]")
    changed = load_spec(write(tmp_path, text))
    diff = {s for s in base.stages if base.stages[s].version != changed.stages[s].version}
    assert diff == {"words", "upper", "joined"}


def test_equivalent_spellings_hash_the_same(tmp_path):
    a = load_spec(
        write(tmp_path, "pipeline: a\nstages:\n  w: {kind: toy_text, words: [x], repeat: 1}\n", "a.yaml")
    )
    b = load_spec(
        write(
            tmp_path,
            "pipeline: b\nstages:\n  renamed:\n    repeat: 1.0\n    words: [x]\n    kind: toy_text\n",
            "b.yaml",
        )
    )
    assert a.stages["w"].version == b.stages["renamed"].version


def test_extends_keeps_unchanged_versions():
    base = load_spec(SPECS / "toy.yaml")
    var = load_spec(SPECS / "toy_variant.yaml")
    assert var.parent == "toy"
    same = {s for s in base.stages if base.stages[s].version == var.stages[s].version}
    assert same == {"words", "more", "upper"}
    assert var.automation["upper"] == {"eager": True}


def test_unhashable_values_refused():
    with pytest.raises(UnhashableValue, match="function"):
        stable_hash({"f": lambda x: x})
    with pytest.raises(UnhashableValue, match="non-finite"):
        stable_hash({"x": float("nan")})
    assert stable_hash({"b": 1, "a": [1, 2.0]}) == stable_hash({"a": [1, 2], "b": 1.0})


def test_select_stages():
    spec = load_spec(SPECS / "toy.yaml")
    assert select_stages(spec, "upper+") == ["upper", "joined"]
    assert set(select_stages(spec, "+upper")) == {"words", "upper"}
    with pytest.raises(SpecError):
        select_stages(spec, "nope")
