"""The Dagster code location over ``pipelines/``: a recipe whose model and data are not on this machine is left
out with a warning naming them, and never takes the other pipelines down; a spec that is wrong still fails."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from pipelines.definitions import build_definitions
from pipelines.spec import SpecError, spec_files

pytestmark = pytest.mark.unit


def _groups(defs) -> set[str]:
    return {k.path[0] for k in defs.resolve_asset_graph().get_all_asset_keys()}


@pytest.fixture
def bare_machine(tmp_path, monkeypatch):
    """No Hugging Face cache entry and no GSM8K files: what a fresh checkout sees."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("LMFORGE_GSM8K_DIR", str(tmp_path / "gsm8k"))
    monkeypatch.setenv("LMFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LMFORGE_MODEL", raising=False)
    return tmp_path


def test_a_recipe_without_its_inputs_is_left_out_and_the_rest_loads(bare_machine):
    assert any(p.name == "gsm8k_grpo.yaml" for p in spec_files())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        defs = build_definitions()
    groups = _groups(defs)
    assert "tiny_r1" in groups and "gsm8k_grpo" not in groups
    text = "\n".join(str(w.message) for w in caught)
    assert "gsm8k_grpo.yaml: left out of the Dagster definitions" in text
    for field in ("field 'hub_id'", "field 'path'", "field 'eval_path'"):
        assert field in text, text


def test_a_wrong_spec_still_fails_the_location_even_with_missing_inputs(bare_machine, tmp_path):
    spec = tmp_path / "broken.yaml"
    spec.write_text(
        "pipeline: broken\n"
        "stages:\n"
        f"  base: {{kind: hf_model, path: {tmp_path / 'nowhere'}}}\n"
        "  sft: {kind: sft, model: base, data: [base], stepz: 3}\n"
    )
    with pytest.raises(SpecError) as e:
        build_definitions([spec])
    assert any(i.field == "stepz" for i in e.value.issues)
    assert any(i.missing_input and i.field == "path" for i in e.value.issues)


def test_missing_inputs_are_still_errors_for_validate(bare_machine):
    from pipelines.spec import load_spec

    with pytest.raises(SpecError) as e:
        load_spec(Path(spec_files()[0]).parent / "gsm8k_grpo.yaml")
    assert e.value.issues and all(i.missing_input for i in e.value.issues)


def test_a_pipeline_with_two_differently_partitioned_stages_loads_with_a_job_per_partitioning(bare_machine):
    """long2short evaluates two sets of models (two partitions definitions): one Dagster job cannot hold both,
    so ``__all`` takes the unpartitioned stages and each evaluate stage gets its own job."""
    import dagster as dg

    path = next(p for p in spec_files() if p.name == "long2short.yaml")
    defs = build_definitions([path], home=str(bare_machine / "home"))
    dg.Definitions.validate_loadable(defs)
    names = {j.name for j in defs.resolve_all_job_defs()}
    assert {"long2short__all", "long2short__eval__partitions", "long2short__l2s_eval__partitions"} <= names
