"""Golden loss files: tiny seeded CPU runs of pretraining, SFT and GRPO compared step by step with the
numbers stored in ``tests/assets/losses/`` (the torchtitan practice), so a numerical change anywhere in the
path from a stage config to the optimizer step shows up as a failing test with a per-step diff.

Each run starts from a stage config of its kind (the kind's defaults, with a few fields set small so the
run takes seconds on one CPU thread), so a changed default of the optimiser or schedule fails here too. The
corpus, the tokenizer and the models are built here from fixed seeds; nothing is downloaded, and nothing
depends on the task generator or the other test helpers.

Regenerate after an intended numerical change (and say why in the commit message)::

    LMFORGE_UPDATE_GOLDEN=1 python -m pytest tests/assets/test_golden_losses.py
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

LOSSES = Path(__file__).parent / "losses"
UPDATE = os.environ.get("LMFORGE_UPDATE_GOLDEN") == "1"
# One-thread CPU runs are deterministic on one machine; the tolerance absorbs another CPU's or float library's
# rounding, relative to the largest value of the series (a GRPO loss near 0 is a cancellation, its own
# relative error is large)
REL_TOL = 1e-6
ABS_TOL = 1e-9
# GRPO's KL is a mean of exp(d) - d - 1 over log-prob differences d ~ 0.2 against log-probs ~ 6: their
# rounding grows about 2|logp|/|d| ~ 60 times in it (two Xeons differ by 1.1e-6 of a value)
SERIES_REL_TOL = {"kl": 1e-5}
ARCH = {"arch": "qwen2", "d_model": 64, "layers": 2, "heads": 4, "kv_heads": 2, "max_seq_len": 128}


# ---------------------------------------------------------------- fixed inputs
def _problems(n: int, seed: int) -> list[tuple[str, str, str, str]]:
    """``(id, question, reasoning, answer)`` of seeded two-operand sums."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        out.append((f"g{seed}-{i}", f"What is {a}+{b}?", f"{a}+{b}={a + b}", str(a + b)))
    return out


@pytest.fixture(scope="module")
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    from ops.tokenizer import chat_prompt, chat_response, save_tokenizer, train_bpe

    texts = [chat_prompt(q) + chat_response(r, a) for _, q, r, a in _problems(400, seed=1)]
    out = tmp_path_factory.mktemp("golden") / "tokenizer"
    save_tokenizer(train_bpe(texts, vocab_size=320), out)
    return out


def _model(tok: Any, seed: int = 0) -> Any:
    from ops.model import build_model

    return build_model(ARCH, len(tok), seed=seed, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)


# ---------------------------------------------------------------- the runs
def pretrain_run(tok_dir: Path, tmp: Path) -> dict[str, Any]:
    from assets.pretrain import PretrainConfig, train_job
    from ops.tokens import tokenize_documents
    from ops.train.lm import run_pretraining

    docs = _problems(300, seed=2)
    tokenize_documents(
        [d[0] for d in docs], [f"{q} {r}. The answer is {a}." for _, q, r, a in docs],
        tok_dir / "tokenizer.json", tmp / "tokens", val_frac=0.1,
    )
    c = PretrainConfig(data="tokens", tokenizer="tok", warmup_steps=2, seq_len=32, batch_size=4)
    job = {
        "tokens_dir": str(tmp / "tokens"), "tokenizer_dir": str(tok_dir), "out_dir": str(tmp / "out"),
        "work_dir": str(tmp / "work"), "arch": ARCH, "seq_len": c.seq_len, "batch_size": c.batch_size,
        "eval_tokens": 256, "eval_batch_size": 4, "prompts": ["What is "], "sample_tokens": 2, "seed": c.seed,
        "device": "cpu", "fingerprint": {}, "train": train_job(c, steps=8),
    }
    res = run_pretraining(job, log=lambda s: None, progress=False)
    return {"loss": res["losses"], "val_loss": [res["final_eval"]["val_loss"]]}


def sft_run(tok_dir: Path) -> dict[str, Any]:
    import torch

    from assets.posttrain import params
    from assets.sft import SFTConfig
    from ops.posttrain.common import Example
    from ops.posttrain.sft import SFTParams, train_sft
    from ops.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_dir)
    c = SFTConfig(model="m", data=["d"], steps=6, batch_size=8, warmup_steps=2, max_len=64)
    torch.manual_seed(c.seed)
    ex = [Example(i, q, f"<think>{r}</think><answer>{a}</answer>", a) for i, q, r, a in _problems(64, seed=3)]
    _, _, info = train_sft(_model(tok), tok, ex, params(SFTParams, c), work_dir=None, log=lambda s: None)
    return {"loss": info["losses"]}


