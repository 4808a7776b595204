"""The cold-start study's summary pairs every setting with the chosen reference setting, item by item over the
bases both ran and on each base alone, greedy and sampled, and keeps each run's CPU per step."""

from __future__ import annotations

import json

import pytest

from experiments.cold_start_seeds import SETTINGS, summary


def _run(path, seed, setting, items, sampled=None, cpu=0.5):
    e = {"step": 800, "accuracy": sum(items) / len(items), "parse_rate": 1.0, "items": items}
    if sampled is not None:
        e["sampled"] = {"accuracy": sum(sampled) / len(sampled), "pass_at_k": 1.0, "items": sampled}
    r = {
        "setting": setting,
        "seed": seed,
        "base": {"from": f"b{seed}"},
        "params": SETTINGS[setting],
        "final_loss": 0.1,
        "wall_s": 1.0,
        "cpu_per_step": cpu,
        "evals": {"800": e},
    }
    (path / "runs" / f"s{seed}_{setting}.json").write_text(json.dumps(r))


def test_settings_are_paired_with_the_reference_per_base_and_over_bases(tmp_path):
    (tmp_path / "runs").mkdir()
    _run(tmp_path, "0", "wsd", [1, 1, 0, 0], sampled=[0.5, 0.5, 0.0, 0.0], cpu=0.6)
    _run(tmp_path, "0", "wsd_grouped", [1, 0, 0, 0], sampled=[0.5, 0.25, 0.0, 0.0], cpu=0.45)
    _run(tmp_path, "1", "wsd", [1, 1, 1, 0])
    _run(tmp_path, "1", "wsd_grouped", [1, 1, 1, 1])
    res = summary(tmp_path, "wsd")
    assert res["ref"] == "wsd"
    row = res["settings"]["wsd_grouped"]["steps"]["800"]
    vs = row["vs_ref"]
    assert vs["seeds"]["per_seed"] == pytest.approx({"0": -0.25, "1": 0.25})
    assert vs["seeds"]["mean"] == pytest.approx(0.0)
    assert vs["items_per_seed"]["0"]["diff"] == pytest.approx(-0.25)
    assert vs["items_per_seed"]["1"]["diff"] == pytest.approx(0.25)
    assert vs["items"]["diff"] == pytest.approx(0.0) and vs["items"]["n"] == 4
    # sampled is paired on the bases where both runs sampled: base 0 only
    assert list(row["vs_ref_sampled"]["items_per_seed"]) == ["0"]
    assert row["vs_ref_sampled"]["items"]["diff"] == pytest.approx(-0.0625)
    assert res["settings"]["wsd_grouped"]["cpu_per_step"] == {"0": 0.45, "1": 0.5}
    assert "vs_ref" not in res["settings"]["wsd"]["steps"]["800"]


def test_the_grouped_setting_differs_from_its_reference_only_in_the_forward():
    grouped, ref = dict(SETTINGS["wsd_grouped"]), SETTINGS["wsd"]
    assert grouped.pop("length_groups") == 3 and grouped == ref


def test_a_run_restores_the_forward_and_reports_cpu_per_step_and_sampled_items(tmp_path, monkeypatch):
    import experiments.cold_start_seeds as cs
    from ops.posttrain import sft
    from ops.tasks import make_splits, write_tasks
    from tests.posttrain_helpers import base_model_dir

    train, ev = make_splits(200, 6, seed=3, difficulties=(1,))
    write_tasks(train, tmp_path / "train.parquet")
    monkeypatch.setitem(cs.COLD_SFT, "steps", 2)
    monkeypatch.setitem(cs.COLD_SFT, "batch_size", 32)
    monkeypatch.setitem(cs.COLD_SFT, "warmup_steps", 1)
    before, loss_fn = sft.LENGTH_GROUPS, sft.sft_loss_fn
    runs = {
        s: cs.sft_run(s, base_model_dir(), tmp_path, ev, eval_every=800, sampled=2)
        for s in ("wsd", "wsd_grouped", "wsd_flip")
    }
    assert sft.LENGTH_GROUPS == before and sft.sft_loss_fn is loss_fn
    for r in runs.values():
        e = r["evals"]["2"]  # the last step on the run's own axis (2 of 2)
        assert len(e["items"]) == 6 and len(e["sampled"]["items"]) == 6
        assert r["cpu_per_step"] > 0
    assert runs["wsd"]["params"]["length_groups"] == 0 and runs["wsd_grouped"]["params"]["length_groups"] == 3
    # two forwards of the same function: the first step's loss agrees up to float rounding
    assert runs["wsd"]["losses"][0] == pytest.approx(runs["wsd_grouped"]["losses"][0], rel=1e-4)
    assert runs["wsd"]["losses"][0] == pytest.approx(runs["wsd_flip"]["losses"][0], rel=1e-4)
    assert runs["wsd_flip"]["params"]["row_order"] == "flip"


@pytest.mark.parametrize("how", ["flip", "roll"])
def test_the_rounding_controls_reorder_every_row_field_together(how):
    import torch

    from experiments.cold_start_seeds import reorder_rows

    n = 6
    b = {
        "input_ids": torch.arange(n * 3).view(n, 3),
        "labels": torch.arange(n * 3).view(n, 3) + 100,
        "attention_mask": torch.ones(n, 3, dtype=torch.long),
        "index": list(range(10, 10 + n)),
        "pad": 1,
    }
    r = reorder_rows(b, how)
    order = [r["index"][i] - 10 for i in range(n)]
    assert sorted(order) == list(range(n)) and order != list(range(n))
    assert order == (list(range(n))[::-1] if how == "flip" else [3, 4, 5, 0, 1, 2])
    for i, j in enumerate(order):  # row i of the result is row j of the batch in every field
        assert torch.equal(r["input_ids"][i], b["input_ids"][j])
        assert torch.equal(r["labels"][i], b["labels"][j])
    assert r["pad"] == 1 and b["index"] == list(range(10, 16))


def test_the_rounding_controls_differ_from_their_reference_only_in_the_row_order():
    for name in ("wsd_flip", "wsd_roll"):
        s = dict(SETTINGS[name])
        assert s.pop("row_order") in ("flip", "roll") and s == SETTINGS["wsd"]
