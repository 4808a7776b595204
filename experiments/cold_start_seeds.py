"""How much does the default cold start depend on the base model's draw, and which SFT setting is stable?

``python -m experiments.cold_start_seeds OUT TOKENS_DIR TOKENIZER_DIR PROBLEMS_DIR TASKS_DIR --seeds 1,2
[--settings default,wsd] [--base-dir LABEL=DIR ...] [--stored LABEL=DIR ...] [--n-eval 300] [--eval-every 200]
[--sampled 4] [--threads 1] [--base-precision fp32]``

For each base seed, pretrains the default pipeline's ``base`` (the ``pretrain`` kind's job, built the way the
stage builds it: d=128 4-layer Qwen2, 1.5M tokens, seq 64, batch 32, lr 2e-3, warm-up 30, on TOKENS_DIR with
TOKENIZER_DIR) with that seed, in ``--base-precision`` (its validation loss is also measured in fp32), or
takes a stored base given as ``--base-dir LABEL=DIR`` (LABEL in ``--seeds``; e.g. the default home's ``base``
as seed 0, or a base of another corpus draw), then runs the ``sft`` kind's training
(``ops.posttrain.sft.train_sft``) from it on PROBLEMS_DIR's worked solutions once per setting of ``SETTINGS``
(``wsd`` is the pipeline's ``cold_sft``, ``default`` its earlier cosine schedule). Every setting runs the
padded forward (``length_groups`` 0) unless it names ``length_groups`` (``ops.posttrain.sft.LENGTH_GROUPS``;
``row_order`` reorders each batch's rows, a rounding-only control),
so runs stay comparable whatever the pipeline's own forward is. Every ``--eval-every`` steps and at the end,
the model is scored greedily on the first ``--n-eval`` held-out problems of TASKS_DIR (the benchmark), item by
item; ``--sampled K`` also samples K answers per problem at T=1 at the last step (the stage's
``eval_samples``). ``--stored LABEL=DIR`` scores a stored cold_sft artifact (the default's own run on base
LABEL) the same way; it stands for the default on a base the study did not rerun it on. Every run writes
``OUT/runs/s<label>_<setting>.json`` (per-step training losses, logged grad norms, per-item correctness at
each evaluated step, the training's CPU seconds per step without the evaluations) as soon as it finishes, so a
study cut short keeps what it measured, and several processes can share OUT.
``python -m experiments.cold_start_seeds OUT --summary [--ref default]`` gathers every run in OUT into
``OUT/cold_start_seeds.json``: per setting and step, accuracy per base with mean, SD and range over bases, and
against the reference setting ``--ref`` the per-item paired difference (items averaged over the bases both
ran, ``ops.eval.metrics.paired_difference``), the same interval on each base alone, and the per-base
differences with their mean and standard error; greedy, and sampled where both runs sampled.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# the default pipeline's base (pipelines/tiny_r1.yaml) and its cold_sft
BASE = {
    "arch": {"arch": "qwen2", "d_model": 128, "layers": 4, "heads": 4, "kv_heads": 2},
    "tokens": 1_500_000,
    "seq_len": 64,
    "batch_size": 32,
    "lr": 2e-3,
    "warmup_steps": 30,
    "eval_every": 100,
    "eval_tokens": 8192,
}
COLD_SFT = {
    "steps": 800,
    "lr": 2e-3,
    "batch_size": 64,
    "warmup_steps": 20,
    "optim": {},
    "length_groups": 0,
    "precision": "fp32",
    "sft_seed": 0,
    "head_fp32": False,
    "row_order": None,
}
# candidate settings: overrides of COLD_SFT; every one trains on the same tokens in the same or fewer steps
SETTINGS: dict[str, dict] = {
    "default": {},
    "wsd": {"optim": {"schedule": "wsd"}},
    "lr3e-3": {"lr": 3e-3},
    "lr1e-3": {"lr": 1e-3},
    "wsd_lr3e-3": {"lr": 3e-3, "optim": {"schedule": "wsd"}},
    "warm100": {"warmup_steps": 100},
    "bs32": {"batch_size": 32, "steps": 1600},
    # the wsd cold start with its batches run as 3 length-sorted groups without the padding mask
    "wsd_grouped": {"optim": {"schedule": "wsd"}, "length_groups": 3},
    # the same grouped wsd cold start in fewer steps (the schedule's shape scales with the steps)
    "wsd_grouped_s600": {"optim": {"schedule": "wsd"}, "length_groups": 3, "steps": 600},
    "wsd_grouped_s500": {"optim": {"schedule": "wsd"}, "length_groups": 3, "steps": 500},
    # the grouped wsd cold start under CPU bf16 autocast (attention in fp32; ops.train.core.autocast_ctx)
    "wsd_grouped_bf16": {"optim": {"schedule": "wsd"}, "length_groups": 3, "precision": "bf16"},
    # both again with another SFT draw (data order and initialisation seed 1)
    "wsd_grouped_seed1": {"optim": {"schedule": "wsd"}, "length_groups": 3, "sft_seed": 1},
    "wsd_grouped_bf16_seed1": {"optim": {"schedule": "wsd"}, "length_groups": 3, "precision": "bf16", "sft_seed": 1},
    # bf16 with the vocabulary head (the logits) computed in fp32, both SFT draws
    "wsd_grouped_bf16_head32": {"optim": {"schedule": "wsd"}, "length_groups": 3, "precision": "bf16", "head_fp32": True},
    "wsd_grouped_bf16_head32_seed1": {
        "optim": {"schedule": "wsd"}, "length_groups": 3, "precision": "bf16", "head_fp32": True, "sft_seed": 1,
    },
    # rounding-only controls of wsd: the padded forward with each batch's rows reversed or rolled by half
    # (the same loss function and data; only the float summation order differs, at every step)
    "wsd_flip": {"optim": {"schedule": "wsd"}, "row_order": "flip"},
    "wsd_roll": {"optim": {"schedule": "wsd"}, "row_order": "roll"},
    # the same three rounding draws of a 1000-step wsd cold start (the decay over its own last fifth)
    "wsd_s1000": {"optim": {"schedule": "wsd"}, "steps": 1000},
    "wsd_s1000_flip": {"optim": {"schedule": "wsd"}, "steps": 1000, "row_order": "flip"},
    "wsd_s1000_roll": {"optim": {"schedule": "wsd"}, "steps": 1000, "row_order": "roll"},
}


def reorder_rows(batch: dict, how: str) -> dict:
    """``batch`` with its rows reversed (``flip``) or rolled by half the batch (``roll``): every per-row
    tensor and the ``index`` list alike. SFT's loss is a token-level mean over all rows' labelled positions,
    so it is the same function of the weights; only the order of the float sums changes."""
    import torch

    n = len(batch["input_ids"])
    perm = list(range(n))[::-1] if how == "flip" else [(i + n // 2) % n for i in range(n)]
    idx = torch.tensor(perm)
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == n:
            out[k] = v[idx.to(v.device)]
        elif isinstance(v, list) and len(v) == n:
            out[k] = [v[i] for i in perm]
        else:
            out[k] = v
    return out


def pretrain_base(
    seed: int, tokens_dir: Path, tokenizer_dir: Path, out: Path, threads: int, precision: str = "fp32"
) -> dict:
    """Pretrain the default base with ``seed`` into ``out`` (the pretrain stage's job, in process), in
    ``precision``; its final validation loss is also measured in fp32 (``val_loss_fp32``)."""
    from dataclasses import asdict

    from ops import planner
    from ops.tokenizer import load_tokenizer
    from ops.train.lm import resume_fingerprint, run_pretraining
    from ops.train.optim import PretrainOptimConfig, TrainConfig

    vocab = len(load_tokenizer(tokenizer_dir))
    arch = {**BASE["arch"], "max_seq_len": BASE["seq_len"]}
    p = planner.plan(
        vocab_size=vocab,
        seq_len=BASE["seq_len"],
        tokens_per_step=BASE["batch_size"] * BASE["seq_len"],
        arch=arch,
        tokens=BASE["tokens"],
    )
    opt = PretrainOptimConfig().model_dump()
    train = asdict(
        TrainConfig(
            steps=p.steps,
            lr=BASE["lr"],
            warmup_steps=BASE["warmup_steps"],
            eval_every=BASE["eval_every"],
            log_every=10,
            seed=seed,
            ckpt_every=0,
            precision=precision,
            **opt,
        )
    )
    train["betas"] = list(train["betas"])
    work = out.parent / f"{out.name}.work"
    job = {
        "tokens_dir": str(tokens_dir),
        "tokenizer_dir": str(tokenizer_dir),
        "out_dir": str(out),
        "work_dir": str(work),
        "arch": p.arch,
        "seq_len": BASE["seq_len"],
        "batch_size": BASE["batch_size"],
        "eval_tokens": BASE["eval_tokens"],
        "eval_batch_size": 16,
        "prompts": ["The "],
        "sample_tokens": 8,
        "seed": seed,
        "device": "cpu",
        "threads": threads,
        "train": train,
        "fingerprint": {**resume_fingerprint(tokens_dir, tokenizer_dir), "seed": seed},
    }
    res = run_pretraining(job, log=lambda s: None, progress=False)
    import torch

    from ops.model import load_model
    from ops.tokens import TokenStream, unigram_entropy
    from ops.train.lm import evaluate_lm

    h = unigram_entropy(TokenStream(tokens_dir, "val").tokens)
    with torch.no_grad():
        ev32 = evaluate_lm(
            load_model(out), TokenStream(tokens_dir, "val"), seq_len=BASE["seq_len"],
            max_tokens=BASE["eval_tokens"], batch_size=16, device="cpu",
        )
    info = {
        "precision": precision,
        "val_loss_fp32": ev32["val_loss"],
        "steps": res["steps_done"],
        "val_loss": res["final_eval"]["val_loss"],
        "val_loss_vs_unigram": res["final_eval"]["val_loss"] / h,
        "spikes": len(res["spikes"]),
        "wall_s": round(res["train_wall_s"], 1),
    }
    (out / "study_base.json").write_text(json.dumps(info))
    return info


def sft_run(
    setting: str, base_dir: Path, problems_dir: Path, ev: list, eval_every: int, sampled: int = 0
) -> dict:
    """One cold start from ``base_dir`` with ``setting``; per-item greedy correctness at each evaluation (and
    sampled at the last with ``sampled`` > 0), CPU seconds per training step."""
    import torch

    from ops.posttrain import sft
    from ops.posttrain.common import examples_from_artifact, load_policy, task_accuracy
    from ops.posttrain.sft import SFTParams, train_sft
    from ops.train.optim import OptimConfig

    s = {**COLD_SFT, **SETTINGS[setting]}
    p = SFTParams(
        steps=s["steps"],
        lr=s["lr"],
        batch_size=s["batch_size"],
        warmup_steps=s["warmup_steps"],
        optim=OptimConfig(**s["optim"]),
        precision=s["precision"],
        seed=s["sft_seed"],
        eval_every=eval_every * s["steps"] // COLD_SFT["steps"],
        ckpt_every=0,
    )
    torch.manual_seed(p.seed)
    model, tok = load_policy(base_dir)
    examples = examples_from_artifact("tasks", problems_dir)
    evals: dict[int, dict] = {}
    eval_cpu = [0.0]

    def eval_fn(m, step: int) -> dict:
        c0 = time.process_time()
        with torch.autocast("cpu", enabled=False):  # scored in fp32 whatever the training precision, as the stage
            return _eval(m, step, c0)

    def _eval(m, step: int, c0: float) -> dict:
        r = task_accuracy(m, tok, ev, per_item=True)
        # the point on the default's step axis: the same share of the run's tokens
        e = evals[step * COLD_SFT["steps"] // s["steps"]] = {
            "step": step,
            "accuracy": r["accuracy"],
            "parse_rate": r["parse_rate"],
            "items": [int(x) for x in r["per_item"]],
        }
        if sampled and step == p.steps:
            r = task_accuracy(m, tok, ev, samples=sampled, temperature=1.0, seed=0, per_item=True)
            e["sampled"] = {"accuracy": r["accuracy"], "pass_at_k": r["pass_at_k"], "items": r["per_item"]}
        eval_cpu[0] += time.process_time() - c0
        return {"greedy": e["accuracy"]}

    t0, c0 = time.time(), time.process_time()
    groups, sft.LENGTH_GROUPS = sft.LENGTH_GROUPS, s["length_groups"]
    head_forward = model.lm_head.forward
    if s["head_fp32"]:  # the logits in fp32 under bf16 autocast (the head's weight is fp32 already)

        def head32(h):
            with torch.autocast("cpu", enabled=False):
                return torch.nn.functional.linear(h.float(), model.lm_head.weight, model.lm_head.bias)

        model.lm_head.forward = head32
    loss_fn = sft.sft_loss_fn
    if s["row_order"]:
        how = s["row_order"]
        sft.sft_loss_fn = lambda m, b: loss_fn(m, reorder_rows(b, how))
    try:
        _, _, info = train_sft(model, tok, examples, p, work_dir=None, eval_fn=eval_fn, log=lambda s: None)
    finally:
        sft.LENGTH_GROUPS = groups
        sft.sft_loss_fn = loss_fn
        model.lm_head.forward = head_forward
    train_cpu = time.process_time() - c0 - eval_cpu[0]
    return {
        "setting": setting,
        "params": {k: v for k, v in s.items()},
        "final_loss": info["losses"][-1],
        "losses": [round(x, 5) for x in info["losses"]],
        "grad_norms": [(r["step"], r.get("grad_norm")) for r in info["curve"]],
        "train_wall_s": round(info["wall_s"], 1),
        "wall_s": round(time.time() - t0, 1),
        "train_cpu_s": round(train_cpu, 1),
        "cpu_per_step": round(train_cpu / s["steps"], 4),
        "evals": {str(k): v for k, v in sorted(evals.items())},
    }


def score_stored(label: str, model_dir: Path, ev: list) -> dict:
    """A stored cold_sft artifact (its stage's own training run) scored like a study run, at its last step."""
    from ops.posttrain.common import load_policy, task_accuracy

    man = json.loads((model_dir / "manifest.json").read_text())
    model, tok = load_policy(model_dir)
    r = task_accuracy(model, tok, ev, per_item=True)
    steps = man["config"]["steps"]
    return {
        "setting": "stored",
        "seed": label,
        "base": {"from": man["inputs"]["model"][0]["version"], "stored_model": str(model_dir)},
        "params": {k: man["config"][k] for k in ("steps", "lr", "batch_size", "warmup_steps")},
        "final_loss": man["metrics"]["final_loss"],
        "wall_s": man["metrics"].get("train_wall_s"),
        "n_eval": len(ev),
        "evals": {
            str(steps): {
                "step": steps,
                "accuracy": r["accuracy"],
                "parse_rate": r["parse_rate"],
                "items": [int(x) for x in r["per_item"]],
            }
        },
    }


def run(args: argparse.Namespace) -> None:
    import torch

    from ops.tasks import read_tasks

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    given = dict(kv.split("=", 1) for kv in args.base_dir)
    ev = read_tasks(Path(args.tasks) / "eval.parquet")[: args.n_eval]
    for label, d in (kv.split("=", 1) for kv in args.stored):
        f = out / "runs" / f"s{label}_stored.json"
        if not f.is_file():
            f.write_text(json.dumps(score_stored(label, Path(d), ev)))
            print(f.read_text()[:300], flush=True)
    for seed in [x for x in args.seeds.split(",") if x]:
        if seed in given:
            base_dir = Path(given[seed])
            base_info = {"from": str(base_dir)}
        else:
            base_dir = out / "bases" / f"s{seed}"
            if (base_dir / "study_base.json").is_file():
                base_info = json.loads((base_dir / "study_base.json").read_text())
            else:
                base_info = pretrain_base(
                    int(seed), Path(args.tokens), Path(args.tokenizer), base_dir, args.threads, args.base_precision
                )
            print(json.dumps({"seed": seed, "base": base_info}), flush=True)
        for setting in args.settings.split(","):
            f = out / "runs" / f"s{seed}_{setting}.json"
            if f.is_file():
                continue
            r = sft_run(setting, base_dir, Path(args.problems), ev, args.eval_every, args.sampled)
            r.update(seed=seed, base=base_info, n_eval=len(ev), threads=args.threads)
            f.write_text(json.dumps(r))
            print(
                json.dumps(
                    {
                        "seed": seed,
                        "setting": setting,
                        "final_loss": round(r["final_loss"], 4),
                        "acc": {k: v["accuracy"] for k, v in r["evals"].items()},
                        "wall_s": r["wall_s"],
                    }
                ),
                flush=True,
            )


def _paired(ref: dict[str, dict], have: dict[str, dict], shared: list[str], key: str | None) -> dict:
    """``have`` against ``ref`` on the bases in ``shared`` (one step's evals; ``key`` "sampled" or None = greedy):
    items averaged over the bases, each base's items alone, and the per-base accuracy differences."""
    from ops.eval.metrics import mean_se, paired_difference

    def pick(e: dict) -> dict:
        return e[key] if key else e

    a = [statistics.mean(col) for col in zip(*(pick(ref[s])["items"] for s in shared))]
    b = [statistics.mean(col) for col in zip(*(pick(have[s])["items"] for s in shared))]
    per = {str(s): pick(have[s])["accuracy"] - pick(ref[s])["accuracy"] for s in shared}
    m, se = mean_se(list(per.values()))
    return {
        "items": paired_difference(a, b),
        "items_per_seed": {
            str(s): paired_difference(pick(ref[s])["items"], pick(have[s])["items"]) for s in shared
        },
        "seeds": {"per_seed": per, "mean": m, "se": se},
    }


def summary(out: Path, ref_name: str = "default") -> dict:
    """Every run in ``out/runs`` by setting and step: seeds, spread, paired differences against ``ref_name``."""
    from ops.eval.metrics import seed_spread

    runs = [json.loads(f.read_text()) for f in sorted((out / "runs").glob("s*_*.json"))]
    by: dict[str, dict[str, dict]] = {}
    for r in runs:
        r["seed"] = str(r["seed"])
        by.setdefault(r["setting"], {})[r["seed"]] = r
    res: dict = {
        "ref": ref_name,
        "settings": {},
        "bases": {},
        "default_from_stored": sorted(set(by.get("stored", {})) - set(by.get("default", {}))),
    }
    for r in runs:
        res["bases"][str(r["seed"])] = r["base"]
    # the reference on each base: the study's own run, else the stored cold_sft trained on that base
    ref = {**by.get("stored", {}), **by.get(ref_name, {})}
    if ref:
        by[ref_name] = ref
    for name, seeds in sorted(by.items()):
        steps = sorted({int(k) for r in seeds.values() for k in r["evals"]})
        rows = {}
        for st in steps:
            have = {s: r["evals"][str(st)] for s, r in seeds.items() if str(st) in r["evals"]}
            row: dict = {
                "per_seed": {str(s): e["accuracy"] for s, e in sorted(have.items())},
                "spread": seed_spread([e["accuracy"] for e in have.values()]),
            }
            shared = sorted(s for s in have if s in ref and str(st) in ref[s]["evals"])
            if name not in (ref_name, "stored") and shared:
                at = {s: ref[s]["evals"][str(st)] for s in shared}
                row["vs_ref"] = _paired(at, have, shared, None)
                both = [s for s in shared if "sampled" in have[s] and "sampled" in at[s]]
                if both:
                    row["vs_ref_sampled"] = _paired(at, have, both, "sampled")
            if all("sampled" in e for e in have.values()):
                row["sampled_per_seed"] = {str(s): e["sampled"]["accuracy"] for s, e in sorted(have.items())}
            rows[str(st)] = row
        res["settings"][name] = {
            "params": next(iter(seeds.values()))["params"],
            "final_loss": {str(s): r["final_loss"] for s, r in sorted(seeds.items())},
            "wall_s": {str(s): r["wall_s"] for s, r in sorted(seeds.items())},
            "cpu_per_step": {str(s): r.get("cpu_per_step") for s, r in sorted(seeds.items())},
            "steps": rows,
        }
    (out / "cold_start_seeds.json").write_text(json.dumps(res, indent=1))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("tokens", nargs="?")
    ap.add_argument("tokenizer", nargs="?")
    ap.add_argument("problems", nargs="?")
    ap.add_argument("tasks", nargs="?")
    ap.add_argument("--seeds", default="1,2", help="base seeds to pretrain, or labels of --base-dir bases")
    ap.add_argument("--settings", default="default,wsd")
    ap.add_argument(
        "--base-dir", action="append", default=[], help="LABEL=DIR: a stored base, run as seed LABEL"
    )
    ap.add_argument(
        "--stored", action="append", default=[], help="LABEL=DIR: score a stored cold_sft as setting 'stored'"
    )
    ap.add_argument("--n-eval", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=200, help="on the default's 800-step axis")
    ap.add_argument(
        "--sampled", type=int, default=0, help="also sample K answers per problem at T=1 at the end"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--base-precision", default="fp32", help="precision of the bases the script pretrains")
    ap.add_argument(
        "--summary", action="store_true", help="only gather OUT/runs into OUT/cold_start_seeds.json"
    )
    ap.add_argument(
        "--ref", default="default", help="with --summary: the setting the others are paired against"
    )
    a = ap.parse_args()
    if a.summary:
        r = summary(Path(a.out), a.ref)
        for name, s in r["settings"].items():
            for st, row in s["steps"].items():
                print(
                    name,
                    st,
                    row["per_seed"],
                    f"mean {row['spread']['mean']:.3f} sd {row['spread']['sd']:.3f}",
                )
                for key in ("vs_ref", "vs_ref_sampled"):
                    d = row.get(key, {})
                    for label, x in [("items", d.get("items"))] + list(d.get("items_per_seed", {}).items()):
                        if x:
                            print(f"  {key} {label}: {x['diff']:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}]")
            print(name, "cpu per step", s["cpu_per_step"])
        return
    if not all((a.tokens, a.tokenizer, a.problems, a.tasks)):
        ap.error("TOKENS_DIR TOKENIZER_DIR PROBLEMS_DIR TASKS_DIR are required unless --summary")
    run(a)


if __name__ == "__main__":
    main()
