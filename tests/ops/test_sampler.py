"""The shared categorical sampler (``ops.generate.draw_categorical``) against the categorical distribution
written from its formula: chi-square frequency tests with a bound a wrong sampler fails, zero-probability
tokens on the CDF's edges, and the seeded stream."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch

from ops import generate as G

pytestmark = pytest.mark.unit

N = 60_000  # draws per distribution (rows of one batch)


def _chi2_bound(df: int, p: float = 1e-6) -> float:
    """Upper ``p``-quantile of chi-square with ``df`` degrees of freedom (Wilson-Hilferty)."""
    z = NormalDist().inv_cdf(1 - p)
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _chi2(counts: torch.Tensor, want: torch.Tensor) -> tuple[float, int]:
    """Pearson's statistic over the tokens the reference gives mass; ``inf`` if any other token was drawn."""
    support = want > 0
    if counts[~support].sum() > 0:
        return math.inf, int(support.sum()) - 1
    e = want[support] * counts.sum()
    return float(((counts[support] - e) ** 2 / e).sum()), int(support.sum()) - 1


def _reference(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """softmax(logits / T) in float64, restricted to the smallest most-probable set whose mass reaches top_p
    (the first token that crosses it included), renormalised: nucleus sampling's definition."""
    p = torch.softmax(logits.double() / temperature, -1)
    order = sorted(range(len(p)), key=lambda i: -float(p[i]))
    keep, mass = [], 0.0
    for i in order:
        keep.append(i)
        mass += float(p[i])
        if mass >= top_p:
            break
    q = torch.zeros_like(p)
    q[keep] = p[keep]
    return q / q.sum()


def _logits(name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    if name == "peaked":
        x = torch.full((20,), -4.0)
        x[7] = 3.0
        x[3] = 1.0
        return x
    if name == "flat":
        return torch.zeros(50)
    if name == "zeros":  # -inf logits: exactly zero probability, first, inside and last
        x = torch.randn(24, generator=g)
        x[[0, 5, 6, 13, 23]] = -math.inf
        return x
    return torch.randn(40, generator=g) * 2  # "random"


CASES = [
    ("peaked", 1.0, 1.0),
    ("flat", 1.0, 1.0),
    ("zeros", 1.0, 1.0),
    ("random", 0.7, 1.0),
    ("random", 1.0, 0.8),
]
CASES += [("peaked", 1.0, 0.95), ("zeros", 1.3, 0.5)]


@pytest.mark.parametrize("name,temperature,top_p", CASES)
def test_sample_next_frequencies_match_the_categorical_formula(name, temperature, top_p):
    logits = _logits(name)
    want = _reference(logits, temperature, top_p)
    g = torch.Generator().manual_seed(0)
    ids, lp = G.sample_next(logits.repeat(N, 1), temperature, top_p, generator=g)
    counts = torch.bincount(ids, minlength=len(logits)).double()
    stat, df = _chi2(counts, want)
    assert stat < _chi2_bound(max(df, 1)), (stat, df)
    # the returned log-prob is the untruncated tempered one, of the drawn token
    assert torch.allclose(lp.double(), torch.log_softmax(logits.double() / temperature, -1)[ids], atol=1e-5)
    # the bound has power: the same counts fail against the reference shifted by one token (an off-by-one
    # in the CDF) and against the untruncated distribution (a nucleus that leaks)
    if name != "flat":
        shifted = torch.roll(want, 1)
        assert _chi2(counts, shifted)[0] > _chi2_bound(max(df, 1))
    if top_p < 1.0:
        full = torch.softmax(logits.double() / temperature, -1)
        assert _chi2(counts, full)[0] > _chi2_bound(len(logits) - 1)


def test_draw_categorical_on_unnormalised_weights_matches_their_shares():
    w = torch.tensor([0.0, 3.0, 0.0, 1.0, 6.0, 0.0])
    g = torch.Generator().manual_seed(1)
    ids = G.draw_categorical(w.repeat(N, 1), g)
    stat, df = _chi2(torch.bincount(ids, minlength=6).double(), w.double() / w.sum())
    assert stat < _chi2_bound(df)


def _edges(probs: torch.Tensor) -> torch.Tensor:
    """Uniforms on every boundary of the row's CDF (float and integer), just below and above each, the
    extremes of [0, 1) and 1.0 itself (what a uniform times the total rounding up to the total amounts to)."""
    c = (probs.double() / probs.double().sum()).cumsum(0)
    cdf = G.shares_cdf(probs[None])[0].double()
    c = torch.cat([c, cdf / cdf[-1]])
    below = torch.nextafter(c, torch.zeros_like(c))
    us = torch.cat(
        [
            torch.tensor([0.0, 2.0**-60, 1 - 2.0**-53, 1.0], dtype=torch.float64),
            c,
            below,
            torch.nextafter(c, torch.ones_like(c)),
        ]
    )
    return us[(us >= 0) & (us <= 1)]


@pytest.mark.parametrize(
    "probs",
    [
        [0.0, 0.25, 0.0, 0.0, 0.75, 0.0],  # zeros first, between and last
        [0.0, 0.0, 1.0, 0.0],  # one token carries all the mass
        [1e-30, 0.0, 0.5, 0.5 - 1e-7, 0.0, 1e-7, 0.0],  # an underflow-sized weight next to zeros
        [0.1] * 9 + [0.1 + 1e-7, 0.0],  # a float32 row total that is not 1
    ],
)
def test_zero_probability_tokens_are_never_drawn_on_the_cdf_edges(probs):
    p = torch.tensor(probs, dtype=torch.float32)
    us = _edges(p)
    ids = G.draw_categorical(p.repeat(len(us), 1), uniforms=us)
    assert bool((p[ids] > 0).all()), [(float(u), int(i)) for u, i in zip(us, ids) if p[i] == 0]
    # u = 0 draws the first drawable token, u just below 1 and u = 1 the last one; drawable: a share of at
    # least 2**-52 of the row
    positive = (
        (G.shares_cdf(p[None])[0].diff(prepend=torch.zeros(1, dtype=torch.long)) > 0).nonzero().squeeze(1)
    )
    assert int(ids[0]) == int(positive[0]) and int(ids[2]) == int(ids[3]) == int(positive[-1])


def test_zero_probability_tokens_are_never_drawn_over_many_seeded_draws():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(256, 300, generator=g) * 4
    logits[logits < -2] = -math.inf  # about 30% of every row exactly zero
    for _ in range(20):
        ids, _ = G.sample_next(logits, 1.0, 0.9, generator=g)
        assert bool(torch.isfinite(logits.gather(1, ids[:, None])).all())


def test_same_seed_same_tokens_and_the_stream_depends_on_the_batch_shape_only():
    logits = torch.randn(64, 100, generator=torch.Generator().manual_seed(3))

    def draw(seed, x, top_p=1.0):
        g = torch.Generator().manual_seed(seed)
        return G.sample_next(x, 1.0, top_p, generator=g)[0], g.get_state()

    a, sa = draw(5, logits)
    b, _ = draw(5, logits)
    c, _ = draw(6, logits)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # other weights of the same shape (or the nucleus path) consume the same random numbers
    assert torch.equal(draw(5, -logits)[1], sa) and torch.equal(draw(5, logits, 0.5)[1], sa)


def test_rows_without_positive_finite_mass_are_refused():
    with pytest.raises(ValueError, match="no positive finite mass"):
        G.draw_categorical(torch.tensor([[0.2, 0.8], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="no positive finite mass"):
        G.sample_next(torch.tensor([[0.0, float("nan")]]), 1.0, 1.0)


def test_budget_decoding_draws_from_the_tempered_softmax():
    from ops.eval.budget import _choose

    logits = torch.tensor([2.0, 0.0, -1.0, -math.inf])
    g = torch.Generator().manual_seed(4)
    ids = _choose(logits.repeat(N, 1), 0.5, g)
    stat, df = _chi2(torch.bincount(ids, minlength=4).double(), torch.softmax(logits.double() / 0.5, -1))
    assert stat < _chi2_bound(df)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_draws_equal_the_cpu_draws_for_the_same_seeded_generator():
    # the uniforms come from the CPU generator, the integer CDF is exact on either device
    probs = torch.softmax(torch.randn(512, 2048, generator=torch.Generator().manual_seed(7)) * 3, -1)
    probs[probs < 1e-4] = 0.0
    a = G.draw_categorical(probs, torch.Generator().manual_seed(8))
    b = G.draw_categorical(probs.cuda(), torch.Generator().manual_seed(8)).cpu()
    assert bool((probs.gather(1, b[:, None]) > 0).all())
    assert (a == b).float().mean() > 0.999  # the row sums may round differently by one unit of 2**-52
