"""experiments/rl_prompt_sets.py: RL prompts or scoring sets that exclude every question a home's task sets hold."""

from __future__ import annotations

import pytest

from experiments.rl_prompt_sets import write_prompt_set
from ops.tasks import make_splits, read_tasks, write_tasks


@pytest.mark.unit
def test_the_set_has_equal_difficulty_shares_and_none_of_the_homes_questions(tmp_path):
    held = tmp_path / "artifacts" / "reasoning_tasks" / "abc"
    held.mkdir(parents=True)
    # the same seed and difficulties as the set: without the exclusion the two would share questions
    train, ev = make_splits(4000, 100, 4, [2, 3])
    write_tasks(train[:500], held / "train.parquet")
    write_tasks(ev, held / "eval.parquet")
    shares = write_prompt_set(tmp_path / "out", tmp_path / "artifacts", [2, 3], 4)
    assert shares == {2: 2000, 3: 2000}
    got = {t.question for s in ("train", "eval") for t in read_tasks(tmp_path / "out" / f"{s}.parquet")}
    assert not got & {t.question for t in train[:500] + ev}


@pytest.mark.unit
def test_an_artifacts_folder_without_task_sets_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="no reasoning_tasks artifact"):
        write_prompt_set(tmp_path / "out", tmp_path, [3], 5)
    assert not (tmp_path / "out").exists()


@pytest.mark.unit
def test_a_scoring_set_alone_has_no_training_problems(tmp_path):
    held = tmp_path / "artifacts" / "reasoning_tasks" / "abc"
    held.mkdir(parents=True)
    _, ev = make_splits(0, 200, 31, [2])
    write_tasks(ev[:100], held / "eval.parquet")
    assert write_prompt_set(tmp_path / "out", tmp_path / "artifacts", [2], 31, 0, 150) == {2: 150}
    assert read_tasks(tmp_path / "out" / "train.parquet") == []
    got = {t.question for t in read_tasks(tmp_path / "out" / "eval.parquet")}
    assert len(got) == 150 and not got & {t.question for t in ev[:100]}
