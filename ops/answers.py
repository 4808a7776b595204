"""Answer formats: the ONE registry of how an answer is written in a response, found, normalised and compared.

Key design choice: a format is a named :class:`AnswerFormat` (extract, well-formedness, reference rendering,
comparison) and every consumer -- the ``accuracy``/``format``/``length`` rewards, rejection sampling's
verifier, evaluation's scoring (greedy, pass@k, maj@k, format rate) and SFT's rendering of worked solutions
-- calls :func:`extract`, :func:`is_correct`, :func:`answers_match` and :func:`well_formed` here with the
format's name, so they can never disagree about what counts as a correct, well-formed response.

Formats (:data:`FORMATS`):

* ``think_answer``: ``<think>...</think><answer>...</answer>``; the answer is the LAST ``<answer>`` block;
  well-formed = exactly one think block then one non-empty answer block (lmforge's own chat format).
* ``boxed``: MATH's ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces, so ``\\boxed{\\frac{1}{2}}`` is
  ``\\frac{1}{2}``; with several boxed answers the LAST one wins; well-formed = one non-empty boxed answer.
* ``gsm8k``: ``#### n``; the answer is the number right after the LAST ``####`` (text after it on that
  line is ignored, so ``#### 72 apples`` is 72); well-formed = one ``####`` and nothing after its answer.
* ``last_number``: the last number anywhere in the response; well-formed = the response has a number.
* ``exact``: the whole response (whitespace collapsed, stop tokens dropped) equals the gold string
  exactly, case and all; no numeric normalisation.

Normalisation (every format but ``exact``), :func:`normalize`: a number becomes its exact value in lowest
terms, written ``p`` or ``p/q``: thousands separators (``1,234``), currency signs (``$5``), a trailing
percent sign (``50%`` is 50, GSM8K's convention), LaTeX ``\\frac{a}{b}``/``\\dfrac``/``\\tfrac``, math
``$...$`` and a trailing ``.0`` or full stop all drop out, so ``3/4``, ``0.75`` and ``\\frac{3}{4}`` agree.
Anything else compares as text: lower-cased, whitespace collapsed, ``\\left``/``\\right`` and
``\\dfrac`` spelled plainly. A response whose answer cannot be found is unparsable: never correct, and
never well-formed (format reward 0).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
DEFAULT_FORMAT = "think_answer"
DEFAULT_TEMPLATE = "{question}"


class UnknownFormat(ValueError):
    """An answer-format name that is not in :data:`FORMATS`."""


# ---------------------------------------------------------------------------------------------- numbers
_NUM_RE = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)(/\d+)?")
_GROUPED_RE = re.compile(r"[-+]?\d{1,3}(,\d{3})+(\.\d*)?")
_FRAC_RE = re.compile(r"([-+]?)\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}")
_FRAC_DIGITS_RE = re.compile(r"([-+]?)\\[dt]?frac(\d)(\d)")
_CURRENCY = ("\\$", "$", "£", "€", "¥")
# a number as it appears inside running text: optional sign and currency, grouped or plain digits,
# a decimal part, a fraction, a percent sign; or a LaTeX fraction of two such numbers
_NUM_IN_TEXT = re.compile(
    r"-?[$£€¥]?-?\\[dt]?frac\{-?\d[\d,]*(?:\.\d+)?\}\{\d[\d,]*(?:\.\d+)?\}"
    r"|-?[$£€¥]?-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?%?"
)


def _strip_math(t: str) -> str:
    t = t.strip()
    for a, b in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(t) > len(a) + len(b) and t.startswith(a) and t.endswith(b):
            t = t[len(a) : -len(b)].strip()
    return t


def to_number(s: str | None) -> Fraction | None:
    """The exact value of ``s`` if it is a number in the answer grammar (integer, decimal, fraction ``a/b``
    or ``\\frac{a}{b}``, optional sign, thousands separators, currency and percent signs), else None.
    ``"six"``, ``"nan"``, ``"inf"`` and ``"1e5"`` are not numbers."""
    if s is None:
        return None
    t = _strip_math(str(s))
    for c in _CURRENCY:
        t = t.replace(c, "")
    t = t.replace("\\!", "").replace("{,}", ",").replace("\\%", "%").strip()
    if t.endswith("%"):
        t = t[:-1].strip()
    if t.endswith(".") and _NUM_RE.fullmatch(t[:-1] or "x"):
        t = t[:-1]
    if _GROUPED_RE.fullmatch(t):
        t = t.replace(",", "")
    m = _FRAC_RE.fullmatch(t) or _FRAC_DIGITS_RE.fullmatch(t)
    if m:
        a, b = to_number(m.group(2)), to_number(m.group(3))
        if a is None or b is None or b == 0:
            return None
        return -(a / b) if m.group(1) == "-" else a / b
    if not _NUM_RE.fullmatch(t):
        return None
    try:
        return Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None


def normalize(s: str) -> str:
    """Canonical text of an answer: a number in lowest terms (``"1,200.0"`` -> ``"1200"``, ``"6/4"`` ->
    ``"3/2"``, ``"\\frac{3}{4}"`` and ``"0.75"`` -> ``"3/4"``); other text lower-cased with whitespace
    collapsed and LaTeX sizing commands dropped."""
    n = to_number(s)
    if n is not None:
        return str(n.numerator) if n.denominator == 1 else f"{n.numerator}/{n.denominator}"
    t = _strip_math(str(s))
    for a, b in (("\\left", ""), ("\\right", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\!", "")):
        t = t.replace(a, b)
    t = t.rstrip(".") if not t.endswith("..") else t
    return " ".join(t.lower().split())


# Any model's end-of-turn token: <|im_end|>, <|endoftext|> (lmforge, ChatML), <|eot_id|> (Llama 3), </s>...
_STOP_RE = re.compile(r"(?:<\|[A-Za-z0-9_]+\|>|</s>)$")


def strip_stop(text: str) -> str:
    """``text`` without a trailing end-of-turn token (whichever model's it is)."""
    t = text.rstrip()
    m = _STOP_RE.search(t)
    return t[: m.start()] if m else text


# ---------------------------------------------------------------------------------------------- formats
@dataclass(frozen=True)
class AnswerFormat:
    name: str
    description: str
    extract_raw: Callable[[str], str | None]  # the answer text as written, or None when there is none
    well_formed: Callable[[str], bool]  # the whole response has the format's shape
    render: Callable[[str, str], str]  # (worked solution, answer) -> a reference response in this format
    numeric: bool = True  # compare through normalize(); False: exact string equality


FORMATS: dict[str, AnswerFormat] = {}


def register_format(fmt: AnswerFormat) -> AnswerFormat:
    if fmt.name in FORMATS:
        raise ValueError(f"answer format {fmt.name!r} registered twice")
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str | None) -> AnswerFormat:
    """The format called ``name`` (``None``: the default, ``think_answer``)."""
    key = DEFAULT_FORMAT if name is None else name
    if key not in FORMATS:
        raise UnknownFormat(f"unknown answer format {key!r}; known formats: {', '.join(sorted(FORMATS))}")
    return FORMATS[key]


