"""The rounding probe measures each forward's gradient against the padded forward in fp64: the same function
in another summation order lands at rounding size, a changed function does not."""

from __future__ import annotations

import pytest
import torch

from experiments.rounding_probe import ARMS, _errors, longest_third, probe


def test_errors_are_relative_to_the_reference_over_all_weights():
    ref = {"a": torch.ones(3, dtype=torch.float64), "b": torch.full((2,), 2.0, dtype=torch.float64)}
    same = {k: v.clone() for k, v in ref.items()}
    assert _errors(same, ref)["rel_l2"] == 0 and _errors(same, ref)["cos"] == pytest.approx(1.0)
    off = {"a": ref["a"] * 1.01, "b": ref["b"].clone()}
    e = _errors(off, ref)
    assert e["rel_l2"] == pytest.approx(0.01 * (3 / 11) ** 0.5)
    assert e["max_tensor"] == "a" and e["max_tensor_rel"] == pytest.approx(0.01)


def test_longest_third_keeps_labels_on_the_longest_rows_only():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    labels = torch.arange(24).view(6, 4)
    b = longest_third({"attention_mask": mask, "labels": labels, "input_ids": labels})
    kept = [i for i in range(6) if (b["labels"][i] != -100).any()]
    assert kept == [1, 4] and torch.equal(b["labels"][1], labels[1])


def test_every_arm_is_the_padded_function_up_to_rounding_on_a_small_model(tmp_path):
    from ops.tasks import make_splits, write_tasks
    from tests.posttrain_helpers import base_model_dir

    train, _ = make_splits(200, 6, seed=3, difficulties=(1,))
    write_tasks(train, tmp_path / "train.parquet")
    rows = probe(base_model_dir(), tmp_path, steps=1)
    assert [r["rows"] for r in rows] == ["all rows", "longest third"]
    for r in rows:
        assert r["grad_norm_fp64"] > 0
        for arm in ARMS:
            assert r[arm]["rel_l2"] < 1e-4 and r[arm]["cos"] > 0.9999, (r["rows"], arm, r[arm])
            assert r[arm]["loss_rel"] < 1e-5
