"""Named, versioned, pluggable rule rewards for RL and rejection sampling.

Key design choice: a reward is a *batch* function ``score(batch) -> list[float]`` registered under a name
with a version string; the batch carries the group structure (samples of one prompt are consecutive) so
group-relative rewards such as Kimi k1.5's length penalty fit the same interface as per-sample ones. The
stage config names rewards (``[accuracy, format, {language: {weight: 0.1, target: en}}]``); the version of
every named reward is hashed into the stage version, so changing a reward's code re-runs the stages that use
it. An unknown name is one clear error listing the known ones, raised when the config is validated.

All answer parsing goes through ``ops.answers`` (one registry of answer formats): the rewards that read an
answer take an ``answer_format`` parameter (default ``think_answer``); a stage fills it from its task set's
format with :func:`with_answer_format` unless the spec sets it on the reward.

Built-in rewards:

* ``accuracy`` (v1): 1 if the answer parsed in the answer format equals the gold answer, else 0.
* ``format`` (v1): 1 if the response has the answer format's shape (default: exactly
  ``<think>...</think><answer>...</answer>``), else 0; an unparsable response scores 0.
* ``language`` (v1): share of the words in the reasoning written in the target language's script (R1's
  language-consistency reward); numbers and symbols are neutral; a response with no words scores 1.
* ``length`` (v1): Kimi k1.5 length penalty within each group: ``lambda = 0.5 - (len - min)/(max - min)``;
  correct samples get ``lambda``, incorrect ones ``min(0, lambda)``; 0 for a group of equal lengths.
* ``random`` (v1): a control, not a training signal: 1 with probability ``p`` (default 0.5, as in the
  Spurious Rewards study), else 0, drawn per sample without reading the gold answer, so it is independent of
  correctness. The draw is a hash of ``(seed, step key, position in the batch)``: the step key is the batch's
  ``step`` when the caller gives one, else a digest of the batch's completions (which differ at every step, as
  each step samples with its own seed). The same run therefore scores the same, including after a resume.

A format-only control is RL with ``rewards: [format]``; a random-reward control is ``rewards: [random]`` (or
``[{random: {p: 0.5, seed: 0}}]``). ``RANDOM_REWARDS`` names the rewards a report treats as controls.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ops.answers import check_format_name, well_formed
from ops.tasks import is_correct, split_response

FORMAT_PARAM = "answer_format"


@dataclass
class RewardBatch:
    """What a reward sees: one entry per sampled completion, groups of ``group_size`` consecutive samples."""

    completions: list[str]
    answers: list[str]  # gold answer of each completion's prompt
    lengths: list[int]  # completion length in tokens
    group_size: int = 1
    step: int | None = None  # the RL step, for rewards that draw per step (``random``); optional


@dataclass(frozen=True)
class Reward:
    name: str
    version: str
    fn: Callable[..., list[float]]
    description: str
    params: tuple[str, ...] = ()  # accepted keyword parameters


REWARDS: dict[str, Reward] = {}


class UnknownReward(ValueError):
    pass


class RewardParamError(ValueError):
    """A parameter of one entry of a reward list that is not what the reward takes; ``where`` locates it in
    the list (``0.accuracy``: entry 0's parameters, ``1.language.target``: one parameter)."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message


def register_reward(name: str, version: str, description: str, params: tuple[str, ...] = ()):
    """Decorator: register ``fn(batch, **params) -> list[float]`` as reward ``name``."""

    def deco(fn):
        if name in REWARDS:
            raise ValueError(f"reward {name!r} registered twice")
        REWARDS[name] = Reward(name, version, fn, description, params)
        return fn

    return deco


def get_reward(name: str) -> Reward:
    if name not in REWARDS:
        raise UnknownReward(f"unknown reward {name!r}; known rewards: {sorted(REWARDS)}")
    return REWARDS[name]


@dataclass(frozen=True)
class RewardSpec:
    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


def parse_specs(items: list[Any]) -> list[RewardSpec]:
    """``["accuracy", {"language": {"weight": 0.1, "target": "en"}}]`` -> specs; unknown name/param -> error,
    a parameter value of the wrong kind -> :class:`RewardParamError` saying where."""
    specs = []
    for i, it in enumerate(items):
        if isinstance(it, str):
            name, opts = it, {}
        elif isinstance(it, dict) and len(it) == 1:
            name, opts = next(iter(it.items()))
        else:
            raise ValueError(f"a reward is a name or a one-key mapping {{name: {{weight, ...}}}}, got {it!r}")
        r = get_reward(name)
        if not isinstance(opts, dict | None):
            raise RewardParamError(
                f"{i}.{name}",
                f"parameters are a mapping of {['weight', *r.params]} (e.g. {{{name}: {{weight: 0.5}}}}), "
                f"got {opts!r}",
            )
        opts = dict(opts or {})
        weight = opts.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise RewardParamError(f"{i}.{name}.weight", f"expected a number, got {weight!r}")
        bad = set(opts) - set(r.params)
        if bad:
            raise ValueError(
                f"reward {name!r} has no parameter(s) {sorted(bad)}; it accepts {list(r.params)}"
            )
        if FORMAT_PARAM in opts:
            check_format_name(opts[FORMAT_PARAM])
        if name == "random":
            _check_random_params(opts)
        if name == "language" and "target" in opts:
            try:
                check_language(opts["target"])
            except ValueError as e:
                raise RewardParamError(f"{i}.language.target", str(e)) from None
        specs.append(RewardSpec(name, float(weight), opts))
    if not specs:
        raise ValueError("at least one reward is required")
    return specs


def with_answer_format(specs: list[RewardSpec], answer_format: str) -> list[RewardSpec]:
    """``specs`` with ``answer_format`` given to every reward that reads answers and was not given one."""
    check_format_name(answer_format)
    return [
        RewardSpec(s.name, s.weight, {FORMAT_PARAM: answer_format, **s.params})
        if FORMAT_PARAM in get_reward(s.name).params
        else s
        for s in specs
    ]


def reward_versions(specs: list[RewardSpec]) -> dict[str, str]:
    return {s.name: get_reward(s.name).version for s in specs}


def score(specs: list[RewardSpec], batch: RewardBatch) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted total per completion and each component (unweighted) by name."""
    comps: dict[str, list[float]] = {}
    total = [0.0] * len(batch.completions)
    for s in specs:
        vals = [float(v) for v in get_reward(s.name).fn(batch, **s.params)]
        if len(vals) != len(total):
            raise RuntimeError(f"reward {s.name!r} returned {len(vals)} scores for {len(total)} completions")
        comps[s.name] = vals
        total = [t + s.weight * v for t, v in zip(total, vals)]
    return total, comps


# ------------------------------------------------------------------------------------------------ built-ins
@register_reward(
    "accuracy", "v1", "1 if the answer (in the answer format) equals the gold answer", params=(FORMAT_PARAM,)
)
def _accuracy(batch: RewardBatch, answer_format: str | None = None) -> list[float]:
    return [1.0 if is_correct(c, a, answer_format) else 0.0 for c, a in zip(batch.completions, batch.answers)]


@register_reward(
    "format",
    "v1",
    "1 if the response has the answer format's shape (default <think>..</think><answer>..</answer>)",
    params=(FORMAT_PARAM,),
)
def _format(batch: RewardBatch, answer_format: str | None = None) -> list[float]:
    return [1.0 if well_formed(c, answer_format) else 0.0 for c in batch.completions]


_SCRIPTS = {
    "en": "LATIN",
    "fr": "LATIN",
    "de": "LATIN",
    "es": "LATIN",
    "it": "LATIN",
    "pt": "LATIN",
    "ru": "CYRILLIC",
    "uk": "CYRILLIC",
    "el": "GREEK",
    "ar": "ARABIC",
    "he": "HEBREW",
    "zh": "CJK",
    "ja": "CJK",
    "ko": "HANGUL",
    "hi": "DEVANAGARI",
}


LANGUAGES = tuple(sorted(_SCRIPTS))  # targets of language consistency (the reward, evaluate's metric)


def check_language(target: Any) -> None:
    """Raise ``ValueError`` unless ``target`` is a language code whose script is known."""
    if not isinstance(target, str) or target not in _SCRIPTS:
        raise ValueError(f"unknown language {target!r}; known: {', '.join(LANGUAGES)}")


def _word_script(word: str) -> str | None:
    """The script of a word's first letter (``LATIN``, ``CJK``...), None for a word without letters."""
    for ch in word:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            if name.startswith("CJK") or "HIRAGANA" in name or "KATAKANA" in name:
                return "CJK"
            return name.split(" ")[0] if name else None
    return None


def language_share(text: str, target: str = "en") -> float:
    """Share of words (whitespace/punctuation separated runs with a letter) in the target script."""
    check_language(target)
    want = _SCRIPTS[target]
    words, cur = [], []
    for ch in text:
        if ch.isalpha():
            # CJK scripts have no spaces: each ideograph counts as one word.
            if _word_script(ch) == "CJK":
                if cur:
                    words.append("".join(cur))
                    cur = []
                words.append(ch)
            else:
                cur.append(ch)
        elif cur:
            words.append("".join(cur))
            cur = []
    if cur:
        words.append("".join(cur))
    scripts = [s for s in (_word_script(w) for w in words) if s]
    if not scripts:
        return 1.0
    return sum(s == want for s in scripts) / len(scripts)


@register_reward(
    "language", "v1", "share of reasoning words in the target language's script (R1)", params=("target",)
)
def _language(batch: RewardBatch, target: str = "en") -> list[float]:
    out = []
    for c in batch.completions:
        think, _ = split_response(c)
        out.append(language_share(think if think is not None else c, target))
    return out


@register_reward(
    "length", "v1", "Kimi k1.5 length penalty within each group of samples", params=(FORMAT_PARAM,)
)
def _length(batch: RewardBatch, answer_format: str | None = None) -> list[float]:
    g = max(batch.group_size, 1)
    out = [0.0] * len(batch.completions)
    for start in range(0, len(out), g):
        lens = batch.lengths[start : start + g]
        lo, hi = min(lens), max(lens)
        if hi == lo:
            continue
        for i in range(start, min(start + g, len(out))):
            lam = 0.5 - (batch.lengths[i] - lo) / (hi - lo)
            ok = is_correct(batch.completions[i], batch.answers[i], answer_format)
            out[i] = lam if ok else min(0.0, lam)
    return out


# ------------------------------------------------------------------------------------------------ controls
RANDOM_REWARDS = ("random",)


def _check_random_params(opts: dict) -> None:
    p = opts.get("p", 0.5)
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"reward 'random': p must be a probability in [0, 1], got {p!r}")
    seed = opts.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"reward 'random': seed must be an integer, got {seed!r}")


