"""Kimi k1.5's long-to-short at tiny scale: do shortest-correct rejection sampling + SFT, length-penalty RL and
a long/short weight merge cut a long-thinking model's response tokens at its accuracy? A paired experiment over
items and seeds.

``python -m experiments.long2short long OUT START_DIR PROBLEMS_DIR EVAL_TASKS_DIR [--exclude-dirs A,B]
[--verify-examples N] [--correction-rate X] [--steps N] ...`` builds the long model as the recipe's
``long_problems`` and ``long`` stages do (``pipelines/long2short.yaml``): START_DIR (the default's ``sft2``)
fine-tuned on fresh difficulty-2 problems in the ``verify`` style (every step checked, slipped steps corrected
after " Wait,"; disjoint from PROBLEMS_DIR and every tasks artifact in ``--exclude-dirs``) mixed with the plain
solutions of PROBLEMS_DIR (the default's ``problems``). It writes ``OUT/long_model`` and ``OUT/long_model.json``
(greedy and T=1 accuracy and response tokens of start and long model on EVAL_TASKS_DIR's held-out problems).

``python -m experiments.long2short OUT LONG_DIR PROMPTS_DIR EVAL_TASKS_DIR [--seeds N] [--n-eval N]
[--rs-prompts N] [--rs-samples K] [--sft-steps N] [--sft-lr X] [--rl-steps N] [--rl-prompts-per-step N]
[--rl-lr X] [--length-weight X] [--merge-weight X] [--merge-with SHORT_DIR] [--max-new-tokens N]
[--first-seed N]`` (and ``python -m experiments.long2short combine OUT PART.json ...`` to join seeds run in
separate processes): LONG_DIR is the long model (``OUT/long_model`` above), PROMPTS_DIR a tasks artifact whose
training split gives the prompts (the default's ``rl_prompts``), EVAL_TASKS_DIR the tasks artifact whose
held-out split is scored (the default's benchmark ``tasks``). For each seed, from the same long model, with the
code of the stage kinds the recipe uses:

``--rs-prompts 0`` leaves out ``rs_sft`` and ``--rl-steps 0`` leaves out ``length_rl`` and ``merged``, so the
methods can run in separate processes.

* ``rs_sft``: ``rejection_sample`` with ``keep: shortest`` (``ops.posttrain.rejection``), then ``sft`` of the
  long model on the kept samples (``ops.posttrain.sft``);
* ``length_rl``: ``grpo`` from the long model with ``rewards: [accuracy, format, {length: ...}]`` (Kimi's length
  penalty, ``ops.rewards``; ``ops.rl.grpo``);
* ``merged``: a linear ``merge`` of the long model and ``length_rl`` (``ops.posttrain.merge``);
* ``merged_short`` (with ``--merge-with``): a linear merge of the long model and SHORT_DIR (the short model it
  was trained from, the recipe's ``l2s_merged``); it does not depend on the seed and is computed once.

Every model is scored greedily (``--max-new-tokens``, which must fit the long model's traces; the same cap bounds
sampling in rejection sampling and RL) on the first ``n_eval`` held-out problems: correctness and response
tokens per item. Reported per method: per-seed accuracy and mean tokens; over items (each item's score averaged
over seeds): the token ratio short/long with a bootstrap interval, and the accuracy change with its paired
interval; over seeds: the mean change and its standard error. ``holds`` (as the report card's long-to-short
section, ``ops.eval.report_length``): at least 30% fewer tokens and no accuracy loss beyond noise over items.
Results go to ``OUT/long2short.json`` after every seed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METHODS = ("rs_sft", "length_rl", "merged", "merged_short")


def methods(runs: list[dict]) -> list[str]:
    """The methods every run measured, in :data:`METHODS` order."""
    return [m for m in METHODS if all(m in r for r in runs)]


def greedy_items(model, tok, tasks, max_new_tokens: int = 64) -> dict:
    """Greedy correctness and response tokens of every task, in order."""
    from ops.generate import generate
    from ops.tasks import is_correct

    out = generate(
        model,
        tok,
        [t.question for t in tasks],
        n=1,
        max_new_tokens=max_new_tokens,
        temperature=0.0,
        batch_size=1024,
    )
    correct = [float(is_correct(s.text, t.answer, t.answer_format)) for s, t in zip(out, tasks)]
    tokens = [float(s.n_tokens) for s in out]
    return {
        "accuracy": sum(correct) / len(correct),
        "mean_tokens": sum(tokens) / len(tokens),
        "correct_items": correct,
        "token_items": tokens,
    }


def sampled_items(model, tok, tasks, samples: int, max_new_tokens: int, seed: int = 0) -> dict:
    """Sampled (T=1) correctness and response tokens, ``samples`` per task: how long and how varied the
    model's own samples are (what shortest-correct selection and a length reward can act on)."""
    from ops.generate import generate
    from ops.tasks import is_correct

    out = generate(
        model,
        tok,
        [t.question for t in tasks],
        n=samples,
        max_new_tokens=max_new_tokens,
        temperature=1.0,
        seed=seed,
        batch_size=1024,
    )
    correct = [
        float(is_correct(s.text, t.answer, t.answer_format))
        for s, t in zip(out, [t for t in tasks for _ in range(samples)])
    ]
    tokens = sorted(float(s.n_tokens) for s in out)
    q = lambda f: tokens[min(len(tokens) - 1, int(f * len(tokens)))]  # noqa: E731
    return {
        "accuracy": sum(correct) / len(correct),
        "mean_tokens": sum(tokens) / len(tokens),
        "tokens_p10_p50_p90_max": [q(0.1), q(0.5), q(0.9), tokens[-1]],
        "checked_fraction": sum(", check " in s.text for s in out) / len(out),
        "wait_fraction": sum(" Wait," in s.text for s in out) / len(out),
    }


