"""Arms given as several rounding draws are compared on the bases both ran: per base the draws' mean and
range, and over the items with each item averaged over an arm's draws, then over the bases."""

from __future__ import annotations

import json

import pytest

from experiments.draw_groups import compare


def _run(path, seed, setting, items, sampled=None):
    e = {"step": 800, "accuracy": sum(items) / len(items), "items": items}
    if sampled is not None:
        e["sampled"] = {"accuracy": sum(sampled) / len(sampled), "items": sampled}
    r = {"setting": setting, "seed": seed, "evals": {"800": e}}
    (path / "runs" / f"s{seed}_{setting}.json").write_text(json.dumps(r))


def test_draws_are_averaged_per_base_and_items_over_draws_then_bases(tmp_path):
    (tmp_path / "runs").mkdir()
    _run(tmp_path, "0", "a1", [1, 0, 0, 0], sampled=[0.5, 0.0, 0.0, 0.0])
    _run(tmp_path, "0", "a2", [1, 1, 0, 0])
    _run(tmp_path, "0", "b1", [1, 1, 1, 0], sampled=[1.0, 0.5, 0.5, 0.0])
    _run(tmp_path, "1", "a1", [0, 0, 0, 0])
    _run(tmp_path, "1", "b1", [1, 1, 1, 1])
    _run(tmp_path, "2", "a1", [1, 1, 1, 1])  # no B run on base 2: left out
    res = compare(tmp_path, ["a1", "a2"], ["b1"])
    assert sorted(res["bases"]) == ["0", "1"]
    b0 = res["bases"]["0"]
    assert b0["A"]["greedy"]["draws"] == {"a1": 0.25, "a2": 0.5}
    assert b0["A"]["greedy"]["mean"] == pytest.approx(0.375) and b0["A"]["greedy"]["range"] == pytest.approx(0.25)
    assert b0["diff_greedy"] == pytest.approx(0.375)
    assert res["bases"]["1"]["diff_greedy"] == pytest.approx(1.0)
    # items: A = mean over bases of (base 0: mean of a1, a2 = [1, .5, 0, 0]; base 1: [0, 0, 0, 0]) = [.5, .25, 0, 0]
    #        B = mean of ([1, 1, 1, 0], [1, 1, 1, 1]) = [1, 1, 1, .5]; B - A = [.5, .75, 1, .5]
    assert res["items"]["greedy"]["diff"] == pytest.approx(0.6875) and res["items"]["greedy"]["n"] == 4
    # sampled only where both arms sampled: base 0, with a1 the only sampled A draw
    assert list(res["bases"]["0"]["A"]["sampled"]["draws"]) == ["a1"]
    assert "sampled" not in res["bases"]["1"].get("A", {})
    assert res["items"]["sampled"]["diff"] == pytest.approx(0.375)
