"""The filter chain as the config names it: known filters, their parameters and lmforge's defaults.

Key design choice: this module imports nothing heavy, so a spec is validated (unknown filter, unknown
parameter, a parameter value of the wrong type) when the pipeline is compiled, before datatrove is ever
imported.
"""

from __future__ import annotations

from typing import Any

from pydantic import StrictBool, StrictFloat, StrictInt, StrictStr, TypeAdapter, ValidationError

# Parameters each filter accepts and their value types (datatrove's __init__ annotations, strict: a string is
# not a number), checked before anything runs; no datatrove import needed for that. Each type comes with the
# words an error uses for it.
_INT = (StrictInt, "an integer")
_INT_OR_NULL = (StrictInt | None, "an integer, or null (check off)")
_NUM = (StrictFloat, "a number")
_NUM_OR_NULL = (StrictFloat | None, "a number, or null (check off)")
_BOOL = (StrictBool, "true or false")
_NGRAMS = (tuple[tuple[StrictInt, StrictFloat], ...], "a list of [n, fraction] pairs")
FILTER_PARAMS: dict[str, dict[str, tuple[Any, str]]] = {
    "language": {"languages": (list[StrictStr], "a list of language codes"), "min_score": _NUM},
    "gopher_repetition": {
        "dup_line_frac": _NUM_OR_NULL,
        "dup_para_frac": _NUM_OR_NULL,
        "dup_line_char_frac": _NUM_OR_NULL,
        "dup_para_char_frac": _NUM_OR_NULL,
        "top_n_grams": _NGRAMS,
        "dup_n_grams": _NGRAMS,
    },
    "gopher_quality": {
        "min_doc_words": _INT_OR_NULL,
        "max_doc_words": _INT_OR_NULL,
        "min_avg_word_length": _INT_OR_NULL,
        "max_avg_word_length": _INT_OR_NULL,
        "max_symbol_word_ratio": _NUM_OR_NULL,
        "max_bullet_lines_ratio": _NUM_OR_NULL,
        "max_ellipsis_lines_ratio": _NUM_OR_NULL,
        "max_non_alpha_words_ratio": _NUM_OR_NULL,
        "min_stop_words": _INT_OR_NULL,
        "stop_words": (list[StrictStr] | None, "a list of words, or null (datatrove's list)"),
    },
    "c4": {
        "split_paragraph": _BOOL,
        "remove_citations": _BOOL,
        "filter_no_terminal_punct": _BOOL,
        "min_num_sentences": _INT,
        "min_words_per_line": _INT,
        "max_word_length": _INT,
        "filter_lorem_ipsum": _BOOL,
        "filter_javascript": _BOOL,
        "filter_curly_bracket": _BOOL,
        "filter_policy": _BOOL,
    },
    "fineweb": {
        "line_punct_thr": _NUM,
        "line_punct_exclude_zero": _BOOL,
        "stop_chars": (tuple[StrictStr, ...] | None, "a list of characters, or null (datatrove's set)"),
        "short_line_thr": _NUM,
        "short_line_length": _INT,
        "char_duplicates_ratio": _NUM,
        "new_line_ratio": _NUM,
    },
}
LMFORGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "language": {"languages": ["en"], "min_score": 0.65},
    "c4": {"filter_curly_bracket": False, "filter_no_terminal_punct": False},
    "gopher_quality": {"max_non_alpha_words_ratio": 0.6},
}
DEFAULT_CHAIN = ("language", "gopher_repetition", "gopher_quality", "c4", "fineweb")


def normalize_chain(spec: list[str | dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """``[name | {name: params}]`` -> ``[(name, params)]``; raises ``ValueError`` naming the bad entry.

    ``{language: [en, fr]}`` is short for ``{language: {languages: [en, fr]}}``.
    """
    out: list[tuple[str, dict[str, Any]]] = []
    for i, item in enumerate(spec):
        if isinstance(item, str):
            name, params = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, params = next(iter(item.items()))
            if name == "language" and isinstance(params, list | str):
                params = {"languages": [params] if isinstance(params, str) else list(params)}
            if params is None:
                params = {}
            if not isinstance(params, dict):
                also = ", or a list of language codes" if name == "language" else ""
                raise ValueError(f"filters[{i}]: parameters of {name!r} must be a mapping{also}")
        else:
            raise ValueError(f"filters[{i}]: expected a filter name or {{name: parameters}}, got {item!r}")
        if name not in FILTER_PARAMS:
            raise ValueError(f"filters[{i}]: unknown filter {name!r}; known: {sorted(FILTER_PARAMS)}")
        unknown = set(params) - set(FILTER_PARAMS[name])
        if unknown:
            raise ValueError(
                f"filters[{i}]: {name} has no parameter(s) {sorted(unknown)}; "
                f"known: {sorted(FILTER_PARAMS[name])}"
            )
        for p, v in params.items():
            tp, words = FILTER_PARAMS[name][p]
            try:
                TypeAdapter(tp).validate_python(v)
            except ValidationError:
                raise ValueError(f"filters[{i}]: {name} parameter {p!r} must be {words}, got {v!r}") from None
        if any(n == name for n, _ in out):
            raise ValueError(f"filters[{i}]: filter {name!r} listed twice")
        out.append((name, {**LMFORGE_DEFAULTS.get(name, {}), **params}))
    return out
