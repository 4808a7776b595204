"""Environment variables in specs (``${NAME}``, ``${NAME:-default}``), and the gsm8k_grpo recipe's report of
missing inputs when its model and data are not there."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import tests.pipelines.toy_kinds  # noqa: F401  (registers toy kinds)
from pipelines.cli import main
from pipelines.spec import SpecError, load_spec
from pipelines.spec_env import substitute

pytestmark = pytest.mark.unit


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


TOY = """\
    pipeline: toy
    stages:
      words:  {kind: toy_text, words: ["${WORD_A}", "b-${WORD_B:-beta}"]}
      upper:  {kind: toy_upper, from: words}
    """


def test_variables_and_defaults_are_substituted(tmp_path, monkeypatch):
    monkeypatch.setenv("WORD_A", "alpha")
    monkeypatch.delenv("WORD_B", raising=False)
    spec = load_spec(write(tmp_path, TOY))
    assert spec.stages["words"].config.words == ["alpha", "b-beta"]
    monkeypatch.setenv("WORD_B", "gamma")
    other = load_spec(write(tmp_path, TOY))
    assert other.stages["words"].config.words == ["alpha", "b-gamma"]
    assert other.stages["words"].version != spec.stages["words"].version  # a value like any other


def test_unset_variable_is_one_issue_naming_file_stage_field_line_and_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("WORD_A", raising=False)
    path = write(tmp_path, TOY)
    with pytest.raises(SpecError) as ei:
        load_spec(path)
    (issue,) = ei.value.issues
    assert (issue.file, issue.stage, issue.field, issue.line) == (str(path), "words", "words.0", 3)
    assert "environment variable WORD_A is not set" in issue.message


def test_every_unset_variable_is_reported_at_once(tmp_path, monkeypatch):
    for v in ("X_ONE", "X_TWO"):
        monkeypatch.delenv(v, raising=False)
    path = write(tmp_path, """\
        pipeline: toy
        stages:
          words: {kind: toy_text, words: ["${X_ONE}"]}
          more:  {kind: toy_text, words: ["${X_TWO}", "${bad name}"]}
        """)
    with pytest.raises(SpecError) as ei:
        load_spec(path)
    msgs = [(i.stage, i.message) for i in ei.value.issues]
    assert len(msgs) == 3, msgs
    assert any(s == "words" and "X_ONE" in m for s, m in msgs)
    assert any(s == "more" and "X_TWO" in m for s, m in msgs)
    assert any(s == "more" and "'${bad name}'" in m for s, m in msgs)


def test_a_child_overriding_the_field_needs_no_value_for_its_parents_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("WORD_A", raising=False)
    write(tmp_path, TOY, "parent.yaml")
    child = write(tmp_path, """\
        pipeline: child
        extends: parent.yaml
        stages:
          words: {words: [own]}
        """, "child.yaml")
    assert load_spec(child).stages["words"].config.words == ["own"]


def test_escapes_and_malformed_references():
    assert substitute("cost $${HOME} $5", {}) == ("cost ${HOME} $5", [])
    assert substitute("${A}/x", {"A": "/d"}) == ("/d/x", [])
    assert substitute("${A:-}", {}) == ("", [])
    assert "unclosed" in substitute("${A", {})[1][0]
    assert substitute("${A}", {"A": ""})[1]  # empty counts as unset: no silent '/train.parquet'


def test_recipe_without_its_files_lists_every_missing_input(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("LMFORGE_GSM8K_DIR", str(tmp_path / "gsm8k"))
    for v in ("LMFORGE_MODEL", "LMFORGE_MODEL_REVISION"):
        monkeypatch.delenv(v, raising=False)
    for cmd in ("validate", "plan"):
        assert main(["--home", str(tmp_path / "home"), cmd, "gsm8k_grpo"]) == 1
        out, err = capsys.readouterr()
        if cmd == "plan":  # the stage table still comes, with what each stage waits for
            rows = {r.split()[0]: r for r in out.splitlines()}
            assert rows["base"].endswith("missing input: hub_id")
            assert rows["gsm8k"].endswith("missing input: path, eval_path")
            assert rows["sft"].endswith("waits on base, gsm8k"), rows["sft"]
            assert "waits on" in rows["report"] and "----------------" in rows["report"]
        lines = [x for x in err.splitlines() if x.startswith("error")]
        assert len(lines) == 3, err
        assert "stage 'base', field 'hub_id': Qwen/Qwen2.5-0.5B-Instruct@main is not in the local Hugging Face " \
               f"cache ({tmp_path / 'hub'}" in lines[0]
        assert f"stage 'gsm8k', field 'path': {tmp_path}/gsm8k/main/train-00000-of-00001.parquet: file not found" \
               in lines[1]
        assert "field 'eval_path'" in lines[2] and "test-00000-of-00001.parquet: file not found" in lines[2]
        assert "Traceback" not in err


def test_plan_versions_what_it_can_and_marks_what_waits_for_a_missing_file(tmp_path, capsys):
    spec = tmp_path / "mixed.yaml"
    spec.write_text(textwrap.dedent(f"""\
        pipeline: mixed
        stages:
          ours:  {{kind: reasoning_tasks, train: 20, eval: 5}}
          theirs: {{kind: task_file, path: {tmp_path}/absent.parquet}}
          sft:   {{kind: sft, model: base, data: [ours, theirs], steps: 1}}
          base:  {{kind: pretrain, data: toks, tokenizer: tok, tokens: 1000}}
          tok:   {{kind: train_tokenizer, from: text, vocab_size: 300}}
          toks:  {{kind: tokenize, from: text, tokenizer: tok}}
          text:  {{kind: extract, from: crawl}}
          crawl: {{kind: crawl, source: local_docs, max_pages: 5}}
    """))
    assert main(["--home", str(tmp_path / "home"), "plan", str(spec)]) == 1
    out, err = capsys.readouterr()
    rows = {r.split()[0]: r.split(None, 3) for r in out.splitlines()}
    assert rows, err
    assert set(rows) == {"ours", "theirs", "sft", "base", "tok", "toks", "text", "crawl"}
    for s in ("ours", "base", "tok", "toks", "text", "crawl"):  # no missing input above them: versioned as usual
        assert len(rows[s][2]) == 16 and rows[s][2] != "-" * 16 and rows[s][3] == "to compute", rows[s]
    assert rows["theirs"][3] == "missing input: path"
    assert rows["sft"][3] == "waits on theirs"
    assert [x for x in err.splitlines() if x.startswith("error")] == [
        f"error  {spec}:4: stage 'theirs', field 'path': {tmp_path}/absent.parquet: file not found"]
    # a spec with a real mistake besides the missing file is still refused as a whole
    spec.write_text(spec.read_text().replace("steps: 1", "steps: 0"))
    assert main(["--home", str(tmp_path / "home"), "plan", str(spec)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "field 'steps'" in err