def make_long(
    out_dir: Path | str,
    start_dir: Path | str,
    problems_dir: Path | str,
    eval_tasks_dir: Path | str,
    exclude_dirs: str = "",
    verify_examples: int = 40000,
    correction_rate: float = 0.2,
    data_seed: int = 3,
    steps: int = 100,
    lr: float = 5e-4,
    batch_size: int = 32,
    seed: int = 0,
    n_eval: int = 300,
    samples: int = 2,
    max_new_tokens: int = 256,
) -> dict:
    """The long model: ``start_dir`` (the default's ``sft2``) fine-tuned on worked solutions in the ``verify``
    style (each step checked, slipped steps corrected after " Wait,") for ``verify_examples`` fresh
    difficulty-2 problems (generator seed ``data_seed``, disjoint from every tasks artifact in
    ``exclude_dirs``, comma-separated, and from ``problems_dir``), mixed with the plain solutions of
    ``problems_dir`` (the default's ``problems``), as the recipe's ``long_problems`` and ``long`` stages.
    Writes the model to ``OUT/long_model`` and, for start and long model, greedy and sampled accuracy and
    response tokens to ``OUT/long_model.json``."""
    import torch

    from ops.model import save_model
    from ops.posttrain.common import Example, examples_from_artifact, load_policy
    from ops.posttrain.sft import SFTParams, train_sft
    from ops.tasks import make_splits, read_tasks

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    excluded: set[str] = set()
    for d in [p for p in exclude_dirs.split(",") if p] + [str(problems_dir)]:
        for split in ("train", "eval"):
            excluded |= {t.question for t in read_tasks(Path(d) / f"{split}.parquet")}
    verify, _ = make_splits(
        verify_examples,
        0,
        data_seed,
        (2,),
        exclude=excluded,
        solution_style="verify",
        correction_rate=correction_rate,
    )
    examples = [Example(t.id, t.question, t.response, t.answer, (t.id,)) for t in verify]
    examples += examples_from_artifact("tasks", Path(problems_dir))
    model, tok = load_policy(start_dir)
    ev = read_tasks(Path(eval_tasks_dir) / "eval.parquet")[:n_eval]
    res: dict = {
        "start": str(start_dir),
        "config": {
            "verify_examples": len(verify),
            "plain_examples": len(examples) - len(verify),
            "correction_rate": correction_rate,
            "data_seed": data_seed,
            "sft": {"steps": steps, "lr": lr, "batch_size": batch_size, "warmup_steps": 10, "seed": seed},
            "n_eval": len(ev),
            "max_new_tokens": max_new_tokens,
        },
        "threads": torch.get_num_threads(),
    }
    t0 = time.time()
    model.eval()
    res["start_greedy"] = greedy_items(model, tok, ev, max_new_tokens)
    res["start_sampled"] = sampled_items(model, tok, ev, samples, max_new_tokens)
    _say(f"start model scored ({time.time() - t0:.0f}s)")
    model.train()
    train_sft(
        model,
        tok,
        examples,
        SFTParams(steps=steps, lr=lr, batch_size=batch_size, warmup_steps=10, seed=seed),
        work_dir=None,
        log=lambda s: None,
    )
    model.eval()
    save_model(model, tok, out / "long_model")
    _say(f"long model trained ({time.time() - t0:.0f}s)")
    res["long_greedy"] = greedy_items(model, tok, ev, max_new_tokens)
    res["long_sampled"] = sampled_items(model, tok, ev, samples, max_new_tokens)
    res["wall_s"] = round(time.time() - t0, 1)
    (out / "long_model.json").write_text(json.dumps(res, indent=1))
    return res


