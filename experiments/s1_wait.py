"""s1 test-time scaling at tiny scale: does accuracy rise with the thinking budget, and does forcing one "Wait"
raise accuracy over stopping at the model's own ``</think>``?

``python -m experiments.s1_wait OUT_DIR START_MODEL [--steps N --arms verify,plain ...]``; arms run as
separate processes are merged by ``python -m experiments.s1_wait --combine OUT.json RUN.json RUN.json``.

One start checkpoint (a pretrain or SFT artifact directory) is fine-tuned once per arm on the same problems
(``--train-difficulties``), each arm writing their worked solutions in its own style (:data:`ARMS`): ``recheck``
(a step, then " Wait," and a re-check by smaller sub-steps that confirms it or corrects a slipped result;
``ops.solutions.recheck_solution``), ``review`` (the chain, then in some traces " Wait,", the problem's operations
re-read in order and the chain written again from them, which confirms it or corrects a skipped or misread step;
``ops.solutions.review_solution``), ``fixonly`` (recheck with corrections only), ``verify`` (each step checked,
slipped steps corrected after " Wait,"; ``ops.solutions.verify_solution``) and ``plain`` (the control). Each arm is scored by the evaluate stage's own code (``generate_records`` /
``summarize``) on the same held-out problems: greedy until the model's own ``</think>``, budget forcing at each
budget, and one forced Wait whose text is ``ops.solutions.WAIT_TEXT``, the exact text (and so tokens) the traces
contain. Key design choice: every comparison is paired over items (``metrics.paired_difference``): budget b
against the next smaller budget, the Wait run against the model's own stop, verify against plain. The JSON is
rewritten after each phase, so a run cut short keeps what it measured. ``--mask-slips`` leaves the slipped
results out of the SFT loss (``ops.posttrain.masked_sft``: the model reads each slip and learns the Wait and the
correction that follow it, never the slip; for ``review``, ``ops.solutions.review_masked_spans``: the first
chain's wrong part and the Wait itself, so the own stop stays the plain chain); ``--compare OUT.json A.json B.json``
pairs two runs' arms over items.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ops.eval.metrics import paired_difference

# arm -> (solution_style, uses correction_rate, uses confirm_rate)
ARMS = {
    "recheck": ("recheck", True, True),
    "review": ("review", True, True),
    "fixonly": ("recheck", True, False),
    "verify": ("verify", True, False),
    "plain": ("plain", False, False),
    "longhand": ("longhand", True, True),  # experiments.s1_longhand: the chain again digit by digit
}


def _items(tasks):
    from ops.eval.evaluate import EvalItem

    return [EvalItem("heldout", t.id, t.question, t.answer) for t in tasks]


def loss_masks(style: str, response: str) -> list[tuple[int, int]]:
    """The character spans of a trace in ``style`` that masked SFT leaves out of the loss (``--mask-slips``)."""
    from ops.solutions import longhand_masked_spans, review_masked_spans, slipped_result_spans

    if style == "longhand":
        return longhand_masked_spans(response)
    return review_masked_spans(response) if style == "review" else slipped_result_spans(response)


def _correct(records, mode: str, key: str | None = None, value=None) -> dict[str, float]:
    return {
        r["item_id"]: float(r["correct"])
        for r in records
        if r["mode"] == mode and (key is None or r[key] == value)
    }


def _paired(a: dict[str, float], b: dict[str, float]) -> dict:
    keys = sorted(set(a) & set(b))
    return paired_difference([a[k] for k in keys], [b[k] for k in keys])


def score(model, tok, tasks, budgets: list[int], max_think: int, arm: str, log=print) -> dict:
    """The evaluate stage's sweeps on ``tasks`` for one model, plus the paired budget steps."""
    from ops.eval.evaluate import EvalSettings, generate_records, summarize
    from ops.solutions import WAIT_TEXT

    s = EvalSettings(
        samples=0,
        budgets=budgets,
        wait_extensions=[1],
        max_think_tokens=max_think,
        max_answer_tokens=10,
        wait_text=WAIT_TEXT,
        batch_size=64,
    )
    recs = generate_records(model, tok, _items(tasks), s, model_stage=arm, model_version="-", log=log)
    summ = summarize(recs, s)
    own = _correct(recs, "greedy")
    steps = []
    for lo, hi in zip(budgets, budgets[1:]):
        d = _paired(_correct(recs, "budget", "budget", lo), _correct(recs, "budget", "budget", hi))
        steps.append({"from": lo, "to": hi, **d})
    waits = [r for r in recs if r["mode"] == "wait"]
    examples = [
        {
            "item_id": r["item_id"],
            "gold": r["gold_answer"],
            "completion": r["completion"],
            "correct": r["correct"],
        }
        for r in waits[:6]
    ]
    return {
        "greedy_accuracy": summ["overall"]["greedy_accuracy"],
        "unbudgeted": summ.get("unbudgeted"),
        "budget_curve": summ["budget_curve"],
        "budget_steps": steps,
        "wait_curve": summ["wait_curve"],
        "wait_effect": summ["wait_effect"],
        "wait_examples": examples,
        "per_item": {"own": own, "wait1": _correct(recs, "wait")},
        # every own-stop and Wait completion, for reading what a Wait changed (written beside the result)
        "completions": {r["item_id"] + "/" + r["mode"]: r["completion"] for r in recs if r["mode"] in ("greedy", "wait")},
    }


