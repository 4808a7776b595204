"""Verifiable reasoning tasks: the procedural generator, the "tasks" artifact's files, and the answer checks
every consumer calls.

Key design choice: problems are generated procedurally from a seed, so every answer is exact and every
worked solution is the literal chain of operations the answer came from. Answers are parsed and compared by
``ops.answers`` (one registry of answer formats); rule rewards, rejection sampling and evaluation call
:func:`extract_answer` / :func:`is_correct` / :func:`format_ok` here or ``ops.answers`` directly with the
task's answer format, so they can never disagree about what counts as a correct, well-formed response.

Stable API (used by rewards, rejection sampling, the evaluation stage):

* ``generate_tasks(n, seed, difficulties=(2,), id_prefix="t", solution_style="plain", correction_rate=0.0,
  confirm_rate=0.0) -> list[Task]`` - deterministic problems, solutions written in a style of ``ops.solutions``.
* ``make_splits(n_train, n_eval, seed, difficulties) -> (train, eval)`` - disjoint by question text and by
  seed stream (train draws from ``seed``'s stream, eval from a separate stream; any eval question that also
  occurs in train is replaced).
* ``load_task_parquet(path) -> list[Task]`` - user Parquet with ``question`` and ``answer`` columns
  (GSM8K style ``"...reasoning... #### 42"`` answers are split into solution and answer); every answer
  must be a number (``is_numeric_answer``).
* ``format_response(reasoning, answer, fmt=None) -> str`` - the reference response in an answer format
  (default ``<think>{reasoning}</think><answer>{answer}</answer>``).
* ``extract_answer(text, fmt=None)``, ``is_correct(text_or_pred, gold, fmt=None)``, ``format_ok(text,
  fmt=None)`` - the answer checks in an answer format (default ``think_answer``).
* ``write_task_set_format`` / ``read_task_set_format`` / ``read_task_set`` - a task set's prompt template
  and answer format (``task_set.json``) and its splits as the model is asked them.
* ``TASK_SCHEMA`` - the pyarrow schema of the "tasks" artifact's ``train.parquet`` / ``eval.parquet``.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pyarrow as pa

from ops import answers
from ops.answers import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    DEFAULT_FORMAT,
    DEFAULT_TEMPLATE,
    THINK_CLOSE,
    THINK_OPEN,
    answers_match,
    check_template,
    extract,
    get_format,
    normalize,
    render_prompt,
    split_gsm8k,
    to_number,
    well_formed,
)
from ops.solutions import check_solution_style, plain_solution, write_solution

TASK_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("solution", pa.string()),
        ("difficulty", pa.int32()),
        ("source", pa.string()),
    ]
)


@dataclass(frozen=True)
class Task:
    id: str
    question: str
    answer: str
    solution: str
    difficulty: int
    source: str
    answer_format: str = DEFAULT_FORMAT  # the task set's (or the consuming stage's) answer format

    @property
    def response(self) -> str:
        """The reference assistant response: the worked solution and answer in the task's answer format."""
        return format_response(self.solution, self.answer, self.answer_format)


# ---------------------------------------------------------------------------------------------- answers
def format_response(reasoning: str, answer: str, fmt: str | None = None) -> str:
    """The reference response for a worked solution and its answer in answer format ``fmt``."""
    return get_format(fmt).render(reasoning, answer)


def normalize_answer(s: str) -> str:
    """Canonical text of an answer (:func:`ops.answers.normalize`)."""
    return normalize(s)


def extract_answer(text: str | None, fmt: str | None = None) -> str | None:
    """Normalised answer of a response in answer format ``fmt`` (default ``think_answer``: the LAST
    ``<answer>...</answer>`` block; a number elsewhere in the text is never taken as the answer), or None."""
    return extract(text, fmt)


def is_correct(text_or_pred: str | None, gold: str, fmt: str | None = None) -> bool:
    """True when the response (or an already extracted prediction) equals ``gold``.

    With the default ``think_answer`` format a string without ``<answer>`` is taken as the prediction
    itself; with any other format the string is a full response. Numbers compare exactly as fractions.
    """
    if text_or_pred is None:
        return False
    if get_format(fmt).name == "think_answer" and ANSWER_OPEN not in text_or_pred:
        return answers_match(normalize(text_or_pred), gold, fmt)
    return answers.is_correct(text_or_pred, gold, fmt)


def format_ok(text: str | None, fmt: str | None = None) -> bool:
    """True when the whole response has answer format ``fmt``'s shape (default: exactly
    ``<think>...</think><answer>...</answer>``, optionally followed by ``<|im_end|>``, one block of each,
    no nested tags and a non-empty answer)."""
    return well_formed(text, fmt)