def compare(long: dict, runs: list[dict]) -> dict:
    """The change from the long model to one method over items (scores averaged over seeds) and over seeds."""
    from ops.eval.metrics import bootstrap_ratio_interval, mean_se, paired_difference
    from ops.eval.report_length import MIN_CUT

    n = len(long["correct_items"])
    acc = [sum(r["correct_items"][i] for r in runs) / len(runs) for i in range(n)]
    tok = [sum(r["token_items"][i] for r in runs) / len(runs) for i in range(n)]
    ratio = sum(tok) / sum(long["token_items"])
    lo, hi = bootstrap_ratio_interval(tok, long["token_items"])
    items = paired_difference(long["correct_items"], acc)
    seed_acc = mean_se([r["accuracy"] - long["accuracy"] for r in runs])
    seed_ratio = mean_se([r["mean_tokens"] / long["mean_tokens"] for r in runs])
    kept = not (items["beyond_noise"] and items["diff"] < 0)
    return {
        "token_ratio": {"value": ratio, "low": lo, "high": hi},
        "accuracy_change_items": items,
        "accuracy_change_seeds": {"mean": seed_acc[0], "se": seed_acc[1]},
        "token_ratio_seeds": {"mean": seed_ratio[0], "se": seed_ratio[1]},
        "cut": ratio <= 1.0 - MIN_CUT,
        "accuracy_kept": kept,
        "holds": ratio <= 1.0 - MIN_CUT and kept,
    }


