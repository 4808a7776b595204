"""The file loader kinds (task_file, chat_file, preference_file) run directly: versioned by content, rows with
provenance, bad rows counted and refused past max_bad_fraction, missing files/columns refused before compute
(and at compile time naming file, stage and field; an empty file as one issue saying so), and the artifacts
consumed by sft, reward_model, dpo."""

from __future__ import annotations

import json
import shutil
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assets.registry import load_kinds
from pipelines.execute import run_kind
from pipelines.spec import SpecError, load_spec
from resources.store import StoredArtifact
from tests import posttrain_helpers as H

load_kinds()


def _gsm8k_rows(n: int, start: int = 0) -> list[dict]:
    return [
        {"question": f"Ann has {i} pens and buys {i + 2} more. How many pens?",
         "answer": f"She has {i}+{i + 2}=<<{i}+{i + 2}={2 * i + 2}>>{2 * i + 2} pens.\n#### {2 * i + 2:,}"}
        for i in range(start, start + n)
    ]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _stored(home, kind):
    d = home / "artifacts" / kind
    return [p for p in d.glob("[!.]*")] if d.exists() else []


def _model_art(path, stage="base"):
    return StoredArtifact("pretrain", f"v-{stage}", path, {"stage": stage, "produces": "model"})


# ------------------------------------------------------------------------------------------ task_file
@pytest.mark.unit
def test_task_file_gsm8k_splits_answers_and_keeps_provenance(lmforge_home, tmp_path):
    from ops.tasks import read_task_set

    train = _jsonl(tmp_path / "gsm8k_train.jsonl", _gsm8k_rows(12))
    train.with_name("gsm8k_train.jsonl.gz").write_bytes(__import__("gzip").compress(train.read_bytes()))
    test = tmp_path / "gsm8k_test.parquet"
    pq.write_table(pa.Table.from_pylist(_gsm8k_rows(4, start=600)), test)
    art, res = run_kind("task_file", {"path": str(train), "eval_path": str(test), "answer_from": "gsm8k"},
                        lmforge_home, stage="gsm8k")
    rows = pq.read_table(art.path / "train.parquet").to_pylist()
    assert len(rows) == 12 and res.metrics["eval"] == 4 and res.metrics["bad_rows"] == 0
    assert rows[3]["answer"] == "8" and rows[3]["solution"] == "She has 3+5=<<3+5=8>>8 pens."
    assert (rows[3]["source_file"], rows[3]["source_row"]) == ("gsm8k_train.jsonl", 3)
    ev = pq.read_table(art.path / "eval.parquet").to_pylist()
    assert ev[0]["answer"] == "1202" and ev[0]["source_file"] == "gsm8k_test.parquet"  # "1,202" normalised
    assert json.loads((art.path / "task_set.json").read_text())["answer_format"] == "gsm8k"
    t = read_task_set(art.path, "train")[3]
    assert t.answer_format == "gsm8k" and t.response.endswith("#### 8")
    assert res.metadata["source"].value["path"]["file"] == "gsm8k_train.jsonl"
    # the same rows gzipped (as GSM8K-style dumps often ship) are read the same
    gz, _ = run_kind("task_file", {"path": str(train) + ".gz", "eval_path": str(test), "answer_from": "gsm8k"},
                     lmforge_home, stage="gsm8k_gz")
    assert [r["answer"] for r in pq.read_table(gz.path / "train.parquet").to_pylist()] == [r["answer"] for r in rows]


@pytest.mark.unit
def test_task_file_math_takes_the_last_boxed_answer(lmforge_home, tmp_path):
    rows = [{"problem": "What is half of one?", "solution": "Try $\\boxed{2}$; no: $\\boxed{\\frac{1}{2}}$."},
            {"problem": "Give the pair.", "solution": "The pair is $\\boxed{(1, 2)}$."}]
    f = tmp_path / "math.parquet"
    pq.write_table(pa.Table.from_pylist(rows), f)
    cfg = {"path": str(f), "question_column": "problem", "answer_column": "solution", "answer_from": "boxed"}
    art, res = run_kind("task_file", cfg, lmforge_home)
    out = pq.read_table(art.path / "train.parquet").to_pylist()
    assert [r["answer"] for r in out] == ["1/2", "(1, 2)"] and out[0]["solution"] == rows[0]["solution"]
    assert res.metrics["answer_format"] == "boxed"


