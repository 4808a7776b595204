"""End to end: the ``gsm8k_grpo`` recipe (import an instruct model -> SFT -> GRPO -> evaluate -> report card) on
the CPU, through ``tests/e2e/specs/gsm8k_grpo_cpu.yaml``, which extends the recipe and swaps in a tiny Qwen2-family
checkpoint written by ``save_pretrained`` into a local Hugging Face cache (``testkit/hf_checkpoints.py``) and small
GSM8K- (Parquet, ``#### n``) and MATH-format (JSONL, ``\\boxed{}``) files written here. Nothing is downloaded.
Materialized from a fresh home by the CLI; the second run is all cache hits; the report card names the
imported model with its source and revision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.spec import load_spec

SPEC = Path(__file__).parent / "specs" / "gsm8k_grpo_cpu.yaml"
HUB_ID = "lmforge-test/tiny-qwen2-instruct"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def write_inputs(root: Path) -> dict[str, str]:
    """A hub cache holding the tiny checkpoint at ``main``, GSM8K's Parquet layout and MATH JSONL files; the
    environment variables that point the recipe at them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ops.tasks import make_splits
    from testkit.hf_checkpoints import checkpoint

    repo = root / "hub" / ("models--" + HUB_ID.replace("/", "--"))
    checkpoint("qwen2", repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    train, test = make_splits(24, 8, seed=5, difficulties=(1,))
    gsm = root / "gsm8k" / "main"
    gsm.mkdir(parents=True)
    for name, rows in (("train", train), ("test", test)):
        pq.write_table(pa.table({"question": [t.question for t in rows],
                                 "answer": [f"{t.solution}\n#### {t.answer}" for t in rows]}),
                       gsm / f"{name}-00000-of-00001.parquet")
    math = root / "math"
    math.mkdir()
    for name, rows in (("train", train[:8]), ("test", test[:4])):
        with (math / f"{name}.jsonl").open("w") as fh:
            for t in rows:
                fh.write(json.dumps({"problem": t.question,
                                     "solution": f"{t.solution} So the answer is $\\boxed{{{t.answer}}}$."}) + "\n")
    return {"LMFORGE_TEST_HF_CACHE": str(root / "hub"), "LMFORGE_GSM8K_DIR": str(root / "gsm8k"),
            "LMFORGE_MATH_DIR": str(math)}


@pytest.fixture(scope="module")
def recipe_home(tmp_path_factory):
    root = tmp_path_factory.mktemp("gsm8k_recipe")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in write_inputs(root).items():
            mp.setenv(k, v)
        home = root / "home"
        assert main(["--home", str(home), "materialize", str(SPEC)]) == 0
        yield home


def test_cpu_spec_keeps_the_recipe_wiring(recipe_home):
    cpu = load_spec(SPEC)
    kinds = {n: st.kind.name for n, st in cpu.stages.items()}
    assert kinds == {"base": "hf_model", "gsm8k": "task_file", "math": "task_file", "sft": "sft",
                     "grpo": "grpo", "eval": "evaluate", "report": "report"}
    assert cpu.stages["grpo"].refs == {"model": ["sft"], "prompts": ["gsm8k"]}
    assert cpu.stages["eval"].partitions == ["base", "sft", "grpo"]


def test_report_names_the_imported_model_and_scores_both_formats(recipe_home, capsys):
    assert main(["--home", str(recipe_home), "report", str(SPEC)]) == 0
    md = capsys.readouterr().out
    assert f"imported from {HUB_ID} @ main ({COMMIT})" in md
    assert main(["--home", str(recipe_home), "report", str(SPEC), "--json"]) == 0
    text = capsys.readouterr().out
    for key in ("greedy_accuracy", "pass@k", "maj@k", "format_rate"):
        assert key in text
    for model in ("base", "sft", "grpo"):
        assert model in text


def test_second_materialization_is_all_cache_hits(recipe_home, capsys, monkeypatch):
    for k, v in write_inputs(recipe_home.parent / "again").items():  # same bytes at other paths
        monkeypatch.setenv(k, v)
    assert main(["--home", str(recipe_home), "plan", str(SPEC)]) == 0
    assert "to compute" not in capsys.readouterr().out
    assert main(["--home", str(recipe_home), "materialize", str(SPEC)]) == 0
    q = "SELECT count(*) AS n FROM stage_runs WHERE pipeline = 'gsm8k_grpo_cpu' AND NOT cache_hit"
    assert main(["--home", str(recipe_home), "sql", q, "--json"]) == 0
    out = capsys.readouterr().out
    spec = load_spec(SPEC)
    assert json.loads(out[out.rindex("["):])[0]["n"] == sum(len(st.output_versions()) for st in spec.stages.values())
