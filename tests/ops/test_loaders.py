"""ops.loaders: rows from Parquet/JSONL files, the GSM8K/MATH answer split, chat message lists, preference
pairs as strings or message lists, bad-row accounting naming file, row and column."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ops import loaders as L

pytestmark = pytest.mark.unit


def test_read_rows_parquet_jsonl_json(tmp_path):
    rows = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "f.parquet")
    (tmp_path / "f.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "f.json").write_text(json.dumps(rows))
    for name in ("f.parquet", "f.jsonl", "f.json"):
        assert L.read_rows(tmp_path / name) == rows
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(L.LoaderError, match="bad.jsonl: line 2 is not valid JSON"):
        L.read_rows(tmp_path / "bad.jsonl")
    with pytest.raises(L.LoaderError, match="unsupported file type"):
        L.read_rows(tmp_path / "f.csv")


def test_byte_order_mark_and_crlf_lines_are_not_data(tmp_path):
    rows = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    text = "\r\n".join(json.dumps(r) for r in rows) + "\r\n"
    (tmp_path / "f.jsonl").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "f.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows).encode())
    assert L.read_rows(tmp_path / "f.jsonl") == rows
    assert L.read_rows(tmp_path / "f.json") == rows


def test_gzipped_json_lines_and_arrays_are_read(tmp_path):
    import gzip

    rows = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    with gzip.open(tmp_path / "f.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    with gzip.open(tmp_path / "f.json.gz", "wt") as f:
        f.write(json.dumps(rows))
    assert L.read_rows(tmp_path / "f.jsonl.gz") == rows
    assert L.read_rows(tmp_path / "f.json.gz") == rows
    (tmp_path / "f.parquet.gz").write_bytes(b"")  # Parquet compresses inside the file
    with pytest.raises(L.LoaderError, match="unsupported file type"):
        L.read_rows(tmp_path / "f.parquet.gz")
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(OSError):
        L.read_rows(tmp_path / "bad.jsonl.gz")


def test_file_problems_name_field_file_and_column(tmp_path):
    pq.write_table(pa.table({"question": ["q"]}), tmp_path / "t.parquet")
    assert L.file_problems(tmp_path / "nope.parquet", {"question_column": "question"}) == [
        ("path", f"{tmp_path / 'nope.parquet'}: file not found")
    ]
    assert L.file_problems(tmp_path / "t.parquet", {"question_column": "question", "answer_column": "answer"}) == [
        ("answer_column", f"{tmp_path / 't.parquet'}: missing column 'answer' (has ['question'])")
    ]
    (tmp_path / "shards").mkdir()
    got = L.file_problems(tmp_path / "shards", {"question_column": "question"})
    assert got == [("path", f"{tmp_path / 'shards'}: is a directory, not a data file (give one .parquet, .jsonl "
                            "or .json file)")] and not isinstance(got[0], L.MissingInput)


def test_gsm8k_rows_split_solution_and_answer():
    rows = [
        {"question": "Ann has 3 pens and buys 1,000 more?", "answer": "3+1000=<<3+1000=1003>>1003\n#### 1,003"},
        {"question": "Owes?", "answer": "She owes $5.\n#### -5"},
        {"question": "No marker", "answer": "It is 4"},
        {"question": "Words", "answer": "so\n#### four"},
        {"question": "", "answer": "#### 1"},
    ]
    out, bad = L.task_rows(rows, "gsm.jsonl", question="question", answer="answer", answer_from="gsm8k",
                           require_number=True)
    assert [(r["solution"], r["answer"]) for r in out] == [("3+1000=<<3+1000=1003>>1003", "1003"),
                                                           ("She owes $5.", "-5")]
    assert [(r["source_file"], r["source_row"]) for r in out] == [("gsm.jsonl", 0), ("gsm.jsonl", 1)]
    assert [(b.row, b.column) for b in bad] == [(2, "answer"), (3, "answer"), (4, "question")]
    assert "no '#### answer' line" in bad[0].describe() and "'four'" in bad[1].describe()
    assert bad[0].describe().startswith("gsm.jsonl: row 2, column 'answer'")


def test_math_rows_take_the_last_boxed_answer():
    rows = [
        {"problem": "Half?", "solution": "First \\boxed{2}, no: $\\boxed{\\frac{1}{2}}$."},
        {"problem": "Pair?", "solution": "It is $\\boxed{(1, 2)}$"},
        {"problem": "None?", "solution": "no box"},
    ]
    out, bad = L.task_rows(rows, "math.parquet", question="problem", answer="solution", answer_from="boxed")
    assert [r["answer"] for r in out] == ["1/2", "(1, 2)"]
    assert out[0]["solution"] == rows[0]["solution"]
    assert [(b.row, b.column) for b in bad] == [(2, "solution")]


def test_chat_rows_messages_context_and_bad_rows():
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": [{"type": "text", "text": "4"}]}]},
        {"messages": [{"content": "no role"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"messages": "not a list"},
        {"messages": [{"role": "robot", "content": "q"}]},
    ]
    out, bad = L.chat_rows(rows, "chat.jsonl", messages="messages")
    assert [(r["prompt"], r["response"]) for r in out] == [("Hi", "Hello"), ("2+2?", "4")]
    assert json.loads(out[1]["context"]) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    assert json.loads(out[0]["context"]) == [{"role": "system", "content": "Be brief."}]
    assert [(b.row, b.column) for b in bad] == [(i, "messages") for i in range(1, 6)]
    reasons = [b.reason for b in bad]
    assert "message 0 has no role" in reasons[0] and "empty content" in reasons[1]
    assert "no assistant turn" in reasons[2] and "role 'robot'" in reasons[4]
    last, _ = L.chat_rows(rows[:1], "chat.jsonl", messages="messages", turns="last")
    assert [r["response"] for r in last] == ["4"]


def test_chat_rows_prompt_response_columns():
    rows = [{"p": "q1", "r": "a1", "s": "sys"}, {"p": "q2", "r": ""}]
    out, bad = L.chat_rows(rows, "f.parquet", messages=None, prompt="p", response="r", system="s")
    assert [(r["prompt"], r["response"], json.loads(r["context"])) for r in out] == [
        ("q1", "a1", [{"role": "system", "content": "sys"}])
    ]
    assert [(b.row, b.column) for b in bad] == [(1, "r")]


def test_pair_rows_strings_and_message_lists():
    uf = {"prompt": "2+2?", "chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
          "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]}
    rows = [
        uf,
        {"prompt": "q", "chosen": "good", "rejected": "bad"},
        {"prompt": "q", "chosen": "same", "rejected": "same"},
        {"prompt": "q", "chosen": [{"role": "user", "content": "q"}], "rejected": "x"},
        {"prompt": "", "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": "a"},
    ]
    out, bad = L.pair_rows(rows, "uf.parquet")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in out] == [("2+2?", "4", "5"), ("q", "good", "bad")]
    assert [(b.row, b.column) for b in bad] == [(2, "rejected"), (3, "chosen"), (4, "prompt"), (5, "rejected")]
    no_prompt, _ = L.pair_rows([{k: v for k, v in uf.items() if k != "prompt"}], "uf.parquet", prompt=None)
    assert no_prompt[0]["prompt"] == "2+2?"


def test_bad_share_refusal_names_file_row_and_column():
    bad = [L.BadRow("f.jsonl", i, "answer", "unparsable answer 'x'") for i in (3, 7)]
    L.check_bad_share(100, bad, 0.05, "stage 's'")
    with pytest.raises(L.LoaderError) as ei:
        L.check_bad_share(10, bad, 0.05, "stage 's', field 'path' (f.jsonl)")
    msg = str(ei.value)
    assert "2 of 10 rows are bad" in msg and "f.jsonl: row 3, column 'answer': unparsable answer 'x'" in msg
    with pytest.raises(L.LoaderError, match="no rows"):
        L.check_bad_share(0, [], 0.5, "stage 's'")
    with pytest.raises(L.LoaderError, match="2 of 2 rows are bad"):
        L.check_bad_share(2, bad, 1.0, "stage 's'")


def test_file_digest_is_content(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"x": 1}\n')
    b.write_text('{"x": 1}\n')
    assert L.file_digest(a) == L.file_digest(b)
    b.write_text('{"x": 2}\n')
    assert L.file_digest(a) != L.file_digest(b)



def test_missing_values_and_lists_are_not_text():
    rows = [{"question": "q0", "answer": float("nan")}, {"question": float("nan"), "answer": "3"},
            {"question": ["q"], "answer": "3"}, {"question": "q3", "answer": 72}]
    out, bad = L.task_rows(rows, "t.parquet", question="question", answer="answer")
    assert [(r["question"], r["answer"]) for r in out] == [("q3", "72")]
    assert [(b.row, b.column) for b in bad] == [(0, "answer"), (1, "question"), (2, "question")]


def test_a_worked_solution_in_the_answer_column_names_answer_from():
    rows = [{"question": "q", "answer": "24 and 48\n#### 72"}, {"question": "q", "answer": "so $\\boxed{4}$"},
            {"question": "q", "answer": "4"}]
    out, bad = L.task_rows(rows, "t.jsonl", question="question", answer="answer")
    assert [r["answer"] for r in out] == ["4"]
    assert [(b.row, b.column) for b in bad] == [(0, "answer"), (1, "answer")]
    assert "answer_from: gsm8k" in bad[0].reason and "answer_from: boxed" in bad[1].reason


def test_a_repeated_id_is_a_bad_row():
    rows = [{"id": "a", "question": "q1", "answer": "1"}, {"id": "b", "question": "q2", "answer": "2"},
            {"id": "a", "question": "q3", "answer": "3"}]
    out, bad = L.task_rows(rows, "t.jsonl", question="question", answer="answer", id_column="id")
    assert [r["id"] for r in out] == ["a", "b"]
    assert [(b.row, b.column, b.reason) for b in bad] == [(2, "id", "id 'a' repeats row 0's")]
    chat = [{"id": "c", "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}] * 2}]
    out, bad = L.chat_rows(chat * 2, "c.jsonl", id_column="id")
    assert [r["id"] for r in out] == ["c-t1", "c-t3"] and [(b.row, b.column) for b in bad] == [(1, "id")]


def test_sharegpt_turns_are_messages():
    rows = [{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                               {"from": "gpt", "value": "Hello"}]},
            {"conversations": [{"from": "bot", "value": "x"}]}]
    out, bad = L.chat_rows(rows, "sg.json", messages="conversations")
    assert [(r["prompt"], r["response"], json.loads(r["context"])) for r in out] == [
        ("Hi", "Hello", [{"role": "system", "content": "Be brief."}])
    ]
    assert [(b.row, b.column) for b in bad] == [(1, "conversations")] and "role 'bot'" in bad[0].reason


def test_pair_prompts_as_message_lists_and_disagreeing_prompts():
    def msgs(*turns):
        return [{"role": r, "content": c} for r, c in turns]

    trl = {"prompt": msgs(("user", "2+2?")), "chosen": msgs(("assistant", "4")),
           "rejected": msgs(("assistant", "5"))}
    rows = [
        trl,
        {"prompt": "P", "chosen": msgs(("user", "Q"), ("assistant", "x")), "rejected": "y"},
        {"prompt": None, "chosen": msgs(("user", "A"), ("assistant", "x")),
         "rejected": msgs(("user", "B"), ("assistant", "y"))},
        {"prompt": msgs(("user", "a"), ("assistant", "b"), ("user", "c")), "chosen": "x", "rejected": "y"},
    ]
    out, bad = L.pair_rows(rows, "trl.parquet")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in out] == [("2+2?", "4", "5")]
    assert [(b.row, b.column) for b in bad] == [(1, "chosen"), (2, "rejected"), (3, "prompt")]
    assert "differs from the prompt in 'prompt'" in bad[0].reason and "one user turn" in bad[2].reason


def test_a_system_turn_in_a_pair_is_bad_not_dropped():
    sys_turn = {"role": "system", "content": "Talk like a pirate."}
    row = {"chosen": [sys_turn, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Arr"}],
           "rejected": [sys_turn, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    out, bad = L.pair_rows([row, {**row, "chosen": row["chosen"][1:], "rejected": row["rejected"][1:]}], "p.jsonl",
                           prompt=None)
    assert [(r["prompt"], r["chosen"]) for r in out] == [("Hi", "Arr")]
    assert [(b.row, b.column) for b in bad] == [(0, "chosen")] and "system turn" in bad[0].reason
    out, bad = L.pair_rows([{"prompt": [sys_turn, {"role": "user", "content": "Hi"}], "chosen": "a",
                             "rejected": "b"}], "p.jsonl")
    assert out == [] and "system turn" in bad[0].reason