@pytest.mark.unit
def test_task_file_counts_bad_rows_and_refuses_past_the_limit(lmforge_home, tmp_path):
    rows = _gsm8k_rows(40)
    rows[5]["answer"] = "no final answer here"
    f = _jsonl(tmp_path / "train.jsonl", rows)
    art, res = run_kind("task_file", {"path": str(f), "answer_from": "gsm8k", "max_bad_fraction": 0.05},
                        lmforge_home)
    assert res.metrics["bad_rows"] == 1 and res.metrics["kept"] == 39
    assert res.metadata["bad_rows"].records == [
        {"file": "train.jsonl", "row": 5, "column": "answer", "reason": "no '#### answer' line"}
    ]
    rows[7]["answer"] = "x\n#### seven"
    rows[9].pop("question")
    _jsonl(f, rows)
    from ops.loaders import LoaderError

    with pytest.raises(LoaderError) as ei:
        run_kind("task_file", {"path": str(f), "answer_from": "gsm8k", "max_bad_fraction": 0.05}, lmforge_home)
    msg = str(ei.value)
    assert "3 of 40 rows are bad" in msg and str(f) in msg
    assert "train.jsonl: row 7, column 'answer': unparsable answer 'seven'" in msg
    assert "train.jsonl: row 9, column 'question'" in msg
    assert len(_stored(lmforge_home, "task_file")) == 1  # only the first, good version


@pytest.mark.unit
def test_missing_file_or_column_is_refused_before_compute_and_at_compile(lmforge_home, tmp_path):
    from ops.loaders import LoaderError

    f = tmp_path / "math.parquet"
    pq.write_table(pa.table({"problem": ["p"], "answer": ["1"]}), f)
    with pytest.raises(LoaderError, match=r"stage 'math', field 'question_column': .*missing column 'question'"):
        run_kind("task_file", {"path": str(f)}, lmforge_home, stage="math")
    with pytest.raises(LoaderError, match=r"field 'path': .*nope.jsonl: file not found"):
        run_kind("chat_file", {"path": str(tmp_path / "nope.jsonl")}, lmforge_home)
    assert not _stored(lmforge_home, "task_file") and not _stored(lmforge_home, "chat_file")
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent(f"""
        pipeline: user_data
        stages:
          math: {{kind: task_file, path: {f}, answer_from: boxed}}
          prefs: {{kind: preference_file, path: {tmp_path / 'missing.parquet'}}}
        """))
    with pytest.raises(SpecError) as ei:
        load_spec(spec)
    got = {(i.file, i.stage, i.field) for i in ei.value.issues}
    assert got == {(str(spec), "math", "question_column"), (str(spec), "prefs", "path")}, str(ei.value)
    uf = tmp_path / "uf.parquet"
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "prompt"} for r in _uf_rows(2)]), uf)
    with pytest.raises(LoaderError, match=r"field 'prompt_column': .*missing column 'prompt'.*prompt_column: null"):
        run_kind("preference_file", {"path": str(uf)}, lmforge_home)
    run_kind("preference_file", {"path": str(uf), "prompt_column": None}, lmforge_home)
    sg = _jsonl(tmp_path / "sharegpt.jsonl", [{"conversations": [{"from": "human", "value": "hi"}]}])
    with pytest.raises(LoaderError, match=r"field 'messages_column': .*messages_column: conversations"):
        run_kind("chat_file", {"path": str(sg)}, lmforge_home)
    with pytest.raises(LoaderError, match=r"missing column 'q'") as ei:
        run_kind("chat_file", {"path": str(sg), "prompt_column": "q", "response_column": "conversations"},
                 lmforge_home)
    assert "prompt_column: null" not in str(ei.value)


@pytest.mark.unit
@pytest.mark.parametrize("name", ["empty.jsonl", "blank.jsonl", "empty.json", "empty.parquet", "blank.jsonl.gz",
                                  "empty.json.gz"])