def run(
    out_dir: Path | str,
    long_dir: Path | str,
    prompts_dir: Path | str,
    eval_tasks_dir: Path | str,
    seeds: int = 3,
    first_seed: int = 0,
    n_eval: int = 300,
    rs_prompts: int = 150,
    rs_samples: int = 8,
    sft_steps: int = 60,
    sft_lr: float = 5e-4,
    sft_batch_size: int = 32,
    rl_steps: int = 12,
    rl_prompts_per_step: int = 16,
    rl_lr: float = 1e-4,
    length_weight: float = 1.0,
    merge_weight: float = 0.5,
    merge_with: str = "",
    max_new_tokens: int = 256,
) -> dict:
    import copy

    import torch

    from ops.posttrain.common import Example, load_policy
    from ops.posttrain.merge import merge_models
    from ops.posttrain.rejection import RejectionParams, rejection_sample
    from ops.posttrain.sft import SFTParams, train_sft
    from ops.rewards import parse_specs
    from ops.rl.grpo import GRPOParams, train_grpo
    from ops.tasks import read_tasks

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    long_model, tok = load_policy(long_dir)
    prompts = read_tasks(Path(prompts_dir) / "train.parquet")
    ev = read_tasks(Path(eval_tasks_dir) / "eval.parquet")[:n_eval]
    rewards = ["accuracy", "format", {"length": {"weight": length_weight}}]
    long = greedy_items(long_model.eval(), tok, ev, max_new_tokens)
    short_start = load_policy(merge_with)[0].eval() if merge_with else None
    res: dict = {
        "long": str(long_dir),
        "prompts": str(prompts_dir),
        "eval_tasks": str(eval_tasks_dir),
        "config": {
            "n_eval": len(ev),
            "rs": {"prompts": rs_prompts, "samples": rs_samples, "keep": "shortest", "temperature": 1.0},
            "sft": {"steps": sft_steps, "lr": sft_lr, "batch_size": sft_batch_size},
            "rl": {
                "steps": rl_steps,
                "prompts_per_step": rl_prompts_per_step,
                "group_size": 8,
                "lr": rl_lr,
                "beta": 0.0,
                "rewards": rewards,
            },
            "merge": {
                "method": "linear",
                "weights": [1 - merge_weight, merge_weight],
                "models": ["long", "length_rl"],
            },
            "merge_with": {"short": merge_with, "weights": [1 - merge_weight, merge_weight]}
            if merge_with
            else None,
            "max_new_tokens": max_new_tokens,
        },
        "threads": torch.get_num_threads(),
        "long_model": {k: v for k, v in long.items() if not k.endswith("_items")},
        "runs": [],
    }
    for seed in range(first_seed, first_seed + seeds):
        t0 = time.time()
        row: dict = {"seed": seed}
        # shortest-correct rejection sampling, then SFT of the long model on what was kept (rs_prompts 0: left out)
        if rs_prompts:
            sft_rows, _, stats = rejection_sample(
                long_model,
                tok,
                prompts[:rs_prompts],
                RejectionParams(
                    samples=rs_samples,
                    keep="shortest",
                    max_per_prompt=1,
                    max_response_tokens=max_new_tokens,
                    seed=seed,
                ),
                stage="l2s_rs",
            )
            row["rs"] = stats
            examples = [Example(r["id"], r["prompt"], r["response"], r["answer"]) for r in sft_rows]
            short_rs = copy.deepcopy(long_model).train()
            train_sft(
                short_rs,
                tok,
                examples,
                SFTParams(steps=sft_steps, lr=sft_lr, batch_size=sft_batch_size, warmup_steps=10, seed=seed),
                work_dir=None,
                log=lambda s: None,
            )
            row["rs_sft"] = greedy_items(short_rs.eval(), tok, ev, max_new_tokens)
            _say(f"seed {seed}: rs_sft scored ({time.time() - t0:.0f}s)")
        # length-penalty RL (no KL term, as the default's rl1); rl_steps 0 leaves it (and its merge) out
        if rl_steps:
            short_rl = copy.deepcopy(long_model).train().requires_grad_(True)
            torch.manual_seed(seed)
            st = train_grpo(
                short_rl,
                None,
                tok,
                prompts,
                parse_specs(rewards),
                GRPOParams(
                    steps=rl_steps,
                    prompts_per_step=rl_prompts_per_step,
                    group_size=8,
                    lr=rl_lr,
                    warmup_steps=3,
                    beta=0.0,
                    seed=seed,
                    max_new_tokens=max_new_tokens,
                    gen_batch_size=1024,
                ),
                log=lambda s: None,
                keep_rollouts=False,
            )
            h = [x for x in st.history if x["step"] > 0]
            row["rl_train"] = {
                k: [round(x.get(k, float("nan")), 4) for x in h]
                for k in ("reward_accuracy", "reward_length", "completion_tokens")
                if any(k in x for x in h)
            }
            short_rl.eval()
            row["length_rl"] = greedy_items(short_rl, tok, ev, max_new_tokens)
            merged = merge_models(
                [long_model, short_rl], ["long", "length_rl"], [1 - merge_weight, merge_weight]
            )
            row["merged"] = greedy_items(merged.eval(), tok, ev, max_new_tokens)
        if short_start is not None:
            # the long model merged with the short model it was trained from (seed-independent: seed 0 only)
            if not res["runs"]:
                m2 = merge_models(
                    [long_model, short_start], ["long", "short"], [1 - merge_weight, merge_weight]
                )
                res["merged_short"] = greedy_items(m2.eval(), tok, ev, max_new_tokens)
            row["merged_short"] = res["merged_short"]
        row["wall_s"] = round(time.time() - t0, 1)
        res["runs"].append(row)
        res["methods"] = {m: compare(long, [r[m] for r in res["runs"]]) for m in methods(res["runs"])}
        (out / "long2short.json").write_text(json.dumps({**res, "long_items": long}, indent=1))
        print(json.dumps(_summary(row)), flush=True)
    return res