def grpo_run(tok_dir: Path) -> dict[str, Any]:
    import torch

    from assets.grpo import GRPOConfig
    from assets.posttrain import params
    from ops.rewards import parse_specs
    from ops.rl.grpo import GRPOParams, train_grpo
    from ops.tasks import Task
    from ops.tokenizer import load_tokenizer
    from tests.ops.rl.resume_runs import REWARD, register_reward

    register_reward()
    tok = load_tokenizer(tok_dir)
    c = GRPOConfig(
        model="m", prompts=["p"], rewards=[REWARD], steps=4, prompts_per_step=4, group_size=4,
        max_new_tokens=12, lr=1e-3, warmup_steps=1,
    )
    tasks = [Task(i, q, a, r, 1, "golden") for i, q, r, a in _problems(32, seed=4)]
    torch.manual_seed(c.seed)
    policy, ref = _model(tok), _model(tok)
    st = train_grpo(
        policy, ref, tok, tasks, parse_specs(list(c.rewards)), params(GRPOParams, c), log=lambda s: None
    )
    h = [r for r in st.history if r["step"] >= 1]
    return {k: [r.get(k) for r in h] for k in ("reward", "loss", "kl")}


# ---------------------------------------------------------------- comparison
def _close(a: Any, b: Any, scale: float, rel_tol: float = REL_TOL) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=max(ABS_TOL, rel_tol * scale))


def diff_table(stored: dict[str, list], now: dict[str, list]) -> list[str]:
    """One line per differing (series, step): stored value, new value and relative difference."""
    lines = []
    for key in sorted(set(stored) | set(now)):
        a, b = stored.get(key, []), now.get(key, [])
        if len(a) != len(b):
            lines.append(f"{key}: {len(a)} steps stored, {len(b)} now")
        scale = max((abs(v) for v in a if v is not None), default=0.0)
        rel_tol = SERIES_REL_TOL.get(key, REL_TOL)
        for step, (x, y) in enumerate(zip(a, b), start=1):
            if not _close(x, y, scale, rel_tol):
                rel = abs(x - y) / max(abs(x), 1e-30) if x is not None and y is not None else float("nan")
                lines.append(f"{key} step {step}: stored {x!r}, now {y!r} (rel diff {rel:.3g})")
    return lines


def _check(name: str, now: dict[str, list]) -> None:
    path = LOSSES / f"{name}.json"
    if UPDATE:
        LOSSES.mkdir(exist_ok=True)
        path.write_text(json.dumps(now, indent=1) + "\n")
        return
    assert path.is_file(), f"{path} missing; create it with LMFORGE_UPDATE_GOLDEN=1 (see the module docstring)"
    stored = json.loads(path.read_text())
    lines = diff_table(stored, now)
    assert not lines, (
        f"{name}: the run no longer reproduces {path.name} "
        f"(tol {REL_TOL}, {SERIES_REL_TOL} by series, of the value or of its series' largest value):\n  "
        + "\n  ".join(lines)
        + "\nIf the change is intended, regenerate with LMFORGE_UPDATE_GOLDEN=1 and state why in the commit."
    )


def test_pretrain_losses_match_golden(one_thread, tok_dir, tmp_path):
    _check("pretrain", pretrain_run(tok_dir, tmp_path))


def test_sft_losses_match_golden(one_thread, tok_dir):
    _check("sft", sft_run(tok_dir))


def test_grpo_reward_loss_kl_match_golden(one_thread, tok_dir):
    _check("grpo", grpo_run(tok_dir))


def test_diff_table_names_each_differing_step():
    """The failure message: every differing step with both values, and a changed step count; the KL's
    own tolerance takes a 2e-6 difference the loss's would not."""
    stored = {"loss": [1.0, 2.0, 3.0], "kl": [None, 0.5]}
    now = {"loss": [1.0, 2.0000001, 3.5], "kl": [0.1, 0.500001, 0.6]}
    loss_only = diff_table({"loss": [0.5]}, {"loss": [0.500001]})
    assert loss_only == ["loss step 1: stored 0.5, now 0.500001 (rel diff 2e-06)"]
    lines = diff_table(stored, now)
    assert lines == [
        "kl: 2 steps stored, 3 now",
        "kl step 1: stored None, now 0.1 (rel diff nan)",
        "loss step 3: stored 3.0, now 3.5 (rel diff 0.167)",
    ]
    assert diff_table(stored, stored) == []
    # a value near 0 is held to the series' scale: rounding at 1e-6 of the largest value passes, more does not
    stored = {"loss": [0.04, 5e-4]}
    assert diff_table(stored, {"loss": [0.04, 5e-4 + 3e-8]}) == []
    assert diff_table(stored, {"loss": [0.04, 5e-4 + 1e-7]}) == [
        "loss step 2: stored 0.0005, now 0.0005001 (rel diff 0.0002)"
    ]