def split_response(text: str) -> tuple[str | None, str | None]:
    """``(think content, answer content)`` of a response; ``None`` for a missing part."""
    t = re.search(re.escape(THINK_OPEN) + r"(.*?)" + re.escape(THINK_CLOSE), text, re.S)
    a = re.findall(re.escape(ANSWER_OPEN) + r"(.*?)" + re.escape(ANSWER_CLOSE), text, re.S)
    return (t.group(1) if t else None), (a[-1] if a else None)


# ---------------------------------------------------------------------------------------------- generator
_NAMES = [
    "Ann",
    "Ben",
    "Cara",
    "Dan",
    "Eva",
    "Finn",
    "Gia",
    "Hugo",
    "Ivy",
    "Jon",
    "Kim",
    "Leo",
    "Mia",
    "Ned",
    "Ola",
    "Pam",
    "Raj",
    "Sue",
    "Tom",
    "Uma",
    "Vic",
    "Wes",
    "Yan",
    "Zoe",
]
_PRONOUN = {
    n: (
        "she"
        if n in {"Ann", "Cara", "Eva", "Gia", "Ivy", "Kim", "Mia", "Ola", "Pam", "Sue", "Uma", "Yan", "Zoe"}
        else "he"
    )
    for n in _NAMES
}
_ITEMS = [
    "apples",
    "pens",
    "coins",
    "books",
    "cards",
    "shells",
    "stamps",
    "eggs",
    "marbles",
    "cups",
    "nuts",
    "boxes",
    "beads",
    "keys",
    "rocks",
    "toys",
]

# difficulty -> (min ops, max ops, max operand, max intermediate value, operations)
DIFFICULTY: dict[int, tuple[int, int, int, int, tuple[str, ...]]] = {
    1: (1, 2, 20, 99, ("add", "sub")),
    2: (2, 3, 99, 999, ("add", "sub", "mul", "div")),
    3: (3, 4, 99, 9999, ("add", "sub", "mul", "div")),
    4: (4, 5, 999, 99999, ("add", "sub", "mul", "div")),
}