def test_an_empty_file_is_one_issue_saying_so(tmp_path, name):
    import gzip

    from tests.spec_helpers import assert_one_issue

    f = tmp_path / name
    if name.endswith(".parquet"):  # the columns are there, the rows are not
        pq.write_table(pa.table({"question": pa.array([], pa.string()), "answer": pa.array([], pa.string())}), f)
    else:
        text = {"empty.jsonl": "", "blank.jsonl": "\n  \n", "empty.json": "[]"}[name.removesuffix(".gz")]
        f.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    good = _jsonl(tmp_path / "good.jsonl", [{"question": "1+1?", "answer": "2"}])
    for field, stage in (("path", f"{{kind: task_file, path: {f}}}"),
                         ("eval_path", f"{{kind: task_file, path: {good}, eval_path: {f}}}")):
        spec = tmp_path / "spec.yaml"
        spec.write_text(f"pipeline: p\nstages:\n  t: {stage}\n")
        assert_one_issue(spec, "t", field, [f"{f}: the file is empty (no rows)"])


@pytest.mark.unit
def test_version_is_the_file_content_not_its_path(lmforge_home, tmp_path):
    rows = _gsm8k_rows(5)
    (tmp_path / "a").mkdir()
    a = _jsonl(tmp_path / "a" / "gsm.jsonl", rows)
    first, res = run_kind("task_file", {"path": str(a), "answer_from": "gsm8k"}, lmforge_home)
    assert res is not None
    (tmp_path / "b").mkdir()
    moved = tmp_path / "b" / "renamed.jsonl"
    shutil.move(a, moved)
    again, res2 = run_kind("task_file", {"path": str(moved), "answer_from": "gsm8k"}, lmforge_home)
    assert again.version == first.version and res2 is None  # cache hit
    data = moved.read_bytes()
    moved.write_bytes(data.replace(b"#### 2", b"#### 3", 1))
    changed, res3 = run_kind("task_file", {"path": str(moved), "answer_from": "gsm8k"}, lmforge_home)
    assert changed.version != first.version and res3 is not None
    # and a downstream stage re-versions with it
    sft_cfg = {"model": "base", "data": ["t"], "steps": 1}
    from assets.registry import KINDS, stage_version

    kind = KINDS["sft"]
    cfg = kind.config.model_validate(sft_cfg)
    assert stage_version(kind, cfg, {"data": [first.version]}) != stage_version(
        kind, cfg, {"data": [changed.version]}
    )


# ------------------------------------------------------------------------------------------ chat_file
def _chat_rows() -> list[dict]:
    rows = []
    for i in range(8):
        rows.append({"messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": f"What is {i} plus 1?"},
            {"role": "assistant", "content": f"{i}+1={i + 1}. It is {i + 1}."},
            {"role": "user", "content": "And doubled?"},
            {"role": "assistant", "content": [{"type": "text", "text": f"{2 * i + 2}."}]},
        ]})
    rows.append({"messages": [{"role": "user", "content": "hi"}, {"content": "no role"}]})
    return rows


@pytest.mark.integration
def test_chat_file_feeds_sft(lmforge_home, tmp_path):
    f = _jsonl(tmp_path / "chat.jsonl", _chat_rows())
    chat, res = run_kind("chat_file", {"path": str(f), "max_bad_fraction": 0.2}, lmforge_home, stage="chat")
    assert res.metrics["examples"] == 16 and res.metrics["bad_rows"] == 1 and res.metrics["with_context"] == 16
    assert res.metadata["bad_rows"].records[0]["reason"] == "message 1 has no role"
    rows = pq.read_table(chat.path / "sft.parquet").to_pylist()
    assert {r["source_row"] for r in rows} == set(range(8)) and rows[1]["response"] == "2."
    pr = tmp_path / "pr.parquet"
    pq.write_table(pa.table({"q": ["Say hi.", "Say bye."], "a": ["Hi.", "Bye."]}), pr)
    simple, res2 = run_kind("chat_file", {"path": str(pr), "prompt_column": "q", "response_column": "a"},
                            lmforge_home, stage="simple")
    assert res2.metrics["examples"] == 2

    from ops.posttrain.common import encode_all, examples_from_artifact

    tok = H.tokenizer()
    ex = examples_from_artifact("sft_data", chat.path)
    ids, n_prompt = encode_all(tok, ex[1:2], 512)[0][0]
    text = tok.decode(ids[:n_prompt])
    # the second turn's prompt carries the system prompt and the first exchange as context
    assert text.index("Answer briefly.") < text.index("What is 0 plus 1?") < text.index("And doubled?")
    assert tok.decode(ids[n_prompt:]).startswith("2.")
    art, sft = run_kind(
        "sft",
        {"model": "base", "data": ["chat", "simple"], "steps": 2, "batch_size": 4, "eval_problems": 0},
        lmforge_home,
        inputs={"model": [_model_art(H.base_model_dir())], "data": [chat, simple]},
    )
    assert sft.metrics["examples"] == 18 and sft.metrics["final_loss"] == sft.metrics["final_loss"]