def check_format_name(name: str | None) -> str | None:
    """``name`` itself when it names a format (or is None); raises :class:`UnknownFormat` otherwise. Used as a
    pydantic validator, so a spec naming an unknown format fails at compile time with file, stage and field."""
    if name is not None:
        get_format(name)
    return name


def check_template(template: str | None) -> str | None:
    """``template`` itself when it is a prompt template with exactly the ``{question}`` placeholder."""
    if template is None:
        return None
    try:
        template.format(question="")
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"prompt template {template!r} is not usable ({e!r}); write the question as {{question}} and "
            "double any other brace ({{ }})"
        ) from None
    if "{question}" not in template:
        raise ValueError(f"prompt template {template!r} has no {{question}} placeholder")
    return template


def render_prompt(template: str | None, question: str) -> str:
    return (template or DEFAULT_TEMPLATE).format(question=question)


def extract(text: str | None, fmt: str | None = None) -> str | None:
    """Normalised answer of a response in format ``fmt``, or None when it has none (unparsable)."""
    if not text:
        return None
    f = get_format(fmt)
    raw = f.extract_raw(text)
    if raw is None or not raw.strip():
        return None
    return normalize(raw) if f.numeric else " ".join(raw.split())


def answers_match(pred: str | None, gold: str, fmt: str | None = None) -> bool:
    """Whether an already extracted prediction equals ``gold`` under format ``fmt``'s comparison."""
    if pred is None or not str(pred).strip():
        return False
    if not get_format(fmt).numeric:
        return " ".join(str(pred).split()) == " ".join(str(gold).split())
    a, b = to_number(pred), to_number(gold)
    if a is not None and b is not None:
        return a == b
    return normalize(str(pred)) == normalize(str(gold))


