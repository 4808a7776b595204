"""Loaders for the data people have: task sets, chat SFT data and preference pairs from Parquet or JSONL
files, with a column mapping, row-level provenance and bad-row accounting.

Key design choice: a loader never silently drops or repairs a row. Every row either becomes an output row
that names its source file and 0-based row index (``source_file``, ``source_row``) or a :class:`BadRow`
that names the file, the row, the column and why; the caller refuses the file when the bad share exceeds
its limit (:func:`check_bad_share`), so a wrong column mapping fails loudly instead of producing an empty
or half-filled artifact. Files are identified by their content (:func:`file_digest`), never their path.

* ``read_rows(path) -> list[dict]`` - a ``.parquet``, ``.jsonl`` or ``.json`` (array or JSON lines) file.
* ``file_problems(path, columns) -> list[str]`` - a missing/unreadable file or missing columns, cheaply.
* ``task_rows`` - tasks: GSM8K ``question``/``answer`` with ``#### n`` split into worked solution and final
  answer (``answer_from="gsm8k"``), MATH ``problem``/``solution`` with the answer in the last ``\\boxed{}``
  (``"boxed"``), or a plain answer column (``"column"``).
* ``chat_rows`` - SFT examples from ``messages`` lists (OpenAI/HF ``{role, content}`` or ShareGPT ``{from,
  value}`` turns; every assistant turn that follows a user turn, or only the last, becomes an example whose
  earlier turns are its context) or from prompt/response columns.
* ``pair_rows`` - preference pairs from prompt/chosen/rejected, chosen/rejected being strings or message
  lists (UltraFeedback-binarized: ``[{user}, {assistant}]``; the final assistant turn is the response), the
  prompt text or a one-user-turn message list (TRL's conversational format); a row whose prompt differs
  between columns, or with a system turn (pairs carry none), is bad.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ops.answers import boxed_contents, normalize, split_gsm8k, to_number

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant"}  # ShareGPT's {from, value} turns; "system" is the same
PROVENANCE = ("source_file", "source_row")


class LoaderError(ValueError):
    """A data file that cannot be loaded (missing, unreadable, missing column, too many bad rows)."""


@dataclass(frozen=True)
class BadRow:
    file: str
    row: int  # 0-based
    column: str
    reason: str

    def describe(self) -> str:
        return f"{self.file}: row {self.row}, column {self.column!r}: {self.reason}"

    def record(self) -> dict[str, Any]:
        return {"file": self.file, "row": self.row, "column": self.column, "reason": self.reason}


# ------------------------------------------------------------------------------------------------ files
_DIGESTS: dict[tuple[str, int, int, int], str] = {}
_CACHE_FROM = 64 << 20  # files at least this large are hashed once per (path, size, mtime, ctime) per process


def file_digest(path: str | Path) -> str:
    """sha256 of the file's bytes. Small files are hashed every time (cheap, and immune to an edit within one
    mtime tick); large ones once per process for the same path, size, mtime and ctime, so compiling a spec
    repeatedly does not re-read gigabytes."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if st.st_size >= _CACHE_FROM and key in _DIGESTS:
        return _DIGESTS[key]
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if st.st_size >= _CACHE_FROM:
        _DIGESTS[key] = h.hexdigest()
    return h.hexdigest()


def file_kind(p: Path) -> str:
    """The format by the file name: ``parquet``, ``jsonl`` or ``json`` (JSON may be gzipped); else LoaderError."""
    name = p.name.lower()
    gz = name.endswith(".gz")  # JSON is often shipped gzipped; Parquet compresses inside the file
    name = name.removesuffix(".gz")
    for ext, kind in ((".parquet", "parquet"), (".jsonl", "jsonl"), (".json", "json"), (".ndjson", "jsonl")):
        if name.endswith(ext) and not (gz and kind == "parquet"):
            return kind
    raise LoaderError(f"{p}: unsupported file type; use .parquet, .jsonl or .json (either JSON one may be .gz)")


