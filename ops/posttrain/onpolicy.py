"""On-policy preference pairs and iterative DPO (Iterative Reasoning Preference Optimization, Pang et al. 2024).

Each iteration samples ``samples`` completions per prompt from the current policy (``ops.generate``), scores
them in each task's answer format (``ops.answers``, the one answer registry), pairs correct against incorrect
completions of the same prompt (``ops.posttrain.rm.pairs_from_rollouts``), and trains on them with
``ops.posttrain.dpo.train_dpo`` (the shared training core) for ``DPOParams.steps`` updates.

Key design choices:

* The reference of iteration ``i`` is the policy as iteration ``i`` starts, i.e. the model trained by
  iteration ``i-1`` (``reference_update="previous"``, the paper's M_{t-1}); ``"initial"`` keeps the starting
  reference for every iteration, a stronger anchor against drift over many iterations.
* Completions cut off at ``max_new_tokens`` never enter a pair: training on them would teach the end-of-turn
  token where the policy had not stopped.
* Everything random is seeded from ``seed`` and the iteration number (prompt draw, sampling, pairing, batch
  order), so a run is a pure function of its inputs and seed. Iteration ``i`` checkpoints under
  ``work_dir/iteration-<i>``, so a restarted run resumes each iteration's training where it stopped.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ops.answers import is_correct
from ops.posttrain.common import strip_stop
from ops.posttrain.rm import Pair, pairs_from_rollouts, split_pairs
from ops.tasks import Task

REFERENCE_UPDATES = ("previous", "initial")


@dataclass
class OnPolicyParams:
    iterations: int = 2
    samples: int = 8  # completions per prompt and iteration
    prompts_per_iteration: int = 256
    max_pairs_per_prompt: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    held_out: float = 0.2  # share of each iteration's prompts held out for margins
    reference_update: str = "previous"  # previous | initial


def sample_rollouts(
    policy: Any, tok: Any, tasks: list[Task], samples: int, max_new_tokens: int, temperature: float, seed: int
) -> list[dict]:
    """``samples`` completions per task from ``policy``, each scored in its task's answer format; rows in the
    ``rollouts.parquet`` shape :func:`pairs_from_rollouts` reads (unfinished completions left out)."""
    from ops.generate import generate

    out = generate(
        policy,
        tok,
        [t.question for t in tasks],
        n=samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
    )
    rows = []
    for k, s in enumerate(out):
        t = tasks[k // samples]
        if not s.finished:
            continue
        rows.append(
            {
                "id": f"{t.id}-s{seed}-{k % samples}",
                "prompt_id": t.id,
                "prompt": t.question,
                "completion": strip_stop(s.text),
                "reward_accuracy": float(is_correct(s.text, t.answer, t.answer_format)),
            }
        )
    return rows


def on_policy_pairs(
    policy: Any, tok: Any, tasks: list[Task], o: OnPolicyParams, seed: int
) -> tuple[list[Pair], dict]:
    """Correct-vs-incorrect pairs from ``o.prompts_per_iteration`` tasks drawn with ``seed``, and the
    sampling statistics (accuracy of the samples, prompts with both a correct and an incorrect sample)."""
    draw = sorted(random.Random(seed).sample(range(len(tasks)), min(o.prompts_per_iteration, len(tasks))))
    chosen = [tasks[i] for i in draw]
    rows = sample_rollouts(policy, tok, chosen, o.samples, o.max_new_tokens, o.temperature, seed)
    pairs = pairs_from_rollouts(rows, o.max_pairs_per_prompt, seed)
    n = len(chosen) * o.samples
    stats = {
        "prompts": len(chosen),
        "samples": n,
        "finished": len(rows),
        "sample_accuracy": sum(r["reward_accuracy"] for r in rows) / max(n, 1),
        "prompts_paired": len({p.prompt for p in pairs}),
        "pairs": len(pairs),
    }
    return pairs, stats


def train_iterative_dpo(
    policy: Any,
    reference: Any,
    tok: Any,
    tasks: list[Task],
    p: Any,
    o: OnPolicyParams,
    *,
    work_dir: Path | None,
    fingerprint: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """``o.iterations`` rounds of sample -> pair -> train (``p``: a ``DPOParams``) on ``policy`` in place.

    Returns per-iteration records (sampling statistics, held-out margin and accuracy before/after that
    iteration's training against that iteration's reference) and the concatenated training curve.
    """
    from ops.posttrain.dpo import check_params, pair_margins, train_dpo

    check_params(p)
    if o.reference_update not in REFERENCE_UPDATES:
        raise ValueError(f"reference_update must be one of {REFERENCE_UPDATES}, got {o.reference_update!r}")
    if not tasks:
        raise ValueError("on-policy DPO needs at least one task to sample from")
    history, curve, losses = [], [], []
    for i in range(o.iterations):
        seed = p.seed * 1000 + i
        ref = reference if (i == 0 or o.reference_update == "initial") else copy.deepcopy(policy).eval()
        pairs, st = on_policy_pairs(policy, tok, tasks, o, seed)
        train_p, held = split_pairs(pairs, o.held_out, seed)
        log(
            f"iteration {i}: {st['pairs']} pairs from {st['prompts_paired']}/{st['prompts']} prompts "
            f"(sample accuracy {st['sample_accuracy']:.3f}), {len(train_p)} for training"
        )
        if not train_p:
            raise ValueError(
                f"iteration {i}: no prompt had both a correct and an incorrect finished sample "
                f"({st['samples']} samples, accuracy {st['sample_accuracy']:.3f}); raise samples or temperature"
            )
        before = pair_margins(policy, ref, tok, held, p.beta, p.max_len)
        wd = work_dir / f"iteration-{i}" if work_dir is not None else None
        info = train_dpo(
            policy, ref, tok, train_p, replace(p, seed=seed), work_dir=wd, fingerprint=fingerprint, log=log
        )
        after = pair_margins(policy, ref, tok, held, p.beta, p.max_len)
        history.append(
            {
                "iteration": i,
                **st,
                "train_pairs": info["pairs"],
                "held_out_pairs": after["pairs"],
                "margin_before": before["margin"],
                "margin_after": after["margin"],
                "accuracy_after": after["accuracy"],
                "final_loss": info["losses"][-1],
            }
        )
        offset = i * p.steps
        curve += [{**r, "step": r["step"] + offset, "iteration": i} for r in info["curve"]]
        losses += info["losses"]
    return {"iterations": history, "curve": curve, "losses": losses}
