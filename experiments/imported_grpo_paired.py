"""Does GRPO learn on an *imported* checkpoint with GSM8K-format data as it does on the pipeline's own model?

``python -m experiments.imported_grpo_paired OUT SFT_DIR RL_TASKS_DIR EVAL_TASKS_DIR [--sft-steps N] [--steps N]
[--seeds N] [--first-seed N] [--prompts-per-step N] [--lr X] [--beta X] [--n-eval N] [--max-new-tokens N]``:
the default pipeline's SFT checkpoint (``SFT_DIR``, e.g. its ``cold_sft``) is treated as a user's model: it is
exported to a plain ``save_pretrained`` directory (weights, config, tokenizer with its chat template) and the
generator's problems (``RL_TASKS_DIR``'s training split, e.g. ``rl_prompts``; ``EVAL_TASKS_DIR``'s held-out
split, e.g. the benchmark ``tasks``) are written as GSM8K-style Parquet (``question``, ``answer`` =
``'<worked solution>\\n#### n'``). A generated spec then imports both through the recipe's own stage kinds
(``hf_model``, ``task_file`` with ``answer_from: gsm8k``) and, with ``--sft-steps`` > 0, runs the recipe's
SFT on the GSM8K-style solutions, since the checkpoint answers in ``<think>/<answer>`` tags and the gsm8k
format scores ``#### n``. That artifact is the start and KL reference of every seed; each seed runs the grpo
stage's code (``ops.rl.grpo.train_grpo``) on the imported task set's training split with the recipe's rewards
(accuracy + 0.1 format, gsm8k format) and is scored on the held-out split as in ``experiments/grpo_paired.py``
(greedy accuracy, sampled accuracy at T=1 with 8 samples, pass@8, per-item scores). Paired gains over seeds
(``significant``: at least 3 seeds and mean gain above 2 SE) and over items come from ``ops.eval.metrics``.
Results go to ``OUT/imported_grpo_paired_s<first seed>.json`` after every seed; ``python -m
experiments.imported_grpo_paired merge DEST PART.json...`` merges seeds run as separate processes (same start)
and recomputes the statistics.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

REWARDS = ("accuracy", {"format": {"weight": 0.1}})


def export(sft_dir: Path, dest: Path) -> Path:
    """The checkpoint as a user would hand it over: ``save_pretrained`` of model and tokenizer, nothing else."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (dest / "config.json").is_file():
        tok = AutoTokenizer.from_pretrained(sft_dir)
        assert tok.chat_template, f"{sft_dir}: tokenizer without a chat template"
        AutoModelForCausalLM.from_pretrained(sft_dir).save_pretrained(dest, safe_serialization=True)
        tok.save_pretrained(dest)
    return dest


