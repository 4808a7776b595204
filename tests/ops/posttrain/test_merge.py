"""Weight merging (``ops.posttrain.merge``) on small state dicts and tiny models: the formulas of the module
docstring, tensor by tensor, and the refusals that keep mismatched checkpoints from being averaged."""

from __future__ import annotations

import pytest
import torch

from ops.model import build_model
from ops.posttrain.merge import check_compatible, merge_models, merge_state

pytestmark = pytest.mark.unit

ARCH = {"arch": "qwen2", "d_model": 32, "layers": 2, "heads": 4, "kv_heads": 2}


def _states():
    a = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([0.0, 10.0])}
    b = {"w": torch.tensor([[5.0, 6.0], [7.0, 8.0]]), "b": torch.tensor([4.0, -2.0])}
    return a, b


def test_linear_merge_is_the_normalised_weighted_average():
    a, b = _states()
    # weights 1 and 3 normalise to 0.25 / 0.75
    m = merge_state([a, b], [1.0, 3.0], "linear")
    assert torch.equal(m["w"], 0.25 * a["w"] + 0.75 * b["w"])
    assert torch.equal(m["b"], torch.tensor([3.0, 1.0]))
    # equal weights: the plain mean, whatever their scale
    assert torch.equal(merge_state([a, b], [2.0, 2.0])["w"], (a["w"] + b["w"]) / 2)


def test_linear_merge_keeps_each_tensors_dtype():
    a = {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16)}
    b = {"w": torch.tensor([3.0, 4.0], dtype=torch.bfloat16)}
    m = merge_state([a, b], [1.0, 1.0])
    assert m["w"].dtype == torch.bfloat16 and m["w"].tolist() == [2.0, 3.0]


def test_task_arithmetic_adds_weighted_task_vectors_to_the_base():
    a, b = _states()
    base = {"w": torch.ones(2, 2), "b": torch.zeros(2)}
    m = merge_state([a, b], [0.5, 1.0], "task_arithmetic", base=base)
    # weights are not normalised here: theta = base + 0.5 (a - base) + 1.0 (b - base)
    assert torch.equal(m["w"], base["w"] + 0.5 * (a["w"] - base["w"]) + (b["w"] - base["w"]))
    assert torch.equal(m["b"], torch.tensor([4.0, 3.0]))


@pytest.mark.parametrize(
    ("weights", "method", "base", "message"),
    [
        ([1.0], "linear", None, "2 models but 1 weights"),
        ([1.0, -1.0], "linear", None, "sum to a positive number"),
        ([1.0, 1.0], "task_arithmetic", None, "needs a base model"),
        ([1.0, 1.0], "slerp", None, "unknown merge method 'slerp'"),
    ],
)
def test_bad_merge_settings_are_refused(weights, method, base, message):
    with pytest.raises(ValueError, match=message):
        merge_state(list(_states()), weights, method, base=base)


def test_merge_models_averages_real_models_and_keeps_tied_embeddings():
    m1, m2 = build_model(ARCH, 64, seed=1), build_model(ARCH, 64, seed=2)
    out = merge_models([m1, m2], ["a", "b"], [1.0, 1.0])
    s1, s2, so = m1.state_dict(), m2.state_dict(), out.state_dict()
    for k in s1:
        assert torch.allclose(so[k], (s1[k] + s2[k]) / 2), k
    assert out.get_input_embeddings().weight.data_ptr() == out.get_output_embeddings().weight.data_ptr()
    # the inputs are untouched (the merge goes into a copy)
    assert torch.equal(m1.state_dict()["model.norm.weight"], s1["model.norm.weight"])


def test_mismatched_architectures_are_refused_naming_the_difference():
    small = build_model(ARCH, 64, seed=1)
    wider = build_model({**ARCH, "d_model": 48}, 64, seed=2)
    with pytest.raises(ValueError, match=r"cannot merge 'wide' with 'small': config hidden_size differs \(48 vs 32\)"):
        check_compatible([small, wider], ["small", "wide"])
    other_vocab = build_model(ARCH, 80, seed=2)
    with pytest.raises(ValueError, match="config vocab_size differs"):
        merge_models([small, other_vocab], ["small", "v80"], [1.0, 1.0])
