"""Evaluation throughput: lmforge's KV-cached budget-forcing decode loop against plain ``transformers``
``generate`` on the same model, the same prompts and the same number of new tokens, in the same run.

The model is a randomly initialised Qwen2 (d=128, 4 layers) with lmforge's tokenizer: a random model never
closes its thinking, so both sides generate exactly ``think + answer`` tokens per item and the comparison is
token-for-token fair. A second figure times the whole ``evaluate`` stage (greedy + samples + a budget sweep).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

ITEMS = 64
BATCH = 32
THINK = 48
ANSWER = 8
REPS = 2


def run(out_dir: Path) -> dict:

    from ops.eval.budget import generate_with_budget
    from ops.eval.tiny import make_tiny_chat_model, tiny_tasks
    from ops.generate import chat_prompts
    from ops.model import load_model
    from ops.tokenizer import load_tokenizer

    res: dict = {"items": ITEMS, "batch": BATCH, "new_tokens_per_item": THINK + 2 + ANSWER}
    with tempfile.TemporaryDirectory() as d:
        mdir = make_tiny_chat_model(Path(d) / "m", train_steps=0, d_model=128, layers=4)
        model, tok = load_model(mdir), load_tokenizer(mdir)
        qs = [t.question for t in tiny_tasks(10, ITEMS)[1]]
        prompts = chat_prompts(tok, qs)

        think_id = tok.convert_tokens_to_ids("<think>")

        def ours_run() -> int:
            gens = generate_with_budget(
                model, tok, prompts, max_think_tokens=THINK, max_answer_tokens=ANSWER, batch_size=BATCH
            )
            return sum(len(g.token_ids) for g in gens)

        # alternate the two sides and keep each one's best of REPS: the machine is shared and noisy
        ours, hf = float("inf"), float("inf")
        for _ in range(REPS):
            t0 = time.perf_counter()
            ours_tokens = ours_run()
            ours = min(ours, time.perf_counter() - t0)
            t0 = time.perf_counter()
            hf_tokens = _hf_run(model, tok, prompts, think_id)
            hf = min(hf, time.perf_counter() - t0)
        res.update(
            {
                "lmforge_items_per_s": round(ITEMS / ours, 2),
                "transformers_items_per_s": round(ITEMS / hf, 2),
                "speedup_vs_transformers": round(hf / ours, 2),
                "lmforge_tokens_per_s": round(ours_tokens / ours, 1),
                "transformers_tokens_per_s": round(hf_tokens / hf, 1),
            }
        )
        _stage(res, mdir, Path(d))
    return res


def _hf_run(model, tok, prompts, think_id) -> int:
    import torch

    hf_tokens = 0
    with torch.inference_mode():
        for s in range(0, len(prompts), BATCH):
            chunk = [p + [think_id] for p in prompts[s : s + BATCH]]
            w = max(len(p) for p in chunk)
            ids = torch.tensor([[tok.pad_token_id] * (w - len(p)) + p for p in chunk])
            mask = torch.tensor([[0] * (w - len(p)) + [1] * len(p) for p in chunk])
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=THINK + 1 + ANSWER,
                min_new_tokens=THINK + 1 + ANSWER,
                pad_token_id=tok.pad_token_id,
            )
            hf_tokens += (out.shape[1] - w + 1) * len(chunk)
    return hf_tokens


def _stage(res: dict, mdir: Path, d: Path) -> None:
    """The whole evaluate stage on the same model (greedy + 4 samples + 3 budgets), via the kind."""
    from pipelines.execute import run_kind
    from tests.assets.eval_fixtures import model_artifact, tasks_artifact

    home = d / "home"
    home.mkdir()
    tasks = tasks_artifact(home, n_eval=ITEMS)
    m = model_artifact(home, mdir, "m")
    cfg = {
        "models": ["m"],
        "tasks": ["tasks"],
        "max_items": ITEMS,
        "samples": 4,
        "budgets": [8, 16, 32],
        "max_think_tokens": THINK,
        "max_answer_tokens": ANSWER,
        "batch_size": 128,
    }
    t0 = time.perf_counter()
    run_kind(
        "evaluate", cfg, home, inputs={"models": [m], "tasks": [tasks]}, partition="m", log=lambda _m: None
    )
    stage = time.perf_counter() - t0
    res["evaluate_stage_s"] = round(stage, 2)
    res["evaluate_stage_generations_per_s"] = round(ITEMS * 8 / stage, 2)


if __name__ == "__main__":
    import json

    print(json.dumps(run(Path(".")), indent=1))
