"""GRPO step time and rollout tokens/s: lmforge's loop vs TRL's ``GRPOTrainer`` on the same tiny model,
prompts, group size and completion length, in the same process.

``run(out_dir) -> dict``. Key design choice: both sides get an identical randomly initialised Qwen2 and the
same tokenizer (trained here from generated task text; nothing is downloaded), the same prompts, group size,
``max_completion_length`` and one update per batch; TRL is a bench-only extra (``pip install lmforge[bench]``)
and any failure to import or run it is reported in the result instead of a number. Both sides run on
``THREADS`` torch threads; rounds alternate ours, TRL, TRL, ours (the machine is shared and noisy) and each
side's best round counts.

The levers of lmforge's sampler are timed one by one on the first step's rollout batch (``gen_levers``): the
plain KV-cached loop, each prompt prefilled once per group (``share_prefix``), finished rows dropped from the
decode batch (``drop_finished``), both (the default), and the plain loop on transformers' ``StaticCache``;
each variant's best of ``LEVER_ROUNDS`` alternating rounds, and whether it drew the same tokens as the plain
loop. ``old_logprob_forward_s`` is what a separate no-grad forward for the old log-probs would cost on that
batch: the fully on-policy update never runs it (its old log-probs are the training forward's, detached).
``update_fwd_bwd_s``: the update's log-prob forward and backward on that batch with every row in full and with
each prompt run once per group (``ops.rl.common.completion_logprobs``'s shared prefix, the default).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

PROMPTS, GROUP, MAX_NEW, STEPS = 8, 8, 48, 4
THREADS, ROUNDS, LEVER_ROUNDS = 1, 4, 10
SFT_STEPS = 150  # a short SFT first: from a random init every reward is 0, every group is skipped and a step
# is generation only (lmforge skips the update while TRL still back-propagates), which is not a comparison


def _setup(tmp: Path):
    from ops.model import build_model, save_model
    from ops.posttrain.common import Example
    from ops.posttrain.sft import SFTParams, train_sft
    from ops.tasks import make_splits
    from ops.tokenizer import chat_prompt, chat_response, save_tokenizer, train_bpe

    train, _ = make_splits(2000, 10, seed=0, difficulties=(1,))
    tok = save_tokenizer(
        train_bpe(
            [chat_prompt(t.question) + chat_response(t.solution, t.answer) for t in train], vocab_size=400
        ),
        tmp / "tok",
    )
    arch = {"arch": "qwen2", "d_model": 96, "layers": 3, "heads": 4, "kv_heads": 2, "max_seq_len": 256}
    model = build_model(arch, len(tok), seed=0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    train_sft(
        model,
        tok,
        [Example(t.id, t.question, t.response, t.answer) for t in train],
        SFTParams(steps=SFT_STEPS, lr=2e-3, batch_size=32, warmup_steps=10),
        work_dir=None,
        log=lambda s: None,
    )
    save_model(model.eval(), tok, tmp / "model")
    return train, tmp / "model"


def _ours(train, model_dir) -> dict:
    from ops.posttrain.common import load_policy
    from ops.rewards import parse_specs
    from ops.rl.grpo import GRPOParams, train_grpo

    policy, tok = load_policy(model_dir)
    ref, _ = load_policy(model_dir)
    st = train_grpo(
        policy,
        ref,
        tok,
        train,
        parse_specs(["accuracy", "format"]),
        GRPOParams(
            steps=STEPS,
            prompts_per_step=PROMPTS,
            group_size=GROUP,
            max_new_tokens=MAX_NEW,
            lr=1e-5,
            warmup_steps=0,
        ),
        log=lambda s: None,
        keep_rollouts=False,
    )
    h = st.history[1:]  # the first step includes one-off warm-up
    step = sum(x["step_s"] for x in h) / len(h)
    gen = sum(x["gen_s"] for x in h) / len(h)
    toks = sum(x["completion_tokens"] * PROMPTS * GROUP for x in h)
    return {
        "step_s": step,
        "gen_share": gen / step,
        "rollout_tokens_per_s": toks / sum(x["gen_s"] for x in h),
        "mean_completion_tokens": sum(x["completion_tokens"] for x in h) / len(h),
        "mean_reward": sum(x["reward"] for x in h) / len(h),
        # share of samples in groups with reward spread: the ones that get a gradient
        "live_share": sum(x["live_groups"] for x in h) / len(h),
    }


def _trl(train, model_dir, tmp: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from ops.cpu_gemm import fast_linear
    from ops.tasks import format_ok, is_correct
    from ops.tokenizer import IM_END

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    # the same fp32 GEMM kernels as lmforge's side, so the ratio measures the two trainers, not the BLAS
    model = fast_linear(AutoModelForCausalLM.from_pretrained(str(model_dir)))
    ds = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": t.question}], "answer": t.answer}
            for t in train[: PROMPTS * STEPS]
        ]
    )

    # TRL decodes completions with skip_special_tokens=True, which drops <think>/<answer> (special tokens here):
    # every reward would be 0. The reward functions decode the completion ids themselves, as lmforge does.
    def texts(completion_ids):
        return [tok.decode(ids, skip_special_tokens=False).split(IM_END)[0] for ids in completion_ids]

    def accuracy(completions, answer, completion_ids, **kw):
        return [float(is_correct(t, a)) for t, a in zip(texts(completion_ids), answer)]

    def fmt(completions, completion_ids, **kw):
        return [float(format_ok(t)) for t in texts(completion_ids)]

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    cfg = GRPOConfig(
        output_dir=str(tmp / "trl"),
        per_device_train_batch_size=PROMPTS * GROUP,
        num_generations=GROUP,
        max_completion_length=MAX_NEW,
        max_steps=STEPS,
        learning_rate=1e-5,
        beta=0.04,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        bf16=False,
        temperature=1.0,
    )
    tr = GRPOTrainer(
        model=model,
        reward_funcs=[accuracy, fmt],
        args=cfg,
        train_dataset=ds,
        processing_class=tok,
        callbacks=[Timer()],
    )
    tr.train()
    logs = [x for x in tr.state.log_history if "completions/mean_length" in x]
    step = sum(times[1:]) / max(len(times) - 1, 1)
    mean_len = sum(x["completions/mean_length"] for x in logs[1:]) / max(len(logs) - 1, 1)
    zero = [x["frac_reward_zero_std"] for x in logs[1:] if "frac_reward_zero_std" in x]
    return {
        "step_s": step,
        "mean_completion_tokens": mean_len,
        "tokens_per_s_of_step": mean_len * PROMPTS * GROUP / step,
        # None (not 0) when TRL did not log it: a missing figure must not read as a zero reward
        "mean_reward": sum(rw) / len(rw)
        if (rw := [x["reward"] for x in logs[1:] if "reward" in x])
        else None,
        "live_share": 1 - sum(zero) / len(zero) if zero else None,
    }


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _gen_levers(train, model_dir) -> dict:
    import torch

    from ops.generate import chat_prompts, pad_token_id, sample, stop_token_ids
    from ops.posttrain.common import load_policy
    from ops.rl.common import completion_logprobs, completion_tensors, pick_prompts

    policy, tok = load_policy(model_dir)
    idx = pick_prompts(len(train), PROMPTS, 0, 0)
    prompts = chat_prompts(tok, [train[i].question for i in idx])
    rows = [p for p in prompts for _ in range(GROUP)]
    kw = dict(max_new_tokens=MAX_NEW, stop_ids=stop_token_ids(tok), pad_id=pad_token_id(tok), seed=0)
    variants = {
        "plain": lambda: sample(policy, rows, share_prefix=False, drop_finished=False, **kw),
        "share_prefix": lambda: sample(policy, rows, share_prefix=True, drop_finished=False, **kw),
        "drop_finished": lambda: sample(policy, rows, share_prefix=False, drop_finished=True, **kw),
        "both": lambda: sample(policy, rows, **kw),
        "plain_static_cache": lambda: _static_cache_loop(policy, rows, kw),
    }
    base = [s.ids for s in variants["plain"]()]  # also the warm-up
    best = dict.fromkeys(variants, float("inf"))
    same = {}
    for _ in range(LEVER_ROUNDS):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            out = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
            same[name] = [s if isinstance(s, list) else s.ids for s in out] == base
    samples = variants["both"]()
    t = completion_tensors(samples, pad_token_id(tok), "cpu")
    fwd = float("inf")
    for _ in range(LEVER_ROUNDS):
        t0 = time.perf_counter()
        with torch.no_grad():
            completion_logprobs(policy, t)
        fwd = min(fwd, time.perf_counter() - t0)
    # the update's forward + backward on the whole rollout batch, full rows vs each prompt once per group
    policy.train()
    upd = {"full": float("inf"), "share_prefix": float("inf")}
    for _ in range(LEVER_ROUNDS):
        for name in upd:
            t0 = time.perf_counter()
            completion_logprobs(policy, t, share_prefix=name == "share_prefix").sum().backward()
            upd[name] = min(upd[name], time.perf_counter() - t0)
            policy.zero_grad()
    return {
        "gen_s": {k: round(v, 4) for k, v in best.items()},
        "speedup_vs_plain": {k: round(best["plain"] / v, 2) for k, v in best.items()},
        "same_tokens_as_plain": same,
        "old_logprob_forward_s": round(fwd, 4),
        "update_fwd_bwd_s": {k: round(v, 4) for k, v in upd.items()},
        "update_fwd_bwd_speedup": round(upd["full"] / upd["share_prefix"], 2),
    }


def _static_cache_loop(model, rows, kw) -> list[list[int]]:
    """The plain decode loop (every row prefilled, finished rows kept) on transformers' ``StaticCache``: the
    static-cache lever, measured. Its layers cannot gather rows, so it does not combine with the other two."""
    import torch
    from transformers import StaticCache

    from ops.generate import _cache_kwarg, _left_pad, sample_next

    gen = torch.Generator().manual_seed(kw["seed"])
    stop, pad, max_new = torch.tensor(kw["stop_ids"]), kw["pad_id"], kw["max_new_tokens"]
    model.eval()
    with torch.inference_mode():
        ids, mask = _left_pad(rows, pad, "cpu")
        B, P = ids.shape
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        ck = _cache_kwarg(model)
        cache = StaticCache(config=model.config, max_cache_len=P + max_new)
        res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                    **{ck: cache})
        logits, last, done, toks = res.logits[:, -1], pos[:, -1], torch.zeros(B, dtype=torch.bool), []
        for step in range(max_new):
            nxt, _ = sample_next(logits, 1.0, 1.0, gen)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            toks.append(nxt)
            done = done | torch.isin(nxt, stop)
            if step == max_new - 1 or bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype)], 1)
            last = last + 1
            res = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None], use_cache=True,
                        cache_position=torch.tensor([P + step]), **{ck: cache})
            logits = res.logits[:, -1]
    out = []
    for row in torch.stack(toks, 1).tolist():
        n = next((j + 1 for j, x in enumerate(row) if x in kw["stop_ids"]), len(row))
        out.append(row[:n])
    return out


def run(out_dir: str | Path) -> dict:
    import tempfile

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-grpo-"))
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        torch.manual_seed(0)
        train, model_dir = _setup(tmp)
        res: dict = {
            "prompts": PROMPTS,
            "group_size": GROUP,
            "max_new_tokens": MAX_NEW,
            "steps": STEPS,
            "threads": THREADS,
            "rounds": ROUNDS,
            "load_avg_start": os.getloadavg()[0],
        }
        res["gen_levers"] = _gen_levers(train, model_dir)
        ours: list[dict] = []
        theirs: list[dict] = []
        try:
            import trl

            res["trl_version"] = trl.__version__
        except Exception as e:  # noqa: BLE001 - the honest answer when TRL cannot run here
            res["trl_error"] = f"{type(e).__name__}: {e}"
        # ours, TRL, TRL, ours, ...: a slow spell of the shared machine hits both sides alike
        for r in range(ROUNDS):
            for side in ("ours", "trl") if r % 2 == 0 else ("trl", "ours"):
                if side == "ours":
                    ours.append(_ours(train, model_dir))
                elif "trl_error" not in res:
                    try:
                        theirs.append(_trl(train, model_dir, tmp / f"r{r}"))
                    except Exception as e:  # noqa: BLE001 - the honest answer when TRL cannot run here
                        res["trl_error"] = f"{type(e).__name__}: {e}"
                        res["trl_traceback"] = traceback.format_exc()[-2000:]
        res["lmforge"] = min(ours, key=lambda x: x["step_s"])
        res["lmforge_rounds_step_s"] = [round(x["step_s"], 4) for x in ours]
        if theirs:
            res["trl"] = min(theirs, key=lambda x: x["step_s"])
            res["trl_rounds_step_s"] = [round(x["step_s"], 4) for x in theirs]
            res["speedup_step"] = res["trl"]["step_s"] / res["lmforge"]["step_s"]
        res["load_avg_end"] = os.getloadavg()[0]
    finally:
        torch.set_num_threads(threads)
    (out / "bench_grpo.json").write_text(json.dumps(res, indent=1))
    lv = res["gen_levers"]
    lines = [
        "| system | step s | notes |",
        "|---|---|---|",
        f"| lmforge | {res['lmforge']['step_s']:.3f} | gen share {res['lmforge']['gen_share']:.2f}, "
        f"rollout {res['lmforge']['rollout_tokens_per_s']:.0f} tok/s, "
        f"{res['lmforge']['mean_completion_tokens']:.1f} tokens/completion, reward {res['lmforge']['mean_reward']:.2f}, "
        f"live {res['lmforge']['live_share']:.2f} |",
    ]
    if "trl" in res:
        lines.append(
            f"| TRL {res['trl_version']} | {res['trl']['step_s']:.3f} | speedup {res['speedup_step']:.2f}x, "
            f"{res['trl']['mean_completion_tokens']:.1f} tokens/completion, reward {_num(res['trl']['mean_reward'])} |"
        )
    else:
        lines.append(f"| TRL | - | {res.get('trl_error', '')[:120]} |")
    lines += ["", "| sampler lever | gen s | vs plain | same tokens |", "|---|---|---|---|"]
    lines += [
        f"| {k} | {v:.4f} | {lv['speedup_vs_plain'][k]:.2f}x | {lv['same_tokens_as_plain'][k]} |"
        for k, v in lv["gen_s"].items()
    ]
    lines.append(f"| separate old-log-prob forward (not run on-policy) | {lv['old_logprob_forward_s']:.4f} | | |")
    u = lv["update_fwd_bwd_s"]
    lines += [
        "",
        "| update forward + backward | s | vs full |",
        "|---|---|---|",
        f"| full rows | {u['full']:.4f} | 1.00x |",
        f"| each prompt once per group | {u['share_prefix']:.4f} | {lv['update_fwd_bwd_speedup']:.2f}x |",
    ]
    (out / "bench_grpo.md").write_text("\n".join(lines) + "\n")
    return res


if __name__ == "__main__":
    print(json.dumps(run("bench_out"), indent=1)[:3000])
