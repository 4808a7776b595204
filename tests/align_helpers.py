"""Process-cached builders for the alignment/distillation tests: a small SFT'd arithmetic teacher, a tasks
artifact, and rollouts sampled from the teacher (correct and incorrect completions of the same prompts).

Everything is built locally from generated tasks (nothing downloaded), once per test process, on top of the
shared tokenizer and tiny architecture of ``tests/posttrain_helpers.py``.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from tests import posttrain_helpers as H

ROOT = H.ROOT / "align"
TEACHER_STEPS = 200
# the reward-model tests' teacher: at 200 steps its T=1 samples are ~8% right and a likelihood ranking of
# right over wrong is ~0.55 on held-out pairs, so a draw decided the tests; at 600 steps ~41% and 0.71-0.78
RM_TEACHER_STEPS = 600


@functools.lru_cache(maxsize=1)
def splits():
    from ops.tasks import make_splits

    return make_splits(1500, 300, seed=3, difficulties=H.DIFFICULTIES)


@functools.lru_cache(maxsize=1)
def tasks_dir() -> Path:
    from ops.tasks import write_tasks

    train, ev = splits()
    out = ROOT / "tasks"
    out.mkdir(parents=True, exist_ok=True)
    write_tasks(train, out / "train.parquet")
    write_tasks(ev, out / "eval.parquet")
    return out


@functools.lru_cache(maxsize=2)
def teacher_dir(steps: int = TEACHER_STEPS) -> Path:
    """The tiny architecture SFT'd on easy arithmetic for ``steps`` steps (200: ~12% greedy, pass@8 ~30% on
    held-out tasks)."""
    import torch

    from ops.model import save_model
    from ops.posttrain.common import Example
    from ops.posttrain.sft import SFTParams, train_sft

    torch.manual_seed(0)
    tok = H.tokenizer()
    train, _ = splits()
    ex = [Example(t.id, t.question, t.response, t.answer) for t in train]
    model, _, _ = train_sft(
        H.tiny_model(tok),
        tok,
        ex,
        SFTParams(steps=steps, lr=3e-3, batch_size=32, warmup_steps=10),
        work_dir=None,
        log=lambda s: None,
    )
    out = ROOT / ("teacher" if steps == TEACHER_STEPS else f"teacher_{steps}")
    save_model(model, tok, out)
    return out


@functools.lru_cache(maxsize=2)
def rollouts_dir(n_prompts: int = 300, samples: int = 8, teacher_steps: int = TEACHER_STEPS) -> Path:
    """A rollouts artifact: ``samples`` completions at T=1 of the teacher (:func:`teacher_dir` of
    ``teacher_steps``) for ``n_prompts`` training tasks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ops.generate import generate
    from ops.posttrain.common import load_policy
    from ops.tasks import is_correct

    model, tok = load_policy(teacher_dir(teacher_steps))
    train, _ = splits()
    tasks = train[:n_prompts]
    out = generate(
        model, tok, [t.question for t in tasks], n=samples, max_new_tokens=64, temperature=1.0, seed=1
    )
    rows = []
    for i, s in enumerate(out):
        t = tasks[i // samples]
        rid = hashlib.sha1(f"{t.id}-{i}".encode()).hexdigest()[:12]
        rows.append(
            {
                "id": rid,
                "prompt_id": t.id,
                "prompt": t.question,
                "completion": s.text,
                "answer": t.answer,
                "completion_tokens": s.n_tokens,
                "reward_accuracy": 1.0 if is_correct(s.text, t.answer) else 0.0,
            }
        )
    d = ROOT / ("rollouts" if teacher_steps == TEACHER_STEPS else f"rollouts_{teacher_steps}")
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), d / "rollouts.parquet")
    return d


def as_input(path: Path, produces: str, stage: str):
    """An upstream handle for ``run_kind`` pointing at a directory built here."""
    from assets.registry import InputArtifact

    # named by what it is, not where this process's temporary directory is: a version that changed from run to
    # run changed every seed derived from it, and with it the results the tests compare
    rel = Path(path).relative_to(ROOT) if Path(path).is_relative_to(ROOT) else Path(path)
    version = hashlib.sha1(f"{stage}:{produces}:{rel}".encode()).hexdigest()[:16]
    return InputArtifact(
        stage=stage,
        kind=stage,
        produces=produces,
        version=version,
        path=Path(path),
        manifest={"stage": stage, "produces": produces},
    )


@functools.lru_cache(maxsize=1)
def fixed_prompts_dir(n: int = 16) -> Path:
    """A tasks artifact of ``n`` training prompts on which the teacher's T=1 samples are sometimes right and
    sometimes wrong (from :func:`rollouts_dir`), so a correct RL update visibly raises their accuracy."""
    import collections

    import pyarrow.parquet as pq

    from ops.tasks import write_tasks

    acc: dict[str, list[float]] = collections.defaultdict(list)
    for r in pq.read_table(rollouts_dir() / "rollouts.parquet").to_pylist():
        acc[r["prompt_id"]].append(r["reward_accuracy"])
    mixed = {k for k, v in acc.items() if 0 < sum(v) < len(v)}
    train, ev = splits()
    chosen = [t for t in train if t.id in mixed][:n]
    out = ROOT / "fixed_prompts"
    out.mkdir(parents=True, exist_ok=True)
    write_tasks(chosen, out / "train.parquet")
    write_tasks(ev[:10], out / "eval.parquet")
    return out