def gsm8k_parquet(tasks_dir: Path, split: str, dest: Path) -> Path:
    """``tasks_dir``'s ``split`` as GSM8K's columns: ``question`` and ``'<solution>\\n#### <answer>'``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pq.read_table(tasks_dir / f"{split}.parquet").to_pylist()
    table = pa.table(
        {
            "question": [r["question"] for r in rows],
            "answer": [f"{r['solution']}\n#### {r['answer']}" for r in rows],
        }
    )
    pq.write_table(table, dest)
    return dest


SPEC = """pipeline: imported_gsm8k
stages:
  base:  {{kind: hf_model, path: {model}}}
  gsm8k: {{kind: task_file, path: {train}, eval_path: {test}, answer_from: gsm8k}}
{sft}"""
SFT = "  sft:   {{kind: sft, model: base, data: [gsm8k], steps: {steps}, lr: {lr}, batch_size: 32, eval_problems: 0}}\n"


def import_through_stages(
    out: Path, sft_dir: Path, rl_dir: Path, eval_dir: Path, sft_steps: int, sft_lr: float, home: Path
) -> tuple[Path, Path]:
    """Materialize the generated spec in ``home``; ``(start model artifact, task set artifact)``."""
    import os

    from pipelines.cli import main
    from pipelines.spec import load_spec
    from resources.store import ArtifactStore

    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    model = export(sft_dir, out / "export")
    train = gsm8k_parquet(rl_dir, "train", data / "train-00000-of-00001.parquet")
    test = gsm8k_parquet(eval_dir, "eval", data / "test-00000-of-00001.parquet")
    spec = out / "imported_gsm8k.yaml"
    spec.write_text(
        SPEC.format(
            model=model,
            train=train,
            test=test,
            sft=SFT.format(steps=sft_steps, lr=sft_lr) if sft_steps else "",
        )
    )
    os.environ["LMFORGE_HOME"] = str(home)
    assert main(["--home", str(home), "materialize", str(spec)]) == 0
    s = load_spec(spec)
    store = ArtifactStore(home)
    start = "sft" if sft_steps else "base"
    return (
        store.get(s.stages[start].kind.name, s.stages[start].version).path,
        store.get("task_file", s.stages["gsm8k"].version).path,
    )


def scores(model, tok, tasks, k: int, max_new_tokens: int, seed: int = 1) -> dict:
    from ops.posttrain.common import task_accuracy

    g = task_accuracy(
        model, tok, tasks, temperature=0.0, max_new_tokens=max_new_tokens, batch_size=1024, per_item=True
    )
    s = task_accuracy(
        model,
        tok,
        tasks,
        samples=k,
        temperature=1.0,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=1024,
        per_item=True,
    )
    return {
        "greedy": g["accuracy"],
        "format": g["format_rate"],
        "sampled": s["accuracy"],
        "sampled_format": s["format_rate"],
        f"pass@{k}": s["pass_at_k"],
        "greedy_items": g["per_item"],
        "sampled_items": s["per_item"],
    }


def run(
    out_dir: Path | str,
    sft_dir: Path | str,
    rl_tasks_dir: Path | str,
    eval_tasks_dir: Path | str,
    sft_steps: int = 200,
    sft_lr: float = 1e-3,
    steps: int = 40,
    seeds: int = 3,
    first_seed: int = 0,
    prompts_per_step: int = 64,
    group_size: int = 8,
    lr: float = 5e-5,
    beta: float = 0.0,
    n_eval: int = 300,
    samples: int = 8,
    max_new_tokens: int = 64,
    home: Path | str | None = None,
) -> dict:
    import copy

    import torch

    from ops.eval.metrics import item_level_gains, paired_gains
    from ops.posttrain.common import load_policy
    from ops.rewards import parse_specs, with_answer_format
    from ops.rl.grpo import GRPOParams, train_grpo
    from ops.tasks import read_task_set

    out = Path(out_dir)
    start_dir, tasks_art = import_through_stages(
        out,
        Path(sft_dir),
        Path(rl_tasks_dir),
        Path(eval_tasks_dir),
        sft_steps,
        sft_lr,
        Path(home or out / "home"),
    )
    start_model, tok = load_policy(start_dir)
    train = read_task_set(tasks_art, "train")
    ev = read_task_set(tasks_art, "eval")[:n_eval]
    specs = with_answer_format(parse_specs(list(REWARDS)), "gsm8k")
    t0 = time.time()
    start = scores(start_model, tok, ev, samples, max_new_tokens)
    res: dict = {
        "sft": str(sft_dir),
        "rl_tasks": str(rl_tasks_dir),
        "eval_tasks": str(eval_tasks_dir),
        "start_model": str(start_dir),
        "task_set": str(tasks_art),
        "config": {
            "sft_steps": sft_steps,
            "sft_lr": sft_lr,
            "steps": steps,
            "prompts_per_step": prompts_per_step,
            "group_size": group_size,
            "lr": lr,
            "beta": beta,
            "rewards": list(REWARDS),
            "answer_format": "gsm8k",
            "n_eval": len(ev),
            "samples": samples,
            "max_new_tokens": max_new_tokens,
            "rl_prompts": len(train),
        },
        "threads": torch.get_num_threads(),
        "score_s": round(time.time() - t0, 1),
        "start": start,
        "runs": [],
    }
    print(json.dumps({"start": _scalars(start)}), flush=True)
    for seed in range(first_seed, first_seed + seeds):
        pol = copy.deepcopy(start_model).train().requires_grad_(True)
        t0 = time.time()
        torch.manual_seed(seed)
        st = train_grpo(
            pol,
            start_model,
            tok,
            train,
            specs,
            GRPOParams(
                steps=steps,
                prompts_per_step=prompts_per_step,
                group_size=group_size,
                lr=lr,
                warmup_steps=5,
                beta=beta,
                seed=seed,
                gen_batch_size=1024,
                max_new_tokens=max_new_tokens,
            ),
            log=lambda s: None,
            keep_rollouts=False,
        )
        h = [r for r in st.history if r["step"] > 0]
        q = max(len(h) // 4, 1)
        row = {
            "seed": seed,
            "after": scores(pol.eval(), tok, ev, samples, max_new_tokens),
            "wall_s": round(time.time() - t0, 1),
            "train_acc_first_q": sum(x["reward_accuracy"] for x in h[:q]) / q,
            "train_acc_last_q": sum(x["reward_accuracy"] for x in h[-q:]) / q,
            "kl_max": max(x.get("kl", 0.0) for x in h),
        }
        res["runs"].append(row)
        res.update(paired_gains(res["runs"], start))
        res.update(item_level_gains(res["runs"], start))
        (out / f"imported_grpo_paired_s{first_seed}.json").write_text(json.dumps(res, indent=1))
        print(
            json.dumps({k: v for k, v in row.items() if k != "after"} | {"after": _scalars(row["after"])}),
            flush=True,
        )
    return res


def merge(paths: list[str], dest: str) -> dict:
    """Seeds run as separate processes (same start, same home) merged into one result with the paired
    statistics recomputed over all of them."""
    from ops.eval.metrics import item_level_gains, paired_gains

    parts = [json.loads(Path(p).read_text()) for p in paths]
    res = {k: v for k, v in parts[0].items() if not k.startswith(("gain_", "items_"))}
    assert all(p["start"] == res["start"] and p["config"] == res["config"] for p in parts), "different starts"
    res["runs"] = sorted((r for p in parts for r in p["runs"]), key=lambda r: r["seed"])
    res.update(paired_gains(res["runs"], res["start"]))
    res.update(item_level_gains(res["runs"], res["start"]))
    Path(dest).write_text(json.dumps(res, indent=1))
    return res


def _scalars(d: dict) -> dict:
    return {k: v for k, v in d.items() if not isinstance(v, list)}


if __name__ == "__main__":
    import argparse
    import inspect

    if sys.argv[1:2] == ["merge"]:  # merge DEST PART.json...
        r = merge(sys.argv[3:], sys.argv[2])
        print(json.dumps({k: v for k, v in r.items() if k.startswith(("gain_", "items_"))}, indent=1))
        sys.exit(0)
    defaults = {k: v.default for k, v in inspect.signature(run).parameters.items()}
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for a in ("out_dir", "sft_dir", "rl_tasks_dir", "eval_tasks_dir"):
        ap.add_argument(a)
    for name, cast in (
        ("sft_steps", int),
        ("sft_lr", float),
        ("steps", int),
        ("seeds", int),
        ("first_seed", int),
        ("prompts_per_step", int),
        ("lr", float),
        ("beta", float),
        ("n_eval", int),
        ("max_new_tokens", int),
    ):
        ap.add_argument("--" + name.replace("_", "-"), type=cast, default=defaults[name])
    ap.add_argument("--home", default=None, help="lmforge home of the import stages (default OUT/home)")
    r = run(**vars(ap.parse_args()))
    print(json.dumps({k: _scalars(v) if k == "start" else v for k, v in r.items() if k != "runs"}, indent=1))