def is_correct(text: str | None, gold: str, fmt: str | None = None) -> bool:
    """Whether a full response's answer (in format ``fmt``) equals ``gold``; unparsable -> False."""
    return answers_match(extract(text, fmt), gold, fmt)


def well_formed(text: str | None, fmt: str | None = None) -> bool:
    """Whether the whole response has format ``fmt``'s shape with a non-empty answer (the format reward)."""
    return bool(text) and get_format(fmt).well_formed(text)


# ---- think_answer
_ANSWER_RE = re.compile(re.escape(ANSWER_OPEN) + r"(.*?)" + re.escape(ANSWER_CLOSE), re.S)
_NO_TAG = r"(?:(?!<think>|</think>|<answer>|</answer>).)*"
_THINK_ANSWER_RE = re.compile(
    r"\s*<think>(?P<think>" + _NO_TAG + r")</think>\s*<answer>(?P<answer>" + _NO_TAG + r")</answer>"
    r"\s*(?:<\|[A-Za-z0-9_]+\|>|</s>)?\s*",  # the model's end-of-turn token, if any
    re.S,
)


def _think_extract(text: str) -> str | None:
    found = _ANSWER_RE.findall(text)
    return found[-1] if found else None


def _think_ok(text: str) -> bool:
    m = _THINK_ANSWER_RE.fullmatch(text)
    return bool(m and m.group("answer").strip())


def format_think_answer(reasoning: str, answer: str) -> str:
    return f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


register_format(
    AnswerFormat(
        "think_answer",
        "<think>reasoning</think><answer>answer</answer> (the last <answer> block)",
        _think_extract,
        _think_ok,
        format_think_answer,
    )
)


# ---- boxed
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def boxed_contents(text: str) -> list[str]:
    """The contents of every ``\\boxed{...}``/``\\fbox{...}`` in order, braces balanced (an unclosed one is
    skipped)."""
    out = []
    for m in _BOX_RE.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def _boxed_extract(text: str) -> str | None:
    found = boxed_contents(text)
    return found[-1] if found else None


def _boxed_ok(text: str) -> bool:
    found = boxed_contents(text)
    return len(found) == 1 and bool(found[0].strip())


def _boxed_render(solution: str, answer: str) -> str:
    got = _boxed_extract(solution)
    if got is not None and answers_match(normalize(got), answer, "boxed"):
        return solution
    return f"{solution}\nThe answer is $\\boxed{{{answer}}}$.".lstrip()


register_format(
    AnswerFormat("boxed", "\\boxed{answer} (MATH; the last boxed answer)", _boxed_extract, _boxed_ok, _boxed_render)
)


# ---- gsm8k
def _gsm8k_extract(text: str) -> str | None:
    if "####" not in text:
        return None
    tail = strip_stop(text.rsplit("####", 1)[1]).strip().split("\n", 1)[0].strip()
    m = _NUM_IN_TEXT.match(tail)
    if m:
        return m.group(0)
    return tail or None


def _gsm8k_ok(text: str) -> bool:
    if text.count("####") != 1:
        return False
    tail = strip_stop(text.split("####", 1)[1]).strip()
    return bool(tail) and "\n" not in tail and _gsm8k_extract(text) == tail


def split_gsm8k(solution: str) -> tuple[str | None, str]:
    """``"reasoning #### 42"`` -> ``("reasoning", "42")``; text without ``####`` -> ``(None, text)``."""
    if "####" in solution:
        sol, ans = solution.rsplit("####", 1)
        return sol.strip(), ans.strip()
    return None, solution.strip()


register_format(
    AnswerFormat(
        "gsm8k",
        "#### answer (GSM8K; the number after the last ####)",
        _gsm8k_extract,
        _gsm8k_ok,
        lambda solution, answer: f"{solution}\n#### {answer}".lstrip(),
    )
)


# ---- last_number
def _last_number(text: str) -> str | None:
    found = _NUM_IN_TEXT.findall(strip_stop(text))
    return found[-1] if found else None


register_format(
    AnswerFormat(
        "last_number",
        "the last number in the response",
        _last_number,
        lambda text: _last_number(text) is not None,
        lambda solution, answer: f"{solution}\nThe answer is {answer}.".lstrip(),
    )
)


# ---- exact
def _exact(text: str) -> str | None:
    t = " ".join(strip_stop(text).split())
    return t or None


register_format(
    AnswerFormat(
        "exact",
        "the whole response equals the answer string (whitespace collapsed, case-sensitive)",
        _exact,
        lambda text: _exact(text) is not None,
        lambda solution, answer: answer,
        numeric=False,
    )
)
