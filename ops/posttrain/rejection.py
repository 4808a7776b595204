"""Rejection sampling: k samples per prompt, kept by the verifier (all correct), by a reward model
(best-of-k) or by length (the shortest correct one, Kimi k1.5's long-to-short rejection sampling),
de-duplicated and length-capped, into an SFT dataset whose rows point at their rollouts.

Key design choice: every sample drawn is written as a rollout row with its own id, and every kept SFT row
lists that id in ``parent_ids``; the verifier is ``ops.tasks.is_correct`` in each task's answer format
(``ops.answers``), the same code rewards and evaluation use, so "kept" means exactly "verified correct" (a
test re-checks every kept row).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.generate import generate
from ops.posttrain.common import strip_stop
from ops.tasks import Task, format_ok, is_correct

KEEP_MODES = ("correct", "best_of_k", "shortest")


@dataclass
class RejectionParams:
    samples: int = 8
    keep: str = "correct"  # correct | best_of_k (needs a reward model) | shortest
    max_per_prompt: int = 2  # kept responses per prompt after de-duplication
    max_response_tokens: int = 96  # length cap (longer samples are rejected)
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    require_format: bool = True


def rejection_sample(
    model: Any,
    tok: Any,
    tasks: list[Task],
    p: RejectionParams,
    *,
    reward_model: Any = None,
    stage: str = "rs",
) -> tuple[list[dict], list[dict], dict]:
    """Returns ``(sft_rows, rollout_rows, stats)``."""
    if p.keep not in KEEP_MODES:
        raise ValueError(f"keep must be one of {list(KEEP_MODES)}, got {p.keep!r}")
    if p.keep == "best_of_k" and reward_model is None:
        raise ValueError("keep='best_of_k' needs a reward model")
    samples = generate(
        model,
        tok,
        [t.question for t in tasks],
        n=p.samples,
        max_new_tokens=p.max_response_tokens,
        temperature=p.temperature,
        top_p=p.top_p,
        seed=p.seed,
    )
    texts = [s.text for s in samples]
    rm_scores = None
    if reward_model is not None:
        from ops.posttrain.rm import score_texts

        rm_scores = score_texts(
            reward_model,
            tok,
            [tasks[i // p.samples].question for i in range(len(texts))],
            [strip_stop(t) for t in texts],
        )
    rollouts, sft = [], []
    stats = {
        "sampled": len(samples),
        "correct": 0,
        "kept": 0,
        "duplicates": 0,
        "too_long": 0,
        "prompts_kept": 0,
    }
    cand_tokens: list[int] = []  # lengths of the distinct correct samples (the candidates)
    kept_tokens: list[int] = []
    for ti, task in enumerate(tasks):
        seen: set[str] = set()
        cands = []
        for j in range(p.samples):
            k = ti * p.samples + j
            s, text = samples[k], texts[k]
            ok = is_correct(text, task.answer, task.answer_format)
            fmt = format_ok(text, task.answer_format)
            rid = f"{stage}-{task.id}-{j}"
            rollouts.append(
                {
                    "id": rid,
                    "prompt_id": task.id,
                    "prompt": task.question,
                    "answer": task.answer,
                    "completion": text,
                    "prompt_tokens": len(s.prompt_ids),
                    "completion_tokens": s.n_tokens,
                    "finished": s.finished,
                    "group": ti,
                    "reward": float(ok),
                    "advantage": 0.0,
                    "policy_version": 0,
                    "stage": stage,
                    "reward_accuracy": float(ok),
                    "reward_format": float(fmt),
                    "reward_model": float(rm_scores[k]) if rm_scores is not None else float("nan"),
                }
            )
            stats["correct"] += ok
            if not s.finished:
                stats["too_long"] += 1
                continue
            if not ok or (p.require_format and not fmt):
                continue
            body = strip_stop(text)
            if body in seen:
                stats["duplicates"] += 1
                continue
            seen.add(body)
            cand_tokens.append(s.n_tokens)
            score = rm_scores[k] if rm_scores is not None and p.keep != "shortest" else 0.0
            cands.append((score, -s.n_tokens, rid, body, s.n_tokens))
        cands.sort(reverse=True)  # best reward-model score first (shortest: length only), then shortest
        chosen = cands[:1] if p.keep in ("best_of_k", "shortest") else cands[: p.max_per_prompt]
        for _, _, rid, body, n_tokens in chosen:
            kept_tokens.append(n_tokens)
            sft.append(
                {
                    "id": f"{rid}-sft",
                    "prompt": task.question,
                    "response": body,
                    "answer": task.answer,
                    "parent_ids": [rid, task.id],
                }
            )
        stats["prompts_kept"] += bool(chosen)
    stats["kept"] = len(sft)
    # mean length of the candidates and of the kept samples: what a length-based selection saved
    stats["candidate_mean_tokens"] = sum(cand_tokens) / len(cand_tokens) if cand_tokens else None
    stats["kept_mean_tokens"] = sum(kept_tokens) / len(kept_tokens) if kept_tokens else None
    return sft, rollouts, stats


def write_sft(rows: list[dict], path: Path) -> None:
    """The kept rows as an ``sft_data`` Parquet file (id, prompt, response, answer, parent_ids)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("id", pa.string()),
            ("prompt", pa.string()),
            ("response", pa.string()),
            ("answer", pa.string()),
            ("parent_ids", pa.list_(pa.string())),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, compression="zstd")
