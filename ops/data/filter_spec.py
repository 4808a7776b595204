"""The filter chain as the config names it: known filters, their parameters and lmforge's defaults.

Key design choice: this module imports nothing heavy, so a spec is validated (unknown filter, unknown
parameter) when the pipeline is compiled, before datatrove is ever imported.
"""

from __future__ import annotations

from typing import Any

# Parameters each filter accepts (checked before anything runs; no datatrove import needed for that).
FILTER_PARAMS: dict[str, set[str]] = {
    "language": {"languages", "min_score"},
    "gopher_repetition": {
        "dup_line_frac",
        "dup_para_frac",
        "dup_line_char_frac",
        "dup_para_char_frac",
        "top_n_grams",
        "dup_n_grams",
    },
    "gopher_quality": {
        "min_doc_words",
        "max_doc_words",
        "min_avg_word_length",
        "max_avg_word_length",
        "max_symbol_word_ratio",
        "max_bullet_lines_ratio",
        "max_ellipsis_lines_ratio",
        "max_non_alpha_words_ratio",
        "min_stop_words",
        "stop_words",
    },
    "c4": {
        "split_paragraph",
        "remove_citations",
        "filter_no_terminal_punct",
        "min_num_sentences",
        "min_words_per_line",
        "max_word_length",
        "filter_lorem_ipsum",
        "filter_javascript",
        "filter_curly_bracket",
        "filter_policy",
    },
    "fineweb": {
        "line_punct_thr",
        "line_punct_exclude_zero",
        "stop_chars",
        "short_line_thr",
        "short_line_length",
        "char_duplicates_ratio",
        "new_line_ratio",
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
                raise ValueError(f"filters[{i}]: parameters of {name!r} must be a mapping")
        else:
            raise ValueError(f"filters[{i}]: expected a filter name or {{name: parameters}}, got {item!r}")
        if name not in FILTER_PARAMS:
            raise ValueError(f"filters[{i}]: unknown filter {name!r}; known: {sorted(FILTER_PARAMS)}")
        unknown = set(params) - FILTER_PARAMS[name]
        if unknown:
            raise ValueError(
                f"filters[{i}]: {name} has no parameter(s) {sorted(unknown)}; "
                f"known: {sorted(FILTER_PARAMS[name])}"
            )
        if any(n == name for n, _ in out):
            raise ValueError(f"filters[{i}]: filter {name!r} listed twice")
        out.append((name, {**LMFORGE_DEFAULTS.get(name, {}), **params}))
    return out