def open_bytes(p: Path) -> IO[bytes]:
    """``p`` opened for reading bytes, decompressed when its name ends in ``.gz``."""
    return gzip.open(p, "rb") if p.name.lower().endswith(".gz") else p.open("rb")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a Parquet, JSON-lines or JSON (array of objects, or JSON lines) file, in file order."""
    p = Path(path).expanduser()
    kind = file_kind(p)
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    with open_bytes(p) as fh:  # a byte-order mark (Windows editors, Excel exports) is not data
        text = fh.read().decode("utf-8-sig")
    if kind == "json" and text.lstrip().startswith("["):
        rows = json.loads(text)
    else:
        rows = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise LoaderError(f"{p}: line {i + 1} is not valid JSON ({e})") from None
    if not all(isinstance(r, dict) for r in rows):
        raise LoaderError(f"{p}: every row must be a JSON object")
    return rows


def _columns(p: Path) -> list[str]:
    if file_kind(p) == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(p).names)
    cols: dict[str, None] = {}
    for r in read_rows(p):
        cols.update(dict.fromkeys(r))
    return list(cols)


class MissingInput(tuple):
    """A ``(field, message)`` problem saying an input is not on this machine (a file or checkpoint not found),
    as opposed to one that is there and wrong: the spec is valid, its inputs are not present yet. The Dagster
    code location leaves such a spec out instead of failing every other pipeline with it."""

    def __new__(cls, field: str, message: str) -> MissingInput:
        return super().__new__(cls, (field, message))


def file_problems(path: str | Path | None, columns: dict[str, str | None]) -> list[tuple[str, str]]:
    """``[(config field, message)]`` for a file that is missing or unreadable, or lacks a mapped column
    (``columns``: config field -> column name; ``None`` entries are not required). Empty when usable."""
    if not path:
        return []
    p = Path(path).expanduser()
    if p.is_dir():  # there, and wrong: a sharded dataset's folder is not one file
        return [("path", f"{p}: is a directory, not a data file (give one .parquet, .jsonl or .json file)")]
    if not p.is_file():
        return [MissingInput("path", f"{p}: file not found")]
    try:
        names = _columns(p)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one clear error
        return [("path", f"{p}: not a readable data file ({e})")]
    return [
        (field, f"{p}: missing column {col!r} (has {names})")
        for field, col in columns.items()
        if col is not None and col not in names
    ]


def check_bad_share(rows: int, bad: list[BadRow], max_bad_fraction: float, where: str) -> None:
    """Refuse (naming the file, row and column of the first bad rows) when more than ``max_bad_fraction`` of
    ``rows`` are bad, or when no row is usable."""
    share = len(bad) / rows if rows else 1.0
    if rows and len(bad) < rows and share <= max_bad_fraction:
        return
    shown = "; ".join(b.describe() for b in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    raise LoaderError(
        f"{where}: {len(bad)} of {rows} rows are bad ({share:.1%} > max_bad_fraction {max_bad_fraction:.1%})"
        f": {shown}{more}"
        if rows
        else f"{where}: the file has no rows"
    )


def _text(v: Any) -> str | None:
    """A non-empty string value (a number written out), or None: a missing value, NaN (pandas' missing value
    in a Parquet column) and a list or object (whose Python repr would pass for text) are not text."""
    if v is None or isinstance(v, (list, tuple, dict)) or (isinstance(v, float) and math.isnan(v)):
        return None
    s = str(v) if not isinstance(v, str) else v
    return s if s.strip() else None


def _row_id(r: dict, id_col: str | None, prefix: str, i: int) -> str:
    if id_col and r.get(id_col) is not None and str(r[id_col]).strip():
        return str(r[id_col])
    return f"{prefix}-{i}"


def _unique_ids(out: list[dict], bad: list[BadRow], file: str, id_col: str | None) -> list[dict]:
    """``out`` without the rows whose id an earlier source row already has, each such source row made one bad
    row of ``id_col``: ids key lineage and the ids derived from them (samples, rollouts), so one id must mean
    one row."""
    if not id_col:
        return out
    first: dict[str, int] = {}
    repeated: dict[int, str] = {}
    for r in out:
        at = first.setdefault(r["id"], r["source_row"])
        if at != r["source_row"]:
            repeated.setdefault(r["source_row"], f"id {r['id']!r} repeats row {at}'s")
    bad += [BadRow(file, i, id_col, why) for i, why in repeated.items()]
    bad.sort(key=lambda b: b.row)
    return [r for r in out if r["source_row"] not in repeated]


# ------------------------------------------------------------------------------------------------ tasks
def task_rows(
    rows: list[dict],
    file: str,
    *,
    question: str,
    answer: str,
    solution: str | None = None,
    id_column: str | None = None,
    answer_from: str = "column",
    require_number: bool = False,
    normalise: bool = True,
    prefix: str = "task",
) -> tuple[list[dict], list[BadRow]]:
    """Task rows (the tasks schema + provenance) and the bad rows of a file's ``rows``.

    ``answer_from``: ``"gsm8k"`` - column ``answer`` holds ``"worked solution #### n"``; ``"boxed"`` - column
    ``answer`` holds a worked solution whose last ``\\boxed{}`` is the answer; ``"column"`` - column
    ``answer`` is the final answer (``solution`` optionally names a worked-solution column). With
    ``require_number`` a final answer that is not a number is a bad row; with ``normalise`` the stored
    answer is :func:`ops.answers.normalize`'s canonical text (``exact`` answers are kept as written)."""
    out, bad = [], []
    for i, r in enumerate(rows):
        q, a = _text(r.get(question)), _text(r.get(answer))
        if q is None:
            bad.append(BadRow(file, i, question, "missing or empty question"))
            continue
        if a is None:
            bad.append(BadRow(file, i, answer, "missing or empty answer"))
            continue
        sol = _text(r.get(solution)) if solution else None
        if answer_from == "gsm8k":
            sol, final = split_gsm8k(a)
            if sol is None:
                bad.append(BadRow(file, i, answer, "no '#### answer' line"))
                continue
        elif answer_from == "boxed":
            found = boxed_contents(a)
            final = found[-1].strip() if found else ""
            sol = a
            if not final:
                bad.append(BadRow(file, i, answer, "no \\boxed{...} answer in the solution"))
                continue
        else:
            final = a.strip()
            # a worked solution in the answer column would be stored as the gold answer and never match
            if split_gsm8k(final)[0] is not None:
                bad.append(BadRow(file, i, answer, "holds a worked solution ending '#### n'; set answer_from: gsm8k"))
                continue
            if boxed_contents(final):
                bad.append(BadRow(file, i, answer, "holds a \\boxed{} answer; set answer_from: boxed"))
                continue
        if require_number and to_number(final) is None:
            bad.append(BadRow(file, i, answer, f"unparsable answer {final!r} (not a number)"))
            continue
        out.append(
            {
                "id": _row_id(r, id_column, prefix, i),
                "question": q,
                "answer": normalize(final) if normalise else final,
                "solution": sol or "",
                "difficulty": 0,
                "source": file,
                "source_file": file,
                "source_row": i,
            }
        )
    return _unique_ids(out, bad, file, id_column), bad