def run(
    out_dir: str | Path,
    start: str | Path,
    *,
    steps: int = 150,
    batch_size: int = 32,
    lr: float = 1e-3,
    n_train: int = 6000,
    n_eval: int = 300,
    correction_rate: float = 0.3,
    confirm_rate: float = 0.0,
    budgets: tuple[int, ...] = (16, 32, 64, 128),
    max_think: int = 256,
    seed: int = 11,
    arms: tuple[str, ...] = ("verify", "plain"),
    threads: int = 1,
    train_difficulties: tuple[int, ...] = (3, 4),
    eval_difficulties: tuple[int, ...] | None = None,
    warmup_steps: int = 10,
    mask_slips: bool = False,
    max_len: int = 320,
) -> dict:
    import torch

    from experiments.s1_longhand import longhand_tasks
    from ops.eval.budget import check_sweep
    from ops.posttrain.common import Example, load_policy
    from ops.posttrain.masked_sft import train_sft_masked
    from ops.posttrain.sft import SFTParams, train_sft
    from ops.solutions import WAIT_TEXT
    from ops.tasks import make_splits

    torch.set_num_threads(threads)
    check_sweep("budgets", list(budgets), 0, "tokens")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"arms: unknown arm(s) {unknown}; choose from {list(ARMS)}")
    eval_difficulties = tuple(eval_difficulties or train_difficulties)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res: dict = {
        "start": str(start),
        "config": dict(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            n_train=n_train,
            n_eval=n_eval,
            correction_rate=correction_rate,
            confirm_rate=confirm_rate,
            budgets=list(budgets),
            max_think_tokens=max_think,
            seed=seed,
            difficulties=list(train_difficulties),
            eval_difficulties=list(eval_difficulties),
            warmup_steps=warmup_steps,
            wait_text=WAIT_TEXT,
            threads=threads,
            mask_slips=mask_slips,
            max_len=max_len,
        ),
        "arms": {},
    }

    def save():
        res["elapsed_s"] = round(time.time() - t0, 1)
        (out / "s1_wait.json").write_text(json.dumps(res, indent=1))

    _, tok = load_policy(start)
    res["wait_tokens"] = {
        "forced": tok.convert_ids_to_tokens(tok.encode(WAIT_TEXT, add_special_tokens=False)),
        "bare_Wait": tok.convert_ids_to_tokens(tok.encode("Wait", add_special_tokens=False)),
    }
    for arm in arms:
        style, fixes, confirms = ARMS[arm]
        kw = dict(
            solution_style=style,
            correction_rate=correction_rate if fixes else 0.0,
            confirm_rate=confirm_rate if confirms else 0.0,
        )
        if style == "longhand":  # written from the plain chains by the study's own style
            train, _ = make_splits(n_train, 0, seed, list(train_difficulties))
            train = longhand_tasks(train, seed, kw["correction_rate"], kw["confirm_rate"])
        else:
            train, _ = make_splits(n_train, 0, seed, list(train_difficulties), **kw)
        # held-out problems from the eval stream, never a training question; the same items in every arm
        _, ev = make_splits(0, n_eval, seed, list(eval_difficulties), exclude={t.question for t in train})
        model, tok = load_policy(start)
        model.train()
        ex = [Example(t.id, t.question, t.response, t.answer) for t in train]
        ts = time.time()
        p = SFTParams(
            steps=steps, lr=lr, batch_size=batch_size, warmup_steps=warmup_steps, max_len=max_len, ckpt_every=0
        )
        log = lambda m, arm=arm: print(arm, m, flush=True)  # noqa: E731
        if mask_slips:
            _, info = train_sft_masked(
                model, tok, ex, [loss_masks(style, e.response) for e in ex], p, log=log
            )
        else:
            _, _, info = train_sft(model, tok, ex, p, work_dir=None, log=log)
        waits = [t.response for t in train if WAIT_TEXT + "," in t.response][:3]
        arm_res = {
            "sft_s": round(time.time() - ts, 1),
            "trace_example": train[0].response,
            "wait_traces": waits,
            "sft_loss_last10": sum(info["losses"][-10:]) / len(info["losses"][-10:]),
            "masked_tokens": info.get("masked_tokens", 0),
            "assistant_tokens": info["assistant_tokens"],
        }
        res["arms"][arm] = arm_res
        save()
        model.save_pretrained(out / f"model_{arm}")
        tok.save_pretrained(out / f"model_{arm}")
        arm_res.update(score(model, tok, ev, list(budgets), max_think, arm, log=print))
        (out / f"completions_{arm}.json").write_text(json.dumps(arm_res.pop("completions"), indent=0))
        arm_res["eval_s"] = round(time.time() - ts - arm_res["sft_s"], 1)
        save()
        print(
            f"{arm}: own {arm_res['unbudgeted']['accuracy']:.3f}, wait {arm_res['wait_effect']}", flush=True
        )
    res.update(_minus_plain(res["arms"]))
    save()
    return res


