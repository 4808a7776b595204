"""RL prompts or scoring problems for ``experiments.grpo_paired``, of chosen difficulties, that no stage of a home saw.

``python -m experiments.rl_prompt_sets OUT ARTIFACTS DIFFICULTIES SEED [N_TRAIN N_EVAL]``: writes
``OUT/train.parquet`` (``N_TRAIN`` problems, default 4000, of the comma-separated ``DIFFICULTIES``, equal shares)
and ``OUT/eval.parquet`` (``N_EVAL``, default 100; e.g. ``0 3000`` for a larger fresh scoring set), excluding every
question of every ``reasoning_tasks`` artifact under ``ARTIFACTS`` (the home's SFT data, RL prompts, benchmark
and held-out sets), in the tasks artifact layout ``grpo_paired`` reads as its ``TASKS_DIR``.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def write_prompt_set(
    out: Path, artifacts: Path, difficulties: list[int], seed: int, n_train: int = 4000, n_eval: int = 100
) -> Counter:
    from ops.tasks import make_splits, read_tasks, write_tasks

    splits = sorted((Path(artifacts) / "reasoning_tasks").glob("*/*.parquet"))
    if not splits:
        raise ValueError(f"{artifacts}: no reasoning_tasks artifact to exclude (expected ARTIFACTS/reasoning_tasks/*/)")
    seen: set[str] = set()
    for split in splits:
        seen |= {t.question for t in read_tasks(split)}
    train, ev = make_splits(n_train, n_eval, seed, difficulties, exclude=seen)
    out.mkdir(parents=True, exist_ok=True)
    write_tasks(train, out / "train.parquet")
    write_tasks(ev, out / "eval.parquet")
    return Counter(t.difficulty for t in train or ev)


if __name__ == "__main__":
    if len(sys.argv) not in (5, 7):
        raise SystemExit("usage: python -m experiments.rl_prompt_sets OUT ARTIFACTS DIFFICULTIES SEED [N_TRAIN N_EVAL]")
    o, a, d, s, *n = sys.argv[1:]
    print(dict(write_prompt_set(Path(o), Path(a), [int(x) for x in d.split(",")], int(s), *map(int, n))))
