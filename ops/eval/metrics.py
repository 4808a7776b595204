"""Evaluation metrics and their uncertainty: pass@k, maj@k, bits per byte, 95% intervals, paired tests.

Key design choice: every number that the report compares carries an interval computed from the eval set
itself, and comparisons between two models on the same items are *paired* (per-item differences), which is
far tighter than comparing two independent intervals. A change is called "beyond noise" only when the 95%
interval of the difference excludes zero; nothing here ever rounds a non-effect into an effect.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence

Z95 = 1.959963984540054


# ---- pass@k and maj@k ------------------------------------------------------------------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al. 2021):
    ``1 - C(n-c, k) / C(n, k)``, the probability that a random k-subset holds at least one correct sample."""
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    # product form avoids huge binomials: C(n-c,k)/C(n,k) = prod_{i=n-c+1}^{n} (1 - k/i)
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def majority_vote(answers: Sequence[str | None]) -> list[str]:
    """The answers with the highest vote count (ties kept); ``None`` (unparseable) does not vote."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return []
    top = max(counts.values())
    return [a for a, c in counts.items() if c == top]


def maj_at_k(
    answers: Sequence[str | None],
    gold: str,
    k: int | None = None,
    correct: Callable[[str, str], bool] | None = None,
) -> float:
    """maj@k for one item: majority vote over the first ``k`` sampled answers, scored against ``gold``.

    A tie between several answers is broken uniformly at random *in expectation*: the item scores the
    fraction of tied answers that are correct (so the estimate does not depend on sample order).
    ``answers`` should already be normalised (the extracted answer strings).
    """
    k = len(answers) if k is None else k
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj_at_k: need 1 <= k <= {len(answers)}, got {k}")
    winners = majority_vote(answers[:k])
    if not winners:
        return 0.0
    ok = correct or (lambda a, g: a.strip() == str(g).strip())
    return sum(1.0 for w in winners if ok(w, gold)) / len(winners)


# ---- bits per byte ---------------------------------------------------------------------------------------
def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """Summed negative log-likelihood (nats) of a text divided by its UTF-8 size in bits: comparable across
    tokenizers because the denominator does not depend on how the text was split."""
    if n_bytes <= 0:
        raise ValueError("bits_per_byte: no bytes scored")
    return nll_nats / (math.log(2) * n_bytes)


# ---- intervals -------------------------------------------------------------------------------------------
def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion; sensible at 0/n and n/n where the normal interval is not."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # clamp so that float rounding never puts the estimate outside its own interval (0/n, n/n)
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def mean_interval(values: Sequence[float], z: float = Z95) -> tuple[float, float | None, float | None]:
    """(mean, low, high) with the normal interval mean ± z·sd/√n; no interval below two values."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_interval: no values")
    m = sum(values) / n
    if n < 2:
        return (m, None, None)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    return (m, m - half, m + half)


def proportion(values: Sequence[float | bool]) -> dict:
    """A rate over items as ``{value, low, high, n}``: Wilson for 0/1 data, normal for fractional scores."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return {"value": None, "low": None, "high": None, "n": 0}
    s = sum(vals)
    if all(v in (0.0, 1.0) for v in vals):
        lo, hi = wilson_interval(s, n)
    else:
        _, lo, hi = mean_interval(vals)
        lo = None if lo is None else max(0.0, lo)
        hi = None if hi is None else min(1.0, hi)
    return {"value": s / n, "low": lo, "high": hi, "n": n}


def mean_with_interval(values: Sequence[float]) -> dict:
    vals = [float(v) for v in values]
    if not vals:
        return {"value": None, "low": None, "high": None, "n": 0}
    m, lo, hi = mean_interval(vals)
    return {"value": m, "low": lo, "high": hi, "n": len(vals)}


def bootstrap_ratio_interval(
    num: Sequence[float], den: Sequence[float], n_boot: int = 1000, seed: int = 0, scale: float = 1.0
) -> tuple[float, float]:
    """Percentile bootstrap (resampling units, e.g. documents) of ``scale * sum(num) / sum(den)``."""
    n = len(num)
    if n == 0:
        raise ValueError("bootstrap_ratio_interval: no units")
    rng = random.Random(seed)
    stats = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        d = sum(den[i] for i in idx)
        if d > 0:
            stats.append(scale * sum(num[i] for i in idx) / d)
    stats.sort()
    return (stats[int(0.025 * (len(stats) - 1))], stats[int(math.ceil(0.975 * (len(stats) - 1)))])


# ---- differences ------------------------------------------------------------------------------------------
def _p_two_sided(zscore: float) -> float:
    return math.erfc(abs(zscore) / math.sqrt(2))


def _interval(m: float, se: float, n: int, z: float) -> dict:
    """The difference ``m`` with its standard error: interval, two-sided p and whether it excludes 0."""
    if se == 0.0:
        # every unit moved by exactly the same amount: zero is excluded iff that amount is not zero
        return {"diff": m, "se": 0.0, "low": m, "high": m, "p": 0.0 if m else 1.0, "n": n,
                "beyond_noise": m != 0.0}
    lo, hi = m - z * se, m + z * se
    return {"diff": m, "se": se, "low": lo, "high": hi, "p": _p_two_sided(m / se), "n": n,
            "beyond_noise": lo > 0 or hi < 0}


def paired_difference(a: Sequence[float], b: Sequence[float], z: float = Z95) -> dict:
    """Per-item paired difference ``b - a`` (same items, same order): mean, standard error, 95% interval,
    two-sided p (normal approximation) and ``beyond_noise`` = the interval excludes 0.

    For 0/1 correctness this is the normal form of McNemar's test: only discordant items move the mean.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} vs {len(b)} values; pair the same items")
    n = len(a)
    if n == 0:
        return {"diff": None, "se": None, "low": None, "high": None, "p": None, "n": 0, "beyond_noise": False}
    d = [float(y) - float(x) for x, y in zip(a, b)]
    m = sum(d) / n
    if n < 2:
        return {"diff": m, "se": None, "low": None, "high": None, "p": None, "n": n, "beyond_noise": False}
    sd = math.sqrt(sum((v - m) ** 2 for v in d) / (n - 1))
    return _interval(m, sd / math.sqrt(n), n, z)


