"""Exact resume for SFT, GRPO and PPO: a run interrupted mid-way (GRPO by a real SIGKILL of a child process,
SFT and PPO by an exception from the logging hook) and then resumed from its work directory ends with
bit-identical weights, history and rollouts to an uninterrupted run without any checkpointing (so
checkpointing does not change the numbers either); a resume under changed parameters is refused by name."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ops.train import checkpoint as ckpt
from ops.train.core import ResumeRefused
from tests import posttrain_helpers as H
from tests.ops.rl import resume_runs as R

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.slow


class Interrupted(Exception):
    pass


def _stop_at(step: int):
    def log(line: str) -> None:
        if line.startswith(f"step={step} "):
            raise Interrupted(line)

    return log


def _assert_same_weights(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"tensors differ after resume: {diff[:5]}"


# ------------------------------------------------------------------------------------------ SFT
def _sft(work: Path | None, log=lambda s: None, **over):
    import torch

    from ops.posttrain.common import Example
    from ops.posttrain.sft import SFTParams, train_sft

    torch.manual_seed(0)
    tok = H.tokenizer()
    train, _ = H.task_splits()
    ex = [Example(t.id, t.question, t.response, t.answer) for t in train[:200]]
    p = SFTParams(**{"steps": 8, "lr": 3e-3, "batch_size": 8, "warmup_steps": 2, "ckpt_every": 2, **over})
    model, _, info = train_sft(H.tiny_model(tok, seed=3), tok, ex, p, work_dir=work, log=log)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, info


def _curve(info: dict) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in info["curve"]]


def test_sft_interrupted_then_resumed_is_bit_identical(tmp_path):
    ref_w, ref_info = _sft(None)  # no work directory: no checkpoint is ever written
    with pytest.raises(Interrupted):
        _sft(tmp_path, log=_stop_at(5))
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [2, 4]
    # a checkpoint interval is not a result: resuming with another one is allowed and changes nothing
    w, info = _sft(tmp_path, ckpt_every=3)
    _assert_same_weights(ref_w, w)
    assert info["losses"] == ref_info["losses"]
    assert _curve(info) == _curve(ref_info)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [6, 8]


def test_sft_resume_refused_under_changed_parameters(tmp_path):
    with pytest.raises(Interrupted):
        _sft(tmp_path, log=_stop_at(3))
    with pytest.raises(ResumeRefused, match=r"train\.lr: stored 0\.003, now 0\.002.*delete .*checkpoints"):
        _sft(tmp_path, lr=2e-3)
    # a parameter only SFT knows (not part of the optimizer config) is part of the fingerprint too
    with pytest.raises(ResumeRefused, match=r"data\.sft\.batch_size: stored 8, now 4"):
        _sft(tmp_path, batch_size=4)


# ------------------------------------------------------------------------------------------ GRPO
def _wait_for(path: Path, proc: subprocess.Popen, limit_s: float = 600) -> None:
    deadline = time.monotonic() + limit_s
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"child did not reach {path} within {limit_s} s")
        time.sleep(0.2)


def test_grpo_killed_by_sigkill_then_resumed_is_bit_identical(tmp_path):
    import torch

    model_dir = H.base_model_dir()
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    args = ["grpo", str(model_dir), str(work), str(tmp_path / "out"), "3", str(torch.get_num_threads())]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.ops.rl.resume_runs", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(work / "reached", proc)
    finally:
        proc.kill()  # SIGKILL: no handler, no cleanup
        proc.wait(timeout=60)
    assert proc.returncode == -9
    assert [s for s, _ in ckpt.list_checkpoints(work / "checkpoints")] == [2]  # step 3 never saved

    lines: list[str] = []
    w, _, hist, rollouts = R.run("grpo", model_dir, work, log=lines.append)
    assert lines[0].startswith("resumed from checkpoint step-00000002 (step 2/6)")
    ref_w, _, ref_hist, ref_rollouts = R.run("grpo", model_dir, None)
    _assert_same_weights(ref_w, w)
    assert R.without_timing(hist) == R.without_timing(ref_hist)
    assert rollouts == ref_rollouts
    assert len(rollouts) == 6 * 4 * 4 and hist[0]["step"] == 0 and hist[-1]["step"] == 6
    # the run really learned something: weights moved away from the starting model
    start = ckpt.load_tensors(model_dir / "model.safetensors")
    assert any(not torch.equal(start[k], w[k]) for k in start if k in w)


def test_grpo_resume_refused_under_changed_parameters(tmp_path):
    with pytest.raises(Interrupted):
        R.run("grpo", H.base_model_dir(), tmp_path, log=_stop_at(3))
    with pytest.raises(ResumeRefused, match=r"data\.grpo\.group_size: stored 4, now 8"):
        R.run("grpo", H.base_model_dir(), tmp_path, group_size=8)


# ------------------------------------------------------------------------------------------ PPO
def test_ppo_interrupted_then_resumed_is_bit_identical(tmp_path):
    model_dir = H.base_model_dir()
    ref_w, ref_vh, ref_hist, ref_rollouts = R.run("ppo", model_dir, None)
    with pytest.raises(Interrupted):
        R.run("ppo", model_dir, tmp_path, log=_stop_at(5))
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [2, 4]
    w, vh, hist, rollouts = R.run("ppo", model_dir, tmp_path)
    _assert_same_weights(ref_w, w)
    _assert_same_weights(ref_vh, vh)  # the value head is restored with the policy
    assert any(float(v.abs().sum()) > 0 for v in vh.values())  # and it did learn (it starts at zero)
    assert R.without_timing(hist) == R.without_timing(ref_hist)
    assert rollouts == ref_rollouts
    with pytest.raises(ResumeRefused, match=r"data\.ppo\.kl_coef: stored 0\.05, now 0\.1"):
        R.run("ppo", model_dir, tmp_path, kl_coef=0.1)


def test_ppo_with_adaptive_kl_and_value_warmup_resumes_bit_identical(tmp_path):
    """The adaptive KL coefficient is carried by the checkpointed history, so a resumed run continues it."""
    model_dir = H.base_model_dir()
    over = {"kl_target": 0.01, "kl_horizon": 64, "value_warmup_steps": 2, "reward_whiten": True}
    ref_w, ref_vh, ref_hist, _ = R.run("ppo", model_dir, None, **over)
    with pytest.raises(Interrupted):
        R.run("ppo", model_dir, tmp_path, log=_stop_at(5), **over)
    w, vh, hist, _ = R.run("ppo", model_dir, tmp_path, **over)
    _assert_same_weights(ref_w, w)
    _assert_same_weights(ref_vh, vh)
    assert R.without_timing(hist) == R.without_timing(ref_hist)
    coefs = [r["kl_coef"] for r in hist if r["step"] > 0]
    assert len(set(coefs)) > 1 and [r["value_warmup"] for r in hist if r["step"] > 0][:3] == [1, 1, 0]