def combine(out_dir: Path | str, parts: list[Path | str]) -> dict:
    """One result from runs of the same settings made in several processes (``--first-seed``): their runs
    together, the comparisons recomputed; written to ``OUT/long2short.json``."""
    loaded = [json.loads(Path(p).read_text()) for p in parts]
    first = loaded[0]
    for other in loaded[1:]:
        for k in ("long", "prompts", "eval_tasks", "config", "long_items"):
            if other[k] != first[k]:
                raise ValueError(f"{k} differs between the parts; only runs of the same settings combine")
    runs = sorted((r for x in loaded for r in x["runs"]), key=lambda r: r["seed"])
    if len({r["seed"] for r in runs}) != len(runs):
        raise ValueError(f"a seed appears twice: {[r['seed'] for r in runs]}")
    res = {**first, "runs": runs, "parts": [str(p) for p in parts]}
    res["methods"] = {m: compare(first["long_items"], [r[m] for r in runs]) for m in methods(runs)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "long2short.json").write_text(json.dumps(res, indent=1))
    return res


def _say(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def _summary(row: dict) -> dict:
    return {
        k: ({kk: vv for kk, vv in v.items() if not kk.endswith("_items")} if isinstance(v, dict) else v)
        for k, v in row.items()
        if k != "rl_train"
    }


if __name__ == "__main__":
    import argparse
    import inspect

    # every option and its default come from run()'s signature, so the two cannot drift apart
    if sys.argv[1:2] == ["long"]:
        # python -m experiments.long2short long OUT START_DIR PROBLEMS_DIR EVAL_TASKS_DIR [--exclude-dirs A,B] ...
        params = inspect.signature(make_long).parameters
        ap = argparse.ArgumentParser(description=make_long.__doc__.split("\n\n")[0])
        for name in ("out_dir", "start_dir", "problems_dir", "eval_tasks_dir"):
            ap.add_argument(name)
        for name, p in params.items():
            if p.default is not inspect.Parameter.empty:
                ap.add_argument("--" + name.replace("_", "-"), type=type(p.default), default=p.default)
        r = make_long(**vars(ap.parse_args(sys.argv[2:])))
        print(json.dumps({k: v for k, v in r.items() if not k.endswith("greedy")}, indent=1))
        print(
            json.dumps(
                {
                    k: {kk: vv for kk, vv in r[k].items() if not kk.endswith("_items")}
                    for k in ("start_greedy", "long_greedy")
                }
            )
        )
        sys.exit(0)
    if sys.argv[1:2] == ["combine"]:
        # python -m experiments.long2short combine OUT PART.json PART.json ...
        r = combine(sys.argv[2], sys.argv[3:])
        print(json.dumps(r["methods"], indent=1))
        sys.exit(0)
    params = inspect.signature(run).parameters
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("out_dir", "long_dir", "prompts_dir", "eval_tasks_dir"):
        ap.add_argument(name)
    for name, p in params.items():
        if p.default is not inspect.Parameter.empty:
            ap.add_argument("--" + name.replace("_", "-"), type=type(p.default), default=p.default)
    r = run(**vars(ap.parse_args()))
    print(json.dumps(r["methods"], indent=1))