# ------------------------------------------------------------------------------------------ preference_file
def _uf_rows(n: int) -> list[dict]:
    out = []
    for i in range(n):
        q = f"What is {i} plus {i}?"
        out.append({
            "prompt": q,
            "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": f"{i}+{i}={2 * i}."}],
            "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": f"{i}+{i}={2 * i + 1}."}],
            "score_chosen": 9.0,
            "score_rejected": 2.0,
        })
    return out


@pytest.mark.integration
def test_preference_file_feeds_reward_model_and_dpo(lmforge_home, tmp_path):
    f = tmp_path / "ultrafeedback_binarized.parquet"
    pq.write_table(pa.Table.from_pylist(_uf_rows(20)), f)
    prefs, res = run_kind("preference_file", {"path": str(f)}, lmforge_home, stage="prefs")
    rows = pq.read_table(prefs.path / "pairs.parquet").to_pylist()
    assert res.metrics["pairs"] == 20 and rows[2]["chosen"] == "2+2=4." and rows[2]["rejected"] == "2+2=5."
    assert (rows[2]["source_file"], rows[2]["source_row"]) == ("ultrafeedback_binarized.parquet", 2)
    base = _model_art(H.base_model_dir())
    _, rm = run_kind(
        "reward_model",
        {"model": "base", "pairs": ["prefs"], "steps": 2, "batch_size": 4},
        lmforge_home,
        inputs={"model": [base], "pairs": [prefs]},
    )
    assert rm.metrics["train_pairs"] + rm.metrics["held_out_pairs"] == 20
    _, dpo = run_kind(
        "dpo",
        {"model": "base", "pairs": ["prefs"], "steps": 2, "batch_size": 4, "eval_problems": 0},
        lmforge_home,
        inputs={"model": [base], "pairs": [prefs]},
    )
    assert dpo.metrics["train_pairs"] + dpo.metrics["held_out_pairs"] == 20


@pytest.mark.integration
def test_grpo_on_a_gsm8k_task_file_rewards_in_the_gsm8k_format(lmforge_home, tmp_path, monkeypatch):
    import dataclasses

    from ops import answers as A

    # a gsm8k format that calls every response well-formed: the format reward shows which format scored
    seen: list[str] = []
    spy = dataclasses.replace(A.FORMATS["gsm8k"], well_formed=lambda t: seen.append(t) or True)
    monkeypatch.setitem(A.FORMATS, "gsm8k", spy)
    f = _jsonl(tmp_path / "gsm8k.jsonl", _gsm8k_rows(8))
    tasks, _ = run_kind("task_file", {"path": str(f), "answer_from": "gsm8k"}, lmforge_home, stage="gsm8k")
    art, res = run_kind(
        "grpo",
        {"model": "base", "prompts": ["gsm8k"], "steps": 1, "prompts_per_step": 2, "group_size": 2,
         "max_new_tokens": 6, "eval_problems": 0},
        lmforge_home,
        inputs={"model": [_model_art(H.base_model_dir())], "prompts": [tasks]},
    )
    rolls = pq.read_table(art.path / "rollouts.parquet").to_pylist()
    assert len(rolls) == 4 and all(r["reward_format"] == 1.0 for r in rolls)
    assert sorted(seen) == sorted(r["completion"] for r in rolls)
    for r in rolls:
        assert r["reward_accuracy"] == float(A.is_correct(r["completion"], r["answer"], "gsm8k"))
