"""The ``random`` control reward: rate p, independent of correctness, deterministic per seed and step key,
different across steps; and the control classification of a reward list."""

from __future__ import annotations

import math

import pytest

from ops import rewards as R

pytestmark = pytest.mark.unit

GOOD = "<think>2+2</think><answer>4</answer>"
BAD = "<think>2+2</think><answer>5</answer>"


def _batch(completions: list[str], step: int | None = None) -> R.RewardBatch:
    n = len(completions)
    return R.RewardBatch(completions, ["4"] * n, [8] * n, group_size=8, step=step)


def _within_binomial(k: int, n: int, p: float) -> bool:
    # 5 standard deviations: a correct implementation fails this about once in 3 million runs
    return abs(k - n * p) <= 5 * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("p", [0.5, 0.2, 0.9])
def test_rate_is_p_within_a_binomial_bound(p):
    n = 4000
    specs = R.parse_specs([{"random": {"p": p}}])
    total, comps = R.score(specs, _batch([GOOD] * n, step=3))
    assert set(total) <= {0.0, 1.0} and comps["random"] == total
    assert _within_binomial(int(sum(total)), n, p)


def test_independent_of_correctness():
    # one batch with correct and incorrect completions interleaved: the two halves get the same rate, and the
    # draws do not change when every completion's correctness flips (the gold answer is never read)
    n = 4000
    comps = [GOOD if i % 2 else BAD for i in range(n)]
    draws = R.random_draws(_batch(comps, step=1))
    right, wrong = draws[1::2], draws[0::2]
    assert _within_binomial(int(sum(right)), len(right), 0.5)
    assert _within_binomial(int(sum(wrong)), len(wrong), 0.5)
    flipped = R.RewardBatch(comps, ["5"] * n, [8] * n, group_size=8, step=1)
    assert R.random_draws(flipped) == draws
    acc = R.score(R.parse_specs(["accuracy"]), _batch(comps, step=1))[0]
    # correlation between the random reward and correctness is within noise of 0
    ma, md = sum(acc) / n, sum(draws) / n
    cov = sum((a - ma) * (d - md) for a, d in zip(acc, draws)) / n
    corr = cov / math.sqrt(ma * (1 - ma) * md * (1 - md))
    assert abs(corr) < 5 / math.sqrt(n)


def test_deterministic_per_seed_and_different_across_seeds_and_steps():
    b = _batch([GOOD] * 512, step=7)
    assert R.random_draws(b, seed=1) == R.random_draws(_batch([GOOD] * 512, step=7), seed=1)
    assert R.random_draws(b, seed=1) != R.random_draws(b, seed=2)
    assert R.random_draws(b) != R.random_draws(_batch([GOOD] * 512, step=8))
    # the draw depends on the position, not on the text: equal completions get different rewards
    assert len(set(R.random_draws(b))) == 2


def test_without_a_step_the_batch_content_keys_the_draw():
    # the RL loops sample every step with its own seed, so the completions key the step: the same batch
    # (a resumed step) draws the same rewards, another step's batch draws others
    a = [f"<think>{i}</think><answer>{i % 7}</answer>" for i in range(512)]
    b = [f"<think>{i}</think><answer>{(i + 1) % 7}</answer>" for i in range(512)]
    assert R.random_draws(_batch(a)) == R.random_draws(_batch(list(a)))
    assert R.random_draws(_batch(a)) != R.random_draws(_batch(b))


def test_random_is_versioned_and_its_parameters_are_checked():
    assert R.reward_versions(R.parse_specs(["random"])) == {"random": "v1"}
    for bad, words in [
        ({"p": 1.5}, "probability in [0, 1]"),
        ({"p": "half"}, "probability"),
        ({"seed": 0.5}, "seed must be an integer"),
        ({"answer_format": "x"}, "no parameter"),
    ]:
        with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
            R.parse_specs([{"random": bad}])
    assert R.score(R.parse_specs([{"random": {"p": 0}}]), _batch([GOOD] * 50))[0] == [0.0] * 50
    assert R.score(R.parse_specs([{"random": {"p": 1}}]), _batch([GOOD] * 50))[0] == [1.0] * 50


def test_control_classification():
    assert R.is_control(["random"]) == "random"
    assert R.is_control([{"random": {"p": 0.5}}]) == "random"
    assert R.is_control(["format"]) == "format"
    assert R.is_control(["accuracy", "format", {"language": {"weight": 0.1}}]) is None
    assert R.is_control(["accuracy", "random"]) is None


def test_draws_are_the_same_in_another_process():
    # a resumed run scores its step in a new process: the draw must not depend on the process (no hash())
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json; from ops import rewards as R; "
        "b = R.RewardBatch(['x'] * 64, ['1'] * 64, [1] * 64, 8); print(json.dumps(R.random_draws(b, 0.5, 3)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    env_out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert json.loads(env_out) == R.random_draws(R.RewardBatch(["x"] * 64, ["1"] * 64, [1] * 64, 8), 0.5, 3)