def _step_key(batch: RewardBatch) -> str:
    if batch.step is not None:
        return f"step{int(batch.step)}"
    h = hashlib.sha256()
    for c in batch.completions:
        h.update(c.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def random_draws(batch: RewardBatch, p: float = 0.5, seed: int = 0) -> list[float]:
    """Bernoulli(``p``) per completion from ``(seed, step key, position)``; the gold answers are not read."""
    key = _step_key(batch)
    out = []
    for i in range(len(batch.completions)):
        d = hashlib.sha256(f"{int(seed)}|{key}|{i}".encode()).digest()
        u = int.from_bytes(d[:8], "big") / 2.0**64
        out.append(1.0 if u < float(p) else 0.0)
    return out


@register_reward(
    "random",
    "v1",
    "control: Bernoulli(p) per sample, independent of the answer (Spurious Rewards)",
    params=("p", "seed"),
)
def _random(batch: RewardBatch, p: float = 0.5, seed: int = 0) -> list[float]:
    return random_draws(batch, p, seed)


def is_control(reward_items: list[Any]) -> str | None:
    """``"random"`` when a stage's reward list is a random-reward control, ``"format"`` when it rewards only the
    format, else None (a real reward)."""
    names = [
        it if isinstance(it, str) else next(iter(it)) for it in reward_items if isinstance(it, str | dict)
    ]
    if names and all(n in RANDOM_REWARDS for n in names):
        return "random"
    if names == ["format"]:
        return "format"
    return None