def unpaired_difference(a: Sequence[float], b: Sequence[float], z: float = Z95) -> dict:
    """``mean(b) - mean(a)`` for independent samples (Welch standard error); same keys as paired."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return {"diff": None, "se": None, "low": None, "high": None, "p": None, "n": min(na, nb),
                "beyond_noise": False}
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    return _interval(mb - ma, math.sqrt(va / na + vb / nb), min(na, nb), z)


def seed_spread(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation, min and max over runs that differ only by seed."""
    n = len(values)
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": m, "sd": sd, "min": min(values), "max": max(values), "n": n}


# ---- paired gains of runs from one start (RL or distillation seeds) ----------------------------------------
def mean_se(xs: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error over seeds (``None`` with a single seed)."""
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) / math.sqrt(len(xs))


def paired_gains(runs: list[dict], start: dict, keys=("greedy", "sampled")) -> dict:
    """``{"gain_<key>": mean, se, per-seed gains, significant}``: each run's ``after[key]`` minus the shared
    start's; significant = at least 3 seeds and mean gain above twice its standard error."""
    out = {}
    for key in keys:
        gains = [r["after"][key] - start[key] for r in runs]
        m, se = mean_se(gains)
        out[f"gain_{key}"] = {
            "mean": m,
            "se": se,
            "gains": gains,
            "significant": se is not None and len(gains) >= 3 and m > 2 * se,
        }
    return out


def item_level_gains(runs: list[dict], start: dict, keys=("greedy", "sampled")) -> dict:
    """``{"items_<key>": paired difference over items}``: each held-out item's score averaged over the seeds'
    runs minus the start's on the same item (McNemar-style normal interval, below). The seed SE of
    :func:`paired_gains` measures RL's run-to-run spread on fixed items; this one measures whether the gain
    would hold on other items of the same distribution."""
    out = {}
    for key in keys:
        per_run = [r["after"].get(f"{key}_items") for r in runs]
        before = start.get(f"{key}_items")
        if not per_run or before is None or any(x is None for x in per_run):
            continue
        after = [sum(col) / len(col) for col in zip(*per_run)]
        out[f"items_{key}"] = paired_difference(before, after)
    return out


def control_gap(treatment: list[dict], control: list[dict], start: dict, keys=("greedy", "sampled")) -> dict:
    """Real-reward RL (``treatment`` runs) against a control (``control`` runs: random or format-only rewards)
    from the same ``start``: ``{key: {treatment_gain, control_gain, seeds, items, exceeds}}``.

    ``seeds``: the per-seed difference treatment - control, paired by seed (runs carry ``seed``; the same
    seed means the same prompts and sampling seeds), with its interval over seeds. ``items``: each item's
    score averaged over the treatment's seeds minus the same item averaged over the control's, paired over
    items. ``exceeds``: the treatment's gain is above the control's beyond noise at every level measured
    (items when per-item scores exist; seeds when at least 3 seeds pair up).
    """
    out = {}
    by_seed = {r["seed"]: r for r in control if "seed" in r}
    for key in keys:
        tg = paired_gains(treatment, start, (key,))[f"gain_{key}"]
        cg = paired_gains(control, start, (key,))[f"gain_{key}"]
        pairs = [
            (by_seed[r["seed"]]["after"][key], r["after"][key]) for r in treatment if r.get("seed") in by_seed
        ]
        seeds = paired_difference([c for c, _ in pairs], [t for _, t in pairs]) if pairs else None
        items = None
        t_items = [r["after"].get(f"{key}_items") for r in treatment]
        c_items = [r["after"].get(f"{key}_items") for r in control]
        if t_items and c_items and all(x is not None for x in t_items + c_items):
            t_mean = [sum(col) / len(col) for col in zip(*t_items)]
            c_mean = [sum(col) / len(col) for col in zip(*c_items)]
            items = paired_difference(c_mean, t_mean)
        levels = [d for d in (items, seeds if seeds and seeds["n"] >= 3 else None) if d is not None]
        exceeds = bool(levels) and all(d["beyond_noise"] and d["diff"] > 0 for d in levels)
        out[key] = {
            "treatment_gain": tg,
            "control_gain": cg,
            "seeds": seeds,
            "items": items,
            "exceeds": exceeds,
        }
    return out
