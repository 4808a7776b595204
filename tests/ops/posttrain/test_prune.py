"""Structured pruning (``ops.posttrain.prune``): what it keeps is what the activations say matters.

Each test plants something the importance scores must find — dead MLP neurons, a layer that is the
identity, a channel nothing writes to — and checks that pruning removes exactly that, with the pruned model's
output unchanged where the removed part contributed nothing. The pruned model is a plain transformers
checkpoint: it saves and reloads with the same outputs.
"""

from __future__ import annotations

import pytest
import torch

from ops.model import build_model, count_params
from ops.posttrain.prune import importance, prune, pruned_params

ARCH = {"arch": "qwen2", "d_model": 64, "layers": 3, "heads": 4, "kv_heads": 2, "ffn": 96}
V = 300


def _model(seed: int = 0, **kw):
    torch.manual_seed(seed)
    m = build_model({**ARCH, **kw}, V, seed=seed)
    # random (not the init's zero) biases and norm weights, so nothing is trivially symmetric
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n or "bias" in n:
                p.copy_(torch.rand_like(p) + 0.5 if "norm" in n else torch.randn_like(p) * 0.1)
    return m.eval()


def _batches(n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, V, (4, 24), generator=g)
        am = torch.ones_like(ids)
        am[0, 18:] = 0  # a padded row: padding must not count
        out.append({"input_ids": ids, "attention_mask": am})
    return out


def _logits(m, ids):
    with torch.no_grad():
        return m(input_ids=ids).logits


def test_pruning_nothing_is_the_same_model():
    m = _model()
    small, kept = prune(m, importance(m, _batches()))
    ids = _batches(1, seed=9)[0]["input_ids"]
    torch.testing.assert_close(_logits(small, ids), _logits(m, ids), rtol=0, atol=0)
    assert kept["layers"] == [0, 1, 2] and len(kept["channels"]) == 64


def test_dead_mlp_neurons_are_the_ones_pruned_and_the_output_is_unchanged():
    m = _model()
    dead = {1, 5, 17, 40, 41, 90}
    with torch.no_grad():
        for layer in m.model.layers:
            for i in dead:  # gate and up rows zero: the neuron's activation is exactly 0 on any input
                layer.mlp.gate_proj.weight[i] = 0
                layer.mlp.up_proj.weight[i] = 0
    imp = importance(m, _batches())
    assert all(float(imp["neurons"][k][sorted(dead)].abs().max()) == 0 for k in range(3))
    small, kept = prune(m, imp, ffn=96 - len(dead))
    assert all(set(n).isdisjoint(dead) and len(n) == 90 for n in kept["neurons"])
    ids = _batches(1, seed=9)[0]["input_ids"]
    torch.testing.assert_close(_logits(small, ids), _logits(m, ids), rtol=1e-5, atol=1e-5)
    assert small.config.intermediate_size == 90


def test_a_layer_that_is_the_identity_is_the_one_dropped():
    m = _model()
    with torch.no_grad():  # layer 1 writes nothing to the residual stream
        m.model.layers[1].self_attn.o_proj.weight.zero_()
        m.model.layers[1].mlp.down_proj.weight.zero_()
    imp = importance(m, _batches())
    assert imp["block_influence"][1] == pytest.approx(0.0, abs=1e-6)
    assert min(imp["block_influence"][0], imp["block_influence"][2]) > 1e-3
    small, kept = prune(m, imp, layers=2)
    assert kept["layers"] == [0, 2] and small.config.num_hidden_layers == 2
    ids = _batches(1, seed=9)[0]["input_ids"]
    torch.testing.assert_close(_logits(small, ids), _logits(m, ids), rtol=1e-5, atol=1e-5)


def test_the_quietest_residual_channels_are_pruned_and_heads_stay_whole():
    m = _model()
    quiet = [3, 30, 61]
    with torch.no_grad():  # every norm scales these channels down 100x: they carry almost nothing
        for n, p in m.named_parameters():
            if "norm" in n:
                p[quiet] *= 0.01
    imp = importance(m, _batches())
    small, kept = prune(m, imp, d_model=64 - len(quiet))
    assert set(kept["channels"]).isdisjoint(quiet) and len(kept["channels"]) == 61
    assert small.config.hidden_size == 61 and small.config.head_dim == 16  # 4 heads of the teacher's width
    assert small.model.layers[0].self_attn.q_proj.weight.shape == (64, 61)
    ids = _batches(1, seed=9)[0]["input_ids"]
    assert _logits(small, ids).shape == (4, 24, V)
    assert torch.isfinite(_logits(small, ids)).all()


def test_a_pruned_model_saves_and_reloads_with_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    m = _model()
    small, _ = prune(m, importance(m, _batches()), layers=2, d_model=48, ffn=64)
    small.save_pretrained(str(tmp_path))
    again = AutoModelForCausalLM.from_pretrained(str(tmp_path), local_files_only=True).eval()
    ids = _batches(1, seed=9)[0]["input_ids"]
    torch.testing.assert_close(_logits(again, ids), _logits(small, ids))
    assert count_params(small) == pruned_params(m, layers=2, d_model=48, ffn=64)


def test_padding_does_not_count_toward_importance():
    m = _model()
    b = _batches(1)[0]
    imp_a = importance(m, [b])
    # the padded positions hold other tokens: same statistics, since they are masked out
    ids = b["input_ids"].clone()
    ids[0, 18:] = (ids[0, 18:] + 7) % V
    imp_b = importance(m, [{**b, "input_ids": ids}])
    torch.testing.assert_close(imp_a["channels"], imp_b["channels"])
    assert imp_a["tokens"] == 4 * 24 - 6


@pytest.mark.parametrize(
    "sizes, msg",
    [({"layers": 4}, "layers: 4 is outside 1..3"), ({"d_model": 0}, "d_model: 0"), ({"ffn": 97}, "ffn: 97")],
)
def test_sizes_outside_the_model_are_refused(sizes, msg):
    m = _model()
    with pytest.raises(ValueError, match=msg):
        pruned_params(m, **sizes)
    with pytest.raises(ValueError, match=msg):
        prune(m, importance(m, _batches(1)), **sizes)


def test_moe_models_are_refused():
    m = build_model({"arch": "qwen2_moe", "d_model": 32, "layers": 1, "heads": 2, "experts": 2}, V)
    with pytest.raises(ValueError, match="dense"):
        importance(m, _batches(1))
