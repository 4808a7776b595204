"""The SFT, DPO and reward-model batch order: a seeded permutation per epoch, shuffled once per epoch."""

from __future__ import annotations

import random

from ops.posttrain import common
from ops.posttrain.common import epoch_batches


def _reference(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The definition: the epoch's permutation shuffled from scratch for every step."""
    per_epoch = max(n // batch_size, 1)
    epoch, k = divmod(step, per_epoch)
    perm = list(range(n))
    random.Random(seed * 100003 + epoch).shuffle(perm)
    if n < batch_size:
        return [perm[i % n] for i in range(batch_size)]
    return perm[k * batch_size : (k + 1) * batch_size]


def test_batches_equal_the_per_step_shuffle_across_epochs_seeds_and_sizes():
    for n, bs, seed in [(1000, 64, 0), (1000, 64, 3), (130, 64, 1), (10, 64, 0), (64, 64, 2)]:
        for step in range(0, 60):
            got = epoch_batches(n, bs, step, seed)
            assert isinstance(got, list)
            assert got == _reference(n, bs, step, seed), (n, bs, seed, step)


def test_the_permutation_is_shuffled_once_per_epoch(monkeypatch):
    calls = []
    real = random.Random.shuffle

    def counting(self, x):
        calls.append(len(x))
        return real(self, x)

    monkeypatch.setattr(random.Random, "shuffle", counting)
    common._epoch_permutation.cache_clear()
    for step in range(30):  # 1000 rows / 64 = 15 batches per epoch: 2 epochs
        epoch_batches(1000, 64, step, seed=7)
    assert calls == [1000, 1000]
    # a returned batch is a fresh list: changing it cannot change the next step's batch
    b = epoch_batches(1000, 64, 0, seed=7)
    b[:] = []
    assert epoch_batches(1000, 64, 0, seed=7) == _reference(1000, 64, 0, 7)
