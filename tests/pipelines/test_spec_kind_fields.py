"""A kind's own fields in a spec: a field the stage would ignore in its mode (a generator's or a crawl source's),
a nested block that is not what the kind builds (distill's student architecture), a merge that is not one and
a filter entry or parameter of the wrong type are each one issue naming the file, the stage and the field,
raised when the spec loads (before any stage runs); the same fields in the mode that reads them load."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.spec import load_spec
from tests.spec_helpers import assert_one_issue, extending_spec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "pipelines" / "tiny_r1.yaml"


def _spec(tmp_path: Path, stages: str) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text("pipeline: p\nstages:\n" + textwrap.indent(textwrap.dedent(stages), "  "))
    return p


# ---------------------------------------------------------------------------------------- reasoning_tasks
@pytest.fixture
def task_parquet(tmp_path: Path) -> Path:
    f = tmp_path / "tasks.parquet"
    pq.write_table(pa.table({"question": ["1+1?", "2+2?"], "answer": ["2", "4"]}), f)
    return f


@pytest.mark.parametrize(
    "fields, field, words",
    [
        ("train: 1", "train", ["arithmetic generator only", "every row of its files"]),
        ("eval: 1", "eval", ["arithmetic generator only"]),
        ("difficulties: [3]", "difficulties", ["arithmetic generator only"]),
        ("seed: 5", "seed", ["arithmetic generator only"]),
    ],
)
def test_generator_fields_a_user_parquet_ignores_are_refused(tmp_path, task_parquet, fields, field, words):
    p = _spec(tmp_path, f"t: {{kind: reasoning_tasks, generator: parquet, path: {task_parquet}, {fields}}}")
    assert_one_issue(p, "t", field, words)


@pytest.mark.parametrize("field", ["path", "eval_path"])
def test_files_the_arithmetic_generator_ignores_are_refused_even_when_missing(tmp_path, field):
    p = _spec(tmp_path, f"t: {{kind: reasoning_tasks, train: 5, eval: 2, {field}: {tmp_path / 'nope.parquet'}}}")
    assert_one_issue(p, "t", field, ["generator 'parquet' only", "task_file"])


@pytest.mark.parametrize("field", ["path", "eval_path"])
def test_an_empty_user_parquet_is_one_issue(tmp_path, task_parquet, field):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"question": pa.array([], pa.string()), "answer": pa.array([], pa.string())}), empty)
    files = {"path": task_parquet, field: empty}
    p = _spec(tmp_path, "t: {kind: reasoning_tasks, generator: parquet, "
              + ", ".join(f"{k}: {v}" for k, v in files.items()) + "}")
    assert_one_issue(p, "t", field, [f"{empty}: the file is empty (no rows)"])


def test_each_generator_loads_with_its_own_fields(tmp_path, task_parquet):
    p = _spec(tmp_path, f"""\
        a: {{kind: reasoning_tasks, train: 5, eval: 2, difficulties: [3], seed: 5}}
        u: {{kind: reasoning_tasks, generator: parquet, path: {task_parquet}, eval_path: {task_parquet}}}
        """)
    st = load_spec(p).stages
    assert st["a"].config.seed == 5 and st["u"].config.eval_path == str(task_parquet)


# --------------------------------------------------------------------------------------------------- crawl
@pytest.mark.parametrize(
    "stage, field, words",
    [
        ("{kind: crawl, warc: [/nowhere/x.warc.gz], max_pages: 2}", "warc", ["only used with source: warc",
                                                                              "source is local_docs"]),
        ("{kind: crawl, seeds: ['https://example.com/']}", "seeds", ["only used with source: http"]),
        ("{kind: crawl, allowed_hosts: [example.com]}", "allowed_hosts", ["only used with source: http"]),
        ("{kind: crawl, local: true}", "local", ["only used with source: http"]),
        ("{kind: crawl, source: http, seeds: ['https://example.com/'], warc: [x.warc.gz]}", "warc",
         ["only used with source: warc", "source is http"]),
        ("{kind: crawl, source: warc, warc: [WARC], max_pages: 5}", "max_pages",
         ["only used with source: local_docs or http", "source is warc"]),
    ],
)
def test_crawl_field_its_source_ignores_is_refused(tmp_path, stage, field, words):
    warc = tmp_path / "a.warc.gz"
    warc.write_bytes(b"")
    assert_one_issue(_spec(tmp_path, "c: " + stage.replace("WARC", str(warc))), "c", field, words)


def test_crawl_fields_at_their_defaults_load_with_any_source(tmp_path):
    warc = tmp_path / "a.warc.gz"
    warc.write_bytes(b"")
    p = _spec(tmp_path, f"""\
        d: {{kind: crawl, source: local_docs, max_pages: 400, max_depth: 3, snapshot: '2025-01'}}
        h: {{kind: crawl, source: http, seeds: ['https://example.com/'], allowed_hosts: [example.com]}}
        w: {{kind: crawl, source: warc, warc: [{warc}], max_pages: 400, snapshot: '2025-01'}}
        """)
    assert set(load_spec(p).stages) == {"d", "h", "w"}


# ------------------------------------------------------------------------------------ distill's student
@pytest.mark.parametrize(
    "body, field, words",
    [
        ("{prune: null, student: {d_model: 16, layerz: 1}}", "student.layerz",
         ["unknown field in 'student'", "layers"]),
        ("{prune: null, student: {d_model: 16}}", "student.layers", ["required", "layers"]),
        ("{prune: null, student: {d_model: 64, layers: 2, heads: 3}}", "student.heads",
         ["not divisible by heads 3"]),
        ("{prune: null, student: {d_model: 64, layers: 2, experts: 4}}", "student.experts",
         ["only for MoE architectures"]),
        ("{prune: null, student: {d_model: lots, layers: 2}}", "student.d_model", ["valid integer"]),
        ("{student: {d_model: 32, layers: 1}}", "student", ["not used with prune", "remove it"]),
    ],
)
def test_bad_student_architecture_is_one_issue(tmp_path, body, field, words):
    assert_one_issue(extending_spec(tmp_path, TINY, f"student: {body}"), "student", field, words)


def test_random_student_loads_with_the_keys_build_model_takes(tmp_path):
    p = extending_spec(tmp_path, TINY, "student: {prune: null, student: {d_model: 64, layers: 2, kv_heads: 1}}")
    s = load_spec(p).stages["student"].config.student
    assert s.model_dump(mode="json", exclude_none=True) == {
        "arch": "qwen2", "d_model": 64, "layers": 2, "kv_heads": 1, "rope_theta": 10000.0,
        "tie_embeddings": True, "dropout": 0.0, "init_std": 0.02,
    }


# --------------------------------------------------------------------------------------------------- merge
@pytest.mark.parametrize(
    "body, field, words",
    [
        ("{models: [rl2]}", "models", ["at least two models, got 1"]),
        ("{models: [rl2, dpo], weights: [0.5, 0.5, 7]}", "weights", ["3 weights for 2 models"]),
        ("{models: [rl2, dpo], weights: [1, -1]}", "weights", ["sum to a positive number"]),
        ("{models: [rl2, dpo], method: task_arithmetic}", "base", ["needs a base model"]),
        ("{models: [rl2, dpo], base: sft2}", "base", ["method linear uses no base model"]),
    ],
)
def test_config_that_is_no_merge_is_one_issue(tmp_path, body, field, words):
    assert_one_issue(extending_spec(tmp_path, TINY, f"merged: {body}"), "merged", field, words)


def test_task_arithmetic_with_a_base_loads(tmp_path):
    p = extending_spec(tmp_path, TINY, "merged: {method: task_arithmetic, base: sft2, weights: [0.5, 0.5]}")
    assert load_spec(p).stages["merged"].config.base == "sft2"


# -------------------------------------------------------------------------------------------------- filter
@pytest.mark.parametrize(
    "filters, field, words",
    [
        ("[[c4]]", "filters.0", ["a filter is a name or a one-key mapping", "got ['c4']"]),
        ("[c4, {c4: {}, fineweb: {}}]", "filters.1", ["one-key mapping"]),
        ("[{gopher_quality: {min_doc_words: lots}}]", "filters",
         ["gopher_quality parameter 'min_doc_words' must be an integer", "got 'lots'"]),
        ("[{c4: {filter_javascript: 1}}]", "filters", ["must be true or false"]),
        ("[{gopher_repetition: {dup_n_grams: [[5, high]]}}]", "filters", ["[n, fraction] pairs"]),
        ("[{language: {languages: en}}]", "filters", ["a list of language codes"]),
        ("[{language: 5}]", "filters", ["must be a mapping, or a list of language codes"]),
    ],
)
def test_bad_filter_entry_or_parameter_is_one_issue(tmp_path, filters, field, words):
    assert_one_issue(extending_spec(tmp_path, TINY, f"clean: {{filters: {filters}}}"), "clean", field, words)


def test_filter_parameters_of_the_right_types_load(tmp_path):
    filters = ("[{language: [en, fr]}, {gopher_quality: {min_doc_words: null, max_symbol_word_ratio: 1}},"
               " {fineweb: {stop_chars: ['.', '!']}}, {c4: {filter_javascript: false}}]")
    p = extending_spec(tmp_path, TINY, f"clean: {{filters: {filters}}}")
    assert len(load_spec(p).stages["clean"].config.filters) == 4
