"""Does GRPO generalise? A paired experiment: one SFT checkpoint, several RL seeds, held-out greedy and
sampled accuracy before/after, plus the fixed-16-prompt check that the update itself is right.

``run(out_dir, scale="gpu"|"cpu") -> dict``. Key design choice: every comparison is paired on the same SFT
checkpoint and reported as mean gain +- standard error over seeds (seed spread dominates single runs at this
scale; see /work/shared/reference/measured-facts.md). Results are written to ``out_dir/grpo_regime.json`` after
every phase, so a run cut short still leaves its measurements.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ops.eval.metrics import paired_gains

SCALES = {
    # model, data and step counts per scale; "cpu" is the reduced setting of the test suite's machine
    "gpu": dict(
        arch={"arch": "qwen2", "d_model": 128, "layers": 4, "heads": 4, "kv_heads": 2, "max_seq_len": 256},
        n_train=20000,
        n_eval=1000,
        sft_steps=1000,
        sft_bs=64,
        ckpts=(400, 600, 1000),
        seeds=3,
        rl_steps=80,
        prompts=128,
        group=8,
        lr=2e-5,
        beta=0.04,
        eval_n=1000,
        samp_n=500,
        samp_k=4,
        difficulties=(2,),
    ),
    # the tiny default's policy size and data on 2 CPU cores: ~20 min idle (measured-facts' 0.81M model)
    "cpu_mid": dict(
        arch={"arch": "qwen2", "d_model": 128, "layers": 4, "heads": 4, "kv_heads": 2, "max_seq_len": 256},
        n_train=4000,
        n_eval=300,
        sft_steps=1000,
        sft_bs=64,
        ckpts=(600, 1000),
        seeds=3,
        rl_steps=40,
        prompts=64,
        group=8,
        lr=2e-5,
        beta=0.04,
        eval_n=300,
        samp_n=150,
        samp_k=4,
        difficulties=(2,),
    ),
    "cpu": dict(
        arch={"arch": "qwen2", "d_model": 96, "layers": 3, "heads": 4, "kv_heads": 2, "max_seq_len": 256},
        n_train=4000,
        n_eval=200,
        sft_steps=300,
        sft_bs=32,
        ckpts=(300,),
        seeds=3,
        rl_steps=15,
        prompts=32,
        group=8,
        lr=3e-5,
        beta=0.04,
        eval_n=200,
        samp_n=100,
        samp_k=4,
        difficulties=(1,),
    ),
}


def sampled_scores(model, tok, tasks, k: int, seed: int) -> dict:
    """Sampled accuracy (T=1, ``k`` samples per problem) with pass@k and per-item scores, one sampling draw."""
    from ops.posttrain.common import task_accuracy

    return task_accuracy(
        model,
        tok,
        tasks,
        samples=k,
        temperature=1.0,
        max_new_tokens=64,
        seed=seed,
        batch_size=1024,
        per_item=True,
    )


def heldout_scores(model, tok, greedy_tasks, sampled_tasks, k: int, seed: int = 0) -> dict:
    """Greedy accuracy and parse rate on ``greedy_tasks``; sampled accuracy (T=1, ``k`` samples per problem,
    R1's pass@1) and pass@k on ``sampled_tasks``."""
    from ops.posttrain.common import task_accuracy

    g = task_accuracy(
        model, tok, greedy_tasks, temperature=0.0, max_new_tokens=64, batch_size=1024, per_item=True
    )
    s = sampled_scores(model, tok, sampled_tasks, k, seed)
    return {
        "greedy": g["accuracy"],
        "parse": g["parse_rate"],
        "sampled": s["accuracy"],
        f"pass@{k}": s["pass_at_k"],
        "greedy_items": g["per_item"],
        "sampled_items": s["per_item"],
    }


def run(out_dir: str | Path, scale: str = "gpu", budget_s: float = 480.0) -> dict:
    import copy

    import torch

    from ops.model import build_model
    from ops.posttrain.common import Example
    from ops.posttrain.sft import SFTParams, train_sft
    from ops.rewards import parse_specs
    from ops.rl.grpo import GRPOParams, train_grpo
    from ops.tasks import make_splits
    from ops.tokenizer import chat_prompt, chat_response, to_transformers, train_bpe

    t_start = time.time()
    S = SCALES[scale]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    res: dict = {
        "scale": scale,
        "device": dev,
        "config": {k: v for k, v in S.items() if k != "arch"},
        "arch": S["arch"],
    }

    def save():
        res["elapsed_s"] = round(time.time() - t_start, 1)
        (out / "grpo_regime.json").write_text(json.dumps(res, indent=1))

    train, ev = make_splits(S["n_train"], S["n_eval"], seed=0, difficulties=S["difficulties"])
    tok = to_transformers(
        train_bpe(
            [chat_prompt(t.question) + chat_response(t.solution, t.answer) for t in train[:3000]],
            vocab_size=512,
        )
    )
    model = build_model(
        S["arch"], len(tok), seed=0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
    ).to(dev)
    res["params"] = sum(p.numel() for p in model.parameters())
    ex = [Example(t.id, t.question, t.response, t.answer) for t in train]
    evn, sn, k = ev[: S["eval_n"]], ev[: S["samp_n"]], S["samp_k"]

    def acc(m, seed=0):
        return heldout_scores(m, tok, evn, sn, k, seed)

    ckpts = {}

    def eval_fn(m, step):
        if step in S["ckpts"]:
            ckpts[step] = copy.deepcopy(m).eval()
            r = acc(m)
            res.setdefault("sft", {})[step] = r
            save()
            return {"greedy": r["greedy"]}
        return {}

    t0 = time.time()
    p = SFTParams(steps=S["sft_steps"], lr=2e-3, batch_size=S["sft_bs"], warmup_steps=50, eval_every=1)
    # eval_every=1 calls eval_fn each step; it only evaluates at the checkpoint steps
    train_sft(model, tok, ex, p, work_dir=None, log=lambda s: None, eval_fn=eval_fn)
    res["sft_wall_s"] = round(time.time() - t0, 1)
    save()
    # the SFT stop point: the checkpoint with the largest pass@k - greedy gap among those that parse
    best = max(ckpts, key=lambda s: res["sft"][s][f"pass@{k}"] - res["sft"][s]["greedy"])
    res["rl_start_ckpt"] = best
    start = res["sft"][best]
    specs = parse_specs(["accuracy", "format"])

    # 1) the update is right: 16 fixed prompts, sampled accuracy should at least double within 30 steps
    pol = copy.deepcopy(ckpts[best]).train().requires_grad_(True)
    ref = copy.deepcopy(ckpts[best])
    st = train_grpo(
        pol,
        ref,
        tok,
        train,
        specs,
        GRPOParams(
            steps=30 if scale != "dry" else 2,
            prompts_per_step=16,
            group_size=S["group"],
            lr=1e-4 if scale == "gpu" else 1e-4,
            warmup_steps=3,
            beta=S["beta"],
            fixed_prompts=16,
            seed=1,
        ),
        log=lambda s: None,
        keep_rollouts=False,
    )
    accs = [h["reward_accuracy"] for h in st.history]
    res["fixed16"] = {
        "first5": sum(accs[:5]) / 5,
        "last5": sum(accs[-5:]) / 5,
        "curve": [round(a, 3) for a in accs],
    }
    save()

    # 2) generalisation: paired over seeds from the same checkpoint
    runs = []
    for seed in range(S["seeds"]):
        if time.time() - t_start > budget_s:
            res["stopped_early"] = f"budget {budget_s}s reached before seed {seed}"
            break
        pol = copy.deepcopy(ckpts[best]).train().requires_grad_(True)
        t1 = time.time()
        st = train_grpo(
            pol,
            ref,
            tok,
            train,
            specs,
            GRPOParams(
                steps=S["rl_steps"],
                prompts_per_step=S["prompts"],
                group_size=S["group"],
                lr=S["lr"],
                warmup_steps=10,
                beta=S["beta"],
                seed=100 + seed,
                gen_batch_size=1024,
            ),
            log=lambda s: None,
            keep_rollouts=False,
        )
        after = acc(pol, seed=1)
        h = st.history
        q = max(len(h) // 4, 1)
        runs.append(
            {
                "seed": seed,
                "after": after,
                "wall_s": round(time.time() - t1, 1),
                "train_acc_first_q": sum(x["reward_accuracy"] for x in h[:q]) / q,
                "train_acc_last_q": sum(x["reward_accuracy"] for x in h[-q:]) / q,
                "kl_max": max(x.get("kl", 0) for x in h),
                "step_s": sum(x["step_s"] for x in h) / len(h),
                "gen_share": sum(x["gen_s"] for x in h) / sum(x["step_s"] for x in h),
            }
        )
        res["rl_runs"] = runs
        res.update(paired_gains(runs, start))
        save()
    return res


if __name__ == "__main__":
    import sys

    print(
        json.dumps(
            run(
                sys.argv[1] if len(sys.argv) > 1 else "bench_out",
                *(sys.argv[2:3] or ["gpu"]),
                *([float(sys.argv[3])] if len(sys.argv) > 3 else []),
            ),
            indent=1,
        )
    )
