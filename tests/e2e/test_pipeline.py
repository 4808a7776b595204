"""End to end: the default pipeline's wiring (every kind, every reference of tiny_r1), shrunk to seconds per
stage, materialized through Dagster by the CLI; then every artifact is read back with the tools people use
(transformers, DuckDB), and a second materialization is a no-op of cache hits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.spec import load_spec
from resources.store import ArtifactStore

SMOKE = Path(__file__).parent / "specs" / "tiny_r1_smoke.yaml"
pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def smoke_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("smoke_home")
    assert main(["--home", str(home), "materialize", str(SMOKE)]) == 0
    return home


def test_smoke_spec_mirrors_default_wiring():
    default, smoke = load_spec("tiny_r1"), load_spec(SMOKE)
    assert list(default.stages) == list(smoke.stages)
    for name, st in default.stages.items():
        assert st.kind.name == smoke.stages[name].kind.name
        assert st.refs == smoke.stages[name].refs


def test_every_stage_stored_and_loadable(smoke_home):
    import duckdb
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = load_spec(SMOKE)
    store = ArtifactStore(smoke_home)
    for st in spec.stages.values():
        for v in st.output_versions():
            art = store.get(st.kind.name, v)
            assert art is not None, f"{st.name} not stored"
            assert art.manifest["stage"] == st.name or art.manifest["pipeline"] != spec.name
            if st.kind.produces == "model" and st.kind.name != "reward_model":
                model = AutoModelForCausalLM.from_pretrained(art.path)
                tok = AutoTokenizer.from_pretrained(art.path)
                assert tok.chat_template and model.config.vocab_size >= len(tok) - 1
            for pq in art.path.rglob("*.parquet"):
                duckdb.sql(f"SELECT count(*) FROM read_parquet('{pq}')").fetchall()


def test_report_covers_every_model_stage(smoke_home, capsys):
    spec = load_spec(SMOKE)
    assert main(["--home", str(smoke_home), "report", str(SMOKE), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    text = json.dumps(report)
    for m in spec.stages["eval"].partitions:
        assert m in text, f"model stage {m} missing from the report"
    assert main(["--home", str(smoke_home), "report", str(SMOKE)]) == 0
    md = capsys.readouterr().out
    assert "95%" in md or "CI" in md


def test_catalog_follows_lineage_from_crawl_to_eval(smoke_home, capsys):
    q = (
        "WITH RECURSIVE up(v) AS (SELECT version FROM artifacts WHERE stage = 'eval' AND pipeline = 'tiny_r1_smoke' "
        "UNION SELECT l.input_version FROM lineage l JOIN up ON l.version = up.v) "
        "SELECT DISTINCT a.kind FROM artifacts a JOIN up ON a.version = up.v ORDER BY 1"
    )
    assert main(["--home", str(smoke_home), "sql", q, "--json"]) == 0
    kinds = {r["kind"] for r in json.loads(capsys.readouterr().out)}
    assert {"crawl", "extract", "filter", "dedupe", "pretrain", "sft", "grpo", "evaluate"} <= kinds


def test_second_materialization_is_all_cache_hits(smoke_home, capsys):
    assert main(["--home", str(smoke_home), "plan", str(SMOKE)]) == 0
    assert "to compute" not in capsys.readouterr().out
    assert main(["--home", str(smoke_home), "materialize", str(SMOKE)]) == 0
    assert (
        main(
            [
                "--home",
                str(smoke_home),
                "sql",
                "SELECT count(*) AS n FROM stage_runs WHERE pipeline = 'tiny_r1_smoke' AND NOT cache_hit",
                "--json",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    n_computed = json.loads(out[out.rindex("[") :])[0]["n"]
    spec = load_spec(SMOKE)
    assert n_computed == sum(len(st.output_versions()) for st in spec.stages.values())