# ------------------------------------------------------------------------------------------------ chat
def _content(m: Any) -> tuple[str | None, str | None]:
    """``(text, problem)`` of one chat message's content: a string, or OpenAI content parts of type text."""
    c = m.get("content")
    if isinstance(c, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in c):
            return None, "content parts other than text"
        c = "".join(str(p.get("text") or "") for p in c)
    if not isinstance(c, str) or not c.strip():
        return None, "empty content"
    return c, None


def parse_messages(msgs: Any) -> tuple[list[tuple[str, str]] | None, str | None]:
    """``([(role, content)], None)`` for a well-formed message list, else ``(None, why)``."""
    if not isinstance(msgs, (list, tuple)) or not msgs:
        return None, "not a non-empty list of messages"
    out = []
    for k, m in enumerate(msgs):
        if not isinstance(m, dict):
            return None, f"message {k} is not an object"
        if "role" not in m and "from" in m:
            m = {"role": SHAREGPT_ROLES.get(m["from"], m["from"]), "content": m.get("value")}
        role = m.get("role")
        if role is None:
            return None, f"message {k} has no role"
        if role not in ROLES:
            return None, f"message {k} has role {role!r} (expected one of {list(ROLES)})"
        text, why = _content(m)
        if why:
            return None, f"message {k} ({role}): {why}"
        out.append((str(role), text))
    return out, None