def _step(
    rng: random.Random,
    cur: int,
    max_operand: int,
    max_value: int,
    who: str,
    item: str,
    allowed: tuple[str, ...],
) -> tuple[str, str, int] | None:
    """One operation on the running total: (sentence, equation, new total) or None if none fits."""
    p = _PRONOUN[who]
    ops = list(allowed)
    rng.shuffle(ops)
    for op in ops:
        if op == "add":
            n = rng.randint(1, max_operand)
            if cur + n <= max_value:
                s = rng.choice(
                    [
                        f"{p.capitalize()} gets {n} more.",
                        f"Then {p} finds {n} more {item}.",
                        f"{who} buys {n} more {item}.",
                    ]
                )
                return s, f"{cur}+{n}={cur + n}", cur + n
        elif op == "sub":
            if cur >= 2:
                n = rng.randint(1, min(cur - 1, max_operand))
                s = rng.choice(
                    [
                        f"{p.capitalize()} gives away {n}.",
                        f"Then {p} loses {n} {item}.",
                        f"{who} sells {n} {item}.",
                    ]
                )
                return s, f"{cur}-{n}={cur - n}", cur - n
        elif op == "mul":
            hi = min(9, max_value // max(cur, 1))
            if hi >= 2:
                n = rng.randint(2, hi)
                s = rng.choice([f"Then {p} has {n} times as many.", f"{who} multiplies the {item} by {n}."])
                return s, f"{cur}*{n}={cur * n}", cur * n
        else:
            divs = [d for d in range(2, 10) if cur % d == 0 and cur // d >= 1]
            if divs:
                n = rng.choice(divs)
                s = rng.choice(
                    [
                        f"{p.capitalize()} splits them into {n} equal piles and keeps one.",
                        f"{who} shares them equally among {n} friends, keeping one share.",
                    ]
                )
                return s, f"{cur}/{n}={cur // n}", cur // n
    return None


def _equations(rng: random.Random, difficulty: int) -> tuple[str, list[str], str]:
    """One problem: (question, its equations in order, answer)."""
    if difficulty not in DIFFICULTY:
        raise ValueError(f"unknown difficulty {difficulty}; choose one of {sorted(DIFFICULTY)}")
    lo, hi, max_operand, max_value, allowed = DIFFICULTY[difficulty]
    who, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    cur = rng.randint(2, max_operand)
    sentences = [f"{who} has {cur} {item}."]
    eqs = []
    for _ in range(rng.randint(lo, hi)):
        st = _step(rng, cur, max_operand, max_value, who, item, allowed)
        if st is None:
            break
        s, e, cur = st
        sentences.append(s)
        eqs.append(e)
    sentences.append(f"How many {item} does {who} have?")
    return " ".join(sentences), eqs, str(cur)


def generate_task(rng: random.Random, difficulty: int) -> tuple[str, str, str]:
    """One problem: (question, solution, answer). The solution is the chain of equations, e.g.
    ``"12+5=17. 17*3=51."``, and the answer the final value."""
    q, eqs, ans = _equations(rng, difficulty)
    return q, plain_solution(eqs), ans


def _task_id(prefix: str, question: str) -> str:
    return f"{prefix}-{hashlib.sha1(question.encode()).hexdigest()[:12]}"


def generate_tasks(
    n: int,
    seed: int,
    difficulties: tuple[int, ...] | list[int] = (2,),
    id_prefix: str = "t",
    exclude: set[str] | None = None,
    solution_style: str = "plain",
    correction_rate: float = 0.0,
    confirm_rate: float = 0.0,
) -> list[Task]:
    """``n`` distinct problems from ``seed`` (deterministic), difficulty cycling through ``difficulties``.

    Questions in ``exclude`` (and duplicates) are skipped; ids are a hash of the question text, so the same
    question always has the same id. ``solution_style`` only changes how solutions are written: the problems
    (and answers) of a seed are the same in every style, since the style draws from its own random stream.
    """
    if not difficulties:
        raise ValueError("difficulties must name at least one level")
    check_solution_style(solution_style, correction_rate, confirm_rate)
    rng = random.Random(seed)
    style_rng = random.Random(f"{seed}:{solution_style}")
    seen = set(exclude or ())
    out: list[Task] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(f"could only generate {len(out)} distinct problems of {n} requested")
        d = difficulties[len(out) % len(difficulties)]
        q, eqs, ans = _equations(rng, d)
        if q in seen:
            continue
        seen.add(q)
        sol = write_solution(eqs, solution_style, style_rng, correction_rate, confirm_rate)
        out.append(Task(_task_id(id_prefix, q), q, ans, sol, int(d), "arithmetic"))
    return out


def make_splits(
    n_train: int,
    n_eval: int,
    seed: int,
    difficulties: tuple[int, ...] | list[int] = (2,),
    exclude: set[str] | None = None,
    solution_style: str = "plain",
    correction_rate: float = 0.0,
    confirm_rate: float = 0.0,
) -> tuple[list[Task], list[Task]]:
    """Disjoint train/eval splits: eval comes from its own seed stream and never repeats a train question;
    no question in ``exclude`` in either; both in ``solution_style`` (:func:`generate_tasks`)."""
    ex = set(exclude or ())
    kw = {
        "difficulties": difficulties,
        "solution_style": solution_style,
        "correction_rate": correction_rate,
        "confirm_rate": confirm_rate,
    }
    train = generate_tasks(n_train, seed=seed * 2 + 0, id_prefix="train", exclude=ex, **kw)
    ev = generate_tasks(n_eval, seed=seed * 2 + 1, id_prefix="eval", exclude=ex | {t.question for t in train}, **kw)
    return train, ev


# ---------------------------------------------------------------------------------------------- I/O
def tasks_to_table(tasks: list[Task]) -> pa.Table:
    rows = [{k: v for k, v in asdict(t).items() if k in TASK_SCHEMA.names} for t in tasks]
    return pa.Table.from_pylist(rows, schema=TASK_SCHEMA)


def write_tasks(tasks: list[Task], path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(tasks_to_table(tasks), path, compression="zstd")


def read_tasks(path: Path) -> list[Task]:
    """Read a split of a "tasks" artifact (``train.parquet`` / ``eval.parquet``)."""
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    return [
        Task(r["id"], r["question"], r["answer"], r["solution"], int(r["difficulty"]), r["source"])
        for r in t.to_pylist()
    ]


TASK_SET_FILE = "task_set.json"


@dataclass(frozen=True)
class TaskSetFormat:
    """How a task set is asked and answered: the prompt template (``{question}`` placeholder) that turns a
    question into the user turn, and the answer format (``ops.answers``) responses are scored in."""

    answer_format: str = DEFAULT_FORMAT
    prompt_template: str = DEFAULT_TEMPLATE

    def override(self, answer_format: str | None = None, prompt_template: str | None = None) -> TaskSetFormat:
        """This format with a consuming stage's overrides (``None`` keeps the task set's own)."""
        return TaskSetFormat(answer_format or self.answer_format, prompt_template or self.prompt_template)


def write_task_set_format(out: Path, fmt: TaskSetFormat) -> None:
    """Record a task set's prompt template and answer format beside its splits (``task_set.json``)."""
    import json

    get_format(fmt.answer_format)
    check_template(fmt.prompt_template)
    (Path(out) / TASK_SET_FILE).write_text(json.dumps(asdict(fmt), indent=1, sort_keys=True))


def read_task_set_format(path: Path) -> TaskSetFormat:
    """The recorded format of a tasks artifact directory; an artifact without ``task_set.json`` is in
    lmforge's own format (``think_answer``, the bare question)."""
    import json

    f = Path(path) / TASK_SET_FILE
    if not f.is_file():
        return TaskSetFormat()
    d = json.loads(f.read_text())
    return TaskSetFormat(d.get("answer_format", DEFAULT_FORMAT), d.get("prompt_template", DEFAULT_TEMPLATE))


def read_task_set(
    path: Path, split: str, answer_format: str | None = None, prompt_template: str | None = None
) -> list[Task]:
    """The ``split`` of a tasks artifact as the model is asked it: each question rendered through the prompt
    template and each task carrying its answer format (the set's own unless overridden)."""
    fmt = read_task_set_format(path).override(answer_format, prompt_template)
    return [
        replace(t, question=render_prompt(fmt.prompt_template, t.question), answer_format=fmt.answer_format)
        for t in read_tasks(Path(path) / f"{split}.parquet")
    ]


class TaskFileError(ValueError):
    """A user task file that cannot be used (missing file, missing or mistyped column)."""


def is_numeric_answer(answer: str) -> bool:
    """True when ``answer`` is a number in the grammar answers are compared in (integer, decimal or fraction,
    thousands separators and ``$`` allowed): ``"42"``, ``"-3.5"``, ``"7/2"``, ``"1,200"``. ``"six"``,
    ``"nan"``, ``"inf"`` and ``"1e5"`` are not; no model answer could ever be scored correct against them."""
    return to_number(answer) is not None


def _check_answers(p: Path) -> list[str]:
    """Rows of the ``answer`` column that are empty or not numbers, named by 0-based row index."""
    import pyarrow.parquet as pq

    col = pq.read_table(p, columns=["answer"]).column("answer").to_pylist()
    empty = [i for i, a in enumerate(col) if a is None or not str(a).strip()]
    skip = set(empty)
    bad = [(i, a) for i, a in enumerate(col) if i not in skip and not is_numeric_answer(split_gsm8k(str(a))[1])]
    problems = []
    if empty:
        problems.append(f"{p}: column 'answer': {len(empty)} empty row(s) (0-based rows {empty[:10]})")
    if bad:
        shown = ", ".join(f"row {i}: {a!r}" for i, a in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        problems.append(
            f"{p}: column 'answer': {len(bad)} row(s) are not numbers ({shown}{more}; rows are 0-based); "
            "answers are compared as exact numbers, so each must be an integer, decimal or fraction "
            "such as 42, -3.5 or 7/2, alone or after '####'"
        )
    return problems


def check_task_parquet(path: str | Path) -> list[str]:
    """Problems with a user task Parquet, read from its schema and its ``answer`` column: [] when usable."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        return [f"{p}: file not found"]
    try:
        schema = pq.read_schema(p)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one clear error
        return [f"{p}: not a readable Parquet file ({e})"]
    problems = []
    for col, ok_types, what in (
        ("question", (pa.string(), pa.large_string()), "string"),
        ("answer", (pa.string(), pa.large_string(), pa.int64(), pa.int32()), "string or integer"),
    ):
        if col not in schema.names:
            problems.append(f"{p}: missing column {col!r} (has {schema.names})")
        elif schema.field(col).type not in ok_types:
            problems.append(f"{p}: column {col!r} has type {schema.field(col).type}, expected {what}")
    if "solution" in schema.names and schema.field("solution").type not in (pa.string(), pa.large_string()):
        problems.append(f"{p}: column 'solution' has type {schema.field('solution').type}, expected string")
    if not problems:
        problems += _check_answers(p)
    return problems


def load_task_parquet(path: str | Path, source: str | None = None) -> list[Task]:
    """Tasks from a user Parquet with ``question`` and ``answer`` columns (optional ``id``, ``solution``).

    A GSM8K-style answer ``"reasoning #### 42"`` becomes solution ``"reasoning"`` and answer ``"42"``.
    Raises :class:`TaskFileError` naming the file and column (and the rows) for anything unusable,
    including an answer that is not a number (:func:`is_numeric_answer`).
    """
    import pyarrow.parquet as pq

    problems = check_task_parquet(path)
    if problems:
        raise TaskFileError("; ".join(problems))
    p = Path(path)
    t = pq.read_table(p)
    cols = set(t.column_names)
    out = []
    for i, r in enumerate(t.to_pylist()):
        q, a = r["question"], r["answer"]
        if q is None or a is None or not str(q).strip() or not str(a).strip():
            raise TaskFileError(f"{p}: row {i} has an empty question or answer")
        sol = r.get("solution") if "solution" in cols else None
        sol_part, ans = split_gsm8k(str(a))
        sol = sol or sol_part
        tid = str(r["id"]) if "id" in cols and r.get("id") is not None else _task_id("user", q)
        out.append(Task(tid, str(q), normalize_answer(ans), sol or "", 0, source or p.name))
    return out
