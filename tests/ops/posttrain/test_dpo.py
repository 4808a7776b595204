"""DPO (``ops.posttrain.dpo``) on tiny models: how preference pairs are encoded, the held-out margin against a
direct computation of the implicit rewards, and a few training steps that open the margin on the pairs."""

from __future__ import annotations

import pytest
import torch

from ops.posttrain.common import encode_example
from ops.posttrain.dpo import DPOParams, _encode_pairs, pair_margins, train_dpo
from ops.posttrain.rm import Pair
from tests.posttrain_helpers import tiny_model, tokenizer

pytestmark = pytest.mark.unit

ARCH = {"arch": "qwen2", "d_model": 32, "layers": 2, "heads": 4, "kv_heads": 2, "max_seq_len": 256}
PAIRS = [
    Pair("p0", "What is 2 + 2?", "<think>2+2=4</think><answer>4</answer>", "<think>2+2=5</think><answer>5</answer>"),
    Pair("p1", "What is 3 + 1?", "<think>3+1=4</think><answer>4</answer>", "<answer>7</answer>"),
    Pair("p2", "What is 6 - 2?", "<think>6-2=4</think><answer>4</answer>", "<think>no</think><answer>3</answer>"),
]


def _seq_logprob(model, tok, prompt: str, response: str) -> float:
    """log pi(response | prompt): the summed log-probabilities of the response tokens (and <|im_end|>)."""
    ids, n_prompt = encode_example(tok, prompt, response, 10**9)
    t = torch.tensor([ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=t).logits[0, :-1].float(), -1)
    return float(sum(lp[i - 1, ids[i]] for i in range(n_prompt, len(ids))))


def test_pairs_are_encoded_as_chosen_and_rejected_conversations_and_long_pairs_dropped():
    tok = tokenizer()
    long = Pair("long", "What is 1 + 1?", "<answer>2</answer>", "<think>" + "1+1 " * 200 + "</think><answer>3</answer>")
    ch, rj = _encode_pairs(tok, [PAIRS[0], long, PAIRS[1]], max_len=128)
    assert len(ch) == len(rj) == 2  # the pair whose rejected side is too long goes as a whole
    for (c, r), p in zip(zip(ch, rj), (PAIRS[0], PAIRS[1])):
        assert c == encode_example(tok, p.prompt, p.chosen, 128)
        assert r == encode_example(tok, p.prompt, p.rejected, 128)


def test_margin_is_the_mean_implicit_reward_difference():
    tok = tokenizer()
    policy, ref = tiny_model(tok, seed=1, arch=ARCH), tiny_model(tok, seed=2, arch=ARCH)
    beta = 0.3
    out = pair_margins(policy, ref, tok, PAIRS, beta)
    z = [
        beta
        * (
            (_seq_logprob(policy, tok, p.prompt, p.chosen) - _seq_logprob(ref, tok, p.prompt, p.chosen))
            - (_seq_logprob(policy, tok, p.prompt, p.rejected) - _seq_logprob(ref, tok, p.prompt, p.rejected))
        )
        for p in PAIRS
    ]
    assert out["pairs"] == 3
    assert out["margin"] == pytest.approx(sum(z) / 3, rel=1e-4, abs=1e-5)
    assert out["accuracy"] == pytest.approx(sum(v > 0 for v in z) / 3)
    # against itself every implicit reward is zero
    same = pair_margins(ref, ref, tok, PAIRS, beta)
    assert same["margin"] == pytest.approx(0.0, abs=1e-6) and same["accuracy"] == 0.0
    assert pair_margins(ref, ref, tok, PAIRS, beta, max_len=4)["pairs"] == 0


def test_training_opens_the_margin_on_the_training_pairs():
    tok = tokenizer()
    policy, ref = tiny_model(tok, seed=3, arch=ARCH), tiny_model(tok, seed=3, arch=ARCH)
    p = DPOParams(steps=12, lr=3e-3, beta=0.5, batch_size=3, warmup_steps=0)
    info = train_dpo(policy, ref, tok, PAIRS, p, work_dir=None, log=lambda s: None)
    assert info["pairs"] == 3 and len(info["losses"]) == 12
    after = pair_margins(policy, ref, tok, PAIRS, p.beta)
    assert after["margin"] > 0.5 and after["accuracy"] == 1.0
    assert info["losses"][-1] < info["losses"][0]
    with pytest.raises(ValueError, match="no preference pair fits max_len=4"):
        train_dpo(policy, ref, tok, PAIRS, DPOParams(steps=1, max_len=4), work_dir=None, log=lambda s: None)


class _Untouchable:
    """A model stand-in that fails on any use: the refusals below must come before any compute."""

    def __getattr__(self, name):
        raise AssertionError(f"model touched ({name}) before the input was refused")


@pytest.mark.parametrize("loss", ["dpo", "ipo", "rpo"])
@pytest.mark.parametrize("beta", [0.0, -0.1])
def test_beta_at_or_below_zero_is_refused_before_compute(loss, beta):
    from ops.posttrain.onpolicy import OnPolicyParams, train_iterative_dpo
    from ops.tasks import Task

    tok = tokenizer()
    p = DPOParams(steps=1, beta=beta, loss=loss)
    with pytest.raises(ValueError, match=rf"preference loss '{loss}': beta must be > 0, got {beta}"):
        train_dpo(_Untouchable(), _Untouchable(), tok, PAIRS, p, work_dir=None, log=lambda s: None)
    task = Task("t0", "What is 2 + 2?", "4", "2+2=4", 1, "test")
    with pytest.raises(ValueError, match="beta must be > 0"):
        train_iterative_dpo(
            _Untouchable(),
            _Untouchable(),
            tok,
            [task],
            p,
            OnPolicyParams(),
            work_dir=None,
            log=lambda s: None,
        )


def test_pairs_with_identical_chosen_and_rejected_are_refused_before_compute():
    same = Pair("same", "What is 2 + 2?", "<answer>4</answer>", "<answer>4</answer> ")  # equal once stripped
    with pytest.raises(ValueError, match=r"1 of 4 preference pairs have identical .* \(first: id 'same'\)"):
        train_dpo(
            _Untouchable(),
            _Untouchable(),
            tokenizer(),
            [*PAIRS, same],
            DPOParams(steps=1),
            work_dir=None,
            log=lambda s: None,
        )