def chat_rows(
    rows: list[dict],
    file: str,
    *,
    messages: str | None = "messages",
    prompt: str | None = None,
    response: str | None = None,
    system: str | None = None,
    id_column: str | None = None,
    turns: str = "all",
    prefix: str = "chat",
) -> tuple[list[dict], list[BadRow]]:
    """SFT rows (``id, prompt, response, answer, parent_ids, context`` + provenance) and the bad rows.

    With ``messages``: each assistant turn that directly follows a user turn becomes one example (``turns=
    "last"``: only the final one), its earlier turns stored as ``context`` (JSON); a conversation without
    such a turn is bad. Otherwise ``prompt``/``response`` columns (and an optional ``system`` column)."""
    out, bad = [], []
    for i, r in enumerate(rows):
        rid = _row_id(r, id_column, prefix, i)
        if messages:
            conv, why = parse_messages(r.get(messages))
            if conv is None:
                bad.append(BadRow(file, i, messages, why or "bad messages"))
                continue
        else:
            p, a = _text(r.get(prompt)), _text(r.get(response))
            if p is None or a is None:
                bad.append(BadRow(file, i, prompt if p is None else response, "missing or empty text"))
                continue
            s = _text(r.get(system)) if system else None
            conv = ([("system", s)] if s else []) + [("user", p), ("assistant", a)]
        ends = [k for k in range(1, len(conv)) if conv[k][0] == "assistant" and conv[k - 1][0] == "user"]
        if not ends:
            bad.append(BadRow(file, i, messages or response, "no assistant turn answering a user turn"))
            continue
        for k in ends if turns == "all" else ends[-1:]:
            out.append(
                {
                    "id": rid if len(ends) == 1 or turns != "all" else f"{rid}-t{k}",
                    "prompt": conv[k - 1][1],
                    "response": conv[k][1],
                    "answer": "",
                    "parent_ids": [],
                    "context": json.dumps([{"role": ro, "content": c} for ro, c in conv[: k - 1]]),
                    "source_file": file,
                    "source_row": i,
                }
            )
    return _unique_ids(out, bad, file, id_column), bad


