"""The lmforge CLI: validate, plan (stored / to compute), materialize through Dagster, sql, report, and
the README's spec example (code shown in the README is executed here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import tests.pipelines.toy_kinds  # noqa: F401
from pipelines.cli import main

SPECS = Path(__file__).parent / "specs"
ROOT = Path(__file__).resolve().parents[2]


def test_validate_ok_and_errors(tmp_path, capsys):
    assert main(["validate", str(SPECS / "toy.yaml")]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("pipeline: bad\nstages:\n  a: {kind: toy_upper, from: ghost}\n  b: {kind: toy_text}\n")
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:3: stage 'a', field 'from': references missing stage 'ghost'" in err
    assert "stage 'b', field 'words'" in err and "Field required" in err


def test_kinds_and_code_refuse_an_unknown_kind(capsys):
    for cmd in ("kinds", "code"):
        assert main([cmd, "toy_text", "nosuchkind"]) == 1
        out = capsys.readouterr()
        assert "error  unknown stage kind(s): nosuchkind (see lmforge kinds)" in out.err and not out.out
    assert main(["kinds", "toy_text"]) == 0
    assert capsys.readouterr().out.startswith("toy_text  -> documents")


@pytest.mark.integration
def test_plan_materialize_variant_sql(lmforge_home, capsys, monkeypatch):
    home = ["--home", str(lmforge_home)]
    assert main([*home, "plan", str(SPECS / "toy.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.count("to compute") == 4
    assert main([*home, "materialize", str(SPECS / "toy.yaml")]) == 0
    capsys.readouterr()
    assert main([*home, "plan", str(SPECS / "toy_variant.yaml")]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()}
    assert lines["words"].endswith("stored") and lines["upper"].endswith("stored")
    assert lines["joined"].endswith("to compute")
    assert main([*home, "materialize", str(SPECS / "toy_variant.yaml"), "--stages", "joined"]) == 0
    capsys.readouterr()
    assert (
        main(
            [*home, "sql", "SELECT pipeline, stage, cache_hit FROM stage_runs ORDER BY recorded_at", "--json"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert '"pipeline": "toy_variant"' in out and '"cache_hit": false' in out
    # the same instance the UI uses holds the runs
    import dagster as dg

    inst = dg.DagsterInstance.from_config(str(lmforge_home / "dagster"))
    assert len(inst.get_run_records()) >= 2
    assert main([*home, "report", str(SPECS / "toy.yaml")]) == 2  # toy has no report stage


def test_readme_spec_example_validates(tmp_path):
    text = (ROOT / "README.md").read_text()
    m = re.search(r"```yaml\n(# my_pipeline.yaml\n.*?)```", text, re.S)
    assert m, "README lost its spec example"
    p = tmp_path / "my_pipeline.yaml"
    p.write_text(m.group(1))
    assert main(["validate", str(p)]) == 0


def test_readme_names_real_commands():
    text = (ROOT / "README.md").read_text()
    mk = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w+)", text, re.M):
        assert re.search(rf"^{target}:", mk, re.M), (
            f"README mentions `make {target}` but the Makefile lacks it"
        )
    import subprocess
    import sys

    helptext = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "--help"], capture_output=True, text=True, cwd=ROOT
    ).stdout
    for cmd in re.findall(r"^lmforge (\w+)", text, re.M):
        assert cmd in helptext, cmd


def test_kinds_lists_fields_and_shows_a_nested_block_by_its_keys(capsys):
    assert main(["kinds", "distill"]) == 0
    out = capsys.readouterr().out
    assert "distill  -> model" in out and "max_examples" in out
    prune = next(line for line in out.splitlines() if line.strip().startswith("prune "))
    assert "{layers, d_model, ffn, calibration_batches}" in prune and "PruneConfig" not in prune