def _minus_plain(arms: dict) -> dict:
    """Each arm's accuracy minus the plain-trained one on the same items, at the own stop and with one Wait."""
    if "per_item" not in arms.get("plain", {}):
        return {}
    p = arms["plain"]["per_item"]
    out = {}
    for arm, r in arms.items():
        if arm != "plain" and "per_item" in r:
            v = r["per_item"]
            out[f"{arm}_minus_plain"] = {
                "own_stop": _paired(p["own"], v["own"]),
                "wait1": _paired(p["wait1"], v["wait1"]),
            }
    return out


def combine(paths: list[str | Path], out: str | Path) -> dict:
    """Merge runs of single arms (same start, config and held-out items) into one result with the paired
    verify - plain comparison; refuses runs whose start or configuration differ (other than their arms)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    first = runs[0]

    def setup(r: dict) -> dict:  # the torch thread count is how fast a run went, not what it computed
        return {k: v for k, v in r["config"].items() if k != "threads"}

    for r in runs[1:]:
        if r["start"] != first["start"] or setup(r) != setup(first):
            raise ValueError(f"combine: runs differ in start or config: {first['config']} vs {r['config']}")
    res = {k: v for k, v in first.items() if k != "arms"}
    res["arms"] = {
        a: {**v, "threads": r["config"].get("threads")} for r in runs for a, v in r["arms"].items()
    }
    res["elapsed_s"] = max(r.get("elapsed_s", 0.0) for r in runs)
    res.update(_minus_plain(res["arms"]))
    Path(out).write_text(json.dumps(res, indent=1))
    return res


def compare(a_path: str | Path, b_path: str | Path, out: str | Path | None = None) -> dict:
    """Each arm of run B minus the same arm of run A, paired over the held-out items both scored: at the own
    stop and with one Wait, beside each run's Wait effect. Runs from another start (its artifact kind and
    version, wherever its home) or other held-out items are refused."""
    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    keys = ("seed", "n_eval", "eval_difficulties", "max_think_tokens", "wait_text")
    same_start = Path(a["start"]).parts[-2:] == Path(b["start"]).parts[-2:]
    if not same_start or any(a["config"].get(k) != b["config"].get(k) for k in keys):
        raise ValueError(f"compare: the runs differ in start or held-out items ({', '.join(keys)})")
    res: dict = {"a": str(a_path), "b": str(b_path), "b_minus_a": {}}
    for arm in sorted(set(a["arms"]) & set(b["arms"])):
        pa, pb = a["arms"][arm]["per_item"], b["arms"][arm]["per_item"]
        if set(pa["own"]) != set(pb["own"]):
            raise ValueError(f"compare: arm {arm!r} was scored on other items in the two runs")
        res["b_minus_a"][arm] = {
            "own_stop": _paired(pa["own"], pb["own"]),
            "wait1": _paired(pa["wait1"], pb["wait1"]),
            "wait_effect_a": a["arms"][arm]["wait_effect"],
            "wait_effect_b": b["arms"][arm]["wait_effect"],
        }
    if out:
        Path(out).write_text(json.dumps(res, indent=1))
    return res


def main(argv: list[str] | None = None) -> None:
    if argv is None:
        import sys

        argv = sys.argv[1:]
    if argv[:1] == ["--combine"]:
        # --combine OUT.json RUN.json RUN.json ...: one result from arms run as separate processes
        combine(argv[2:], argv[1])
        return
    if argv[:1] == ["--compare"]:
        # --compare OUT.json A.json B.json: B's arms minus A's, paired over the same held-out items
        compare(argv[2], argv[3], argv[1])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("start", help="a pretrain or sft artifact directory (model + tokenizer)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--n-eval", type=int, default=300)
    ap.add_argument("--correction-rate", type=float, default=0.3)
    ap.add_argument("--confirm-rate", type=float, default=0.0)
    ap.add_argument("--n-train", type=int, default=6000)
    ap.add_argument("--train-difficulties", default="3,4")
    ap.add_argument("--eval-difficulties", default=None, help="default: the training difficulties")
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--budgets", default="16,32,64,128")
    ap.add_argument("--max-think", type=int, default=256)
    ap.add_argument("--arms", default="verify,plain")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mask-slips", action="store_true", help="no SFT loss on the slipped results")
    ap.add_argument("--seed", type=int, default=11, help="draws the training problems and the held-out items")
    ap.add_argument("--max-len", type=int, default=320, help="SFT rows longer than this many tokens are left out")
    a = ap.parse_args(argv)
    ints = lambda v: tuple(int(x) for x in v.split(","))  # noqa: E731
    run(
        a.out_dir,
        a.start,
        steps=a.steps,
        batch_size=a.batch_size,
        lr=a.lr,
        n_train=a.n_train,
        n_eval=a.n_eval,
        correction_rate=a.correction_rate,
        confirm_rate=a.confirm_rate,
        budgets=ints(a.budgets),
        max_think=a.max_think,
        arms=tuple(a.arms.split(",")),
        threads=a.threads,
        train_difficulties=ints(a.train_difficulties),
        eval_difficulties=ints(a.eval_difficulties) if a.eval_difficulties else None,
        warmup_steps=a.warmup_steps,
        mask_slips=a.mask_slips,
        max_len=a.max_len,
        seed=a.seed,
    )


if __name__ == "__main__":
    main()