# ------------------------------------------------------------------------------------------------ pairs
def _user_turn(conv: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """``(user prompt or None, problem)`` of the turns before a pair's response: none, or one user turn. A
    system turn is a problem: pairs carry no system prompt, so training would silently go without it."""
    if any(role == "system" for role, _ in conv):
        return None, "a system turn (preference pairs carry no system prompt; drop it or fold it into the prompt)"
    if len(conv) > 1 or (conv and conv[0][0] != "user"):
        return None, "multi-turn pairs are not supported (one user turn, then the assistant's)"
    return (conv[0][1] if conv else None), None


def _side(v: Any) -> tuple[str | None, str | None, str | None]:
    """``(user prompt or None, response, problem)`` of one side of a pair: a string, or a message list whose
    final turn is the assistant's, after at most one user turn."""
    if isinstance(v, str):
        return (None, v, None) if v.strip() else (None, None, "empty response")
    if v is None:
        return None, None, "missing response"
    conv, why = parse_messages(v)
    if conv is None:
        return None, None, why
    if conv[-1][0] != "assistant":
        return None, None, "the last message is not the assistant's"
    user, why = _user_turn(conv[:-1])
    return (None, None, why) if why else (user, conv[-1][1], None)


def _prompt(v: Any) -> tuple[str | None, str | None]:
    """``(prompt or None, problem)`` of a prompt column's value: text, or a message list holding one user turn,
    as TRL's conversational preference format writes it."""
    if not isinstance(v, (list, tuple)):
        return _text(v), None
    conv, why = parse_messages(v)
    if conv is None:
        return None, why
    return _user_turn(conv)


def pair_rows(
    rows: list[dict],
    file: str,
    *,
    prompt: str | None = "prompt",
    chosen: str = "chosen",
    rejected: str = "rejected",
    id_column: str | None = None,
    prefix: str = "pair",
) -> tuple[list[dict], list[BadRow]]:
    """Pairs rows (``id, prompt, chosen, rejected, parent_ids`` + provenance) and the bad rows. The prompt is
    the ``prompt`` column, or the user turn of the message lists when there is no prompt column."""
    out, bad = [], []
    for i, r in enumerate(rows):
        p, why = _prompt(r.get(prompt)) if prompt else (None, None)
        if why:
            bad.append(BadRow(file, i, str(prompt), why))
            continue
        sides = {}
        for col in (chosen, rejected):
            up, resp, why = _side(r.get(col))
            if why:
                bad.append(BadRow(file, i, col, why))
                break
            sides[col] = (up, resp)
        if len(sides) < 2:
            continue
        # every place the row states its prompt must agree, or the pair would train on the wrong question
        stated = [(c, u) for c, u in ((prompt, p), (chosen, sides[chosen][0]), (rejected, sides[rejected][0])) if u]
        differ = next((c for c, u in stated[1:] if u.strip() != stated[0][1].strip()), None)
        if differ:
            bad.append(BadRow(file, i, differ, f"its user turn differs from the prompt in {stated[0][0]!r}"))
            continue
        p = p or sides[chosen][0] or sides[rejected][0]
        if p is None:
            bad.append(BadRow(file, i, prompt or chosen, "missing or empty prompt"))
            continue
        if sides[chosen][1] == sides[rejected][1]:
            bad.append(BadRow(file, i, rejected, "chosen and rejected are the same response"))
            continue
        out.append(
            {
                "id": _row_id(r, id_column, prefix, i),
                "prompt": p,
                "chosen": sides[chosen][1],
                "rejected": sides[rejected][1],
                "parent_ids": [],
                "source_file": file,
                "source_row": i,
            }
        )
    return _unique_ids(out, bad, file, id_column), bad


# ------------------------------------------------------------------------------------------------ writing
def sft_schema() -> Any:
    """Columns of an ``sft_data`` artifact's ``sft.parquet``."""
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("prompt", pa.string()),
            ("response", pa.string()),
            ("answer", pa.string()),
            ("parent_ids", pa.list_(pa.string())),
        ]
    )


def pairs_schema() -> Any:
    """Columns of a ``pairs`` artifact's ``pairs.parquet``."""
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.string()),
            ("prompt", pa.string()),
            ("chosen", pa.string()),
            ("rejected", pa.string()),
            ("parent_ids", pa.list_(pa.string())),
        ]
    )


def write_rows(rows: list[dict], path: Path, base_schema: Any) -> None:
    """``rows`` as Parquet: ``base_schema`` (the artifact type's columns) + the columns only loaders add."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    extra = {"context": pa.string(), "source_file": pa.string(), "source_row": pa.int64()}
    names = set(rows[0]) if rows else set(PROVENANCE)
    fields = list(base_schema) + [pa.field(n, t) for n, t in extra.items() if n in names]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(fields)), path, compression="zstd")
