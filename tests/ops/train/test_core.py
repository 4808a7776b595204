"""The shared training core: schedules, exact resume after a real SIGKILL, refused resume, NaN guard,
gradient accumulation, checkpoint hygiene, and steps of several updates or none (the RL seam). Tiny Qwen2 models so the whole file runs in seconds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ops.train import checkpoint as ckpt
from ops.train.core import NonFiniteError, ResumeRefused, TrainConfig, train
from ops.train.schedule import lr_at

ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.unit


def _tiny(seed: int = 0):
    from ops.model import build_model

    return build_model(
        {"arch": "qwen2", "d_model": 32, "layers": 1, "heads": 2, "kv_heads": 1, "max_seq_len": 64},
        97,
        seed=seed,
    )


def _batch_fn(batch: int = 4, seq: int = 16):
    import torch

    def fn(step: int, micro: int):
        g = torch.Generator().manual_seed(1000 * step + micro)
        x = torch.randint(0, 97, (batch, seq + 1), generator=g)
        x[:, 1::2] = (x[:, 0::2][:, : x[:, 1::2].shape[1]] * 7 + 3) % 97  # learnable structure
        return {"input_ids": x[:, :-1], "labels": x[:, 1:]}

    return fn


def _loss(model, batch):
    import torch.nn.functional as F

    logits = model(input_ids=batch["input_ids"]).logits
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch["labels"].reshape(-1)), {}


def test_schedules_shape():
    kw = dict(lr=1.0, steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(99, schedule="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(54, schedule="cosine", **kw) == pytest.approx(0.55, abs=0.02)
    # WSD: flat until the last 20%, then linear down to the floor
    assert lr_at(79, schedule="wsd", **kw) == pytest.approx(1.0)
    assert lr_at(99, schedule="wsd", **kw) == pytest.approx(0.1)
    assert 0.1 < lr_at(90, schedule="wsd", **kw) < 1.0
    assert lr_at(50, schedule="constant", **kw) == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(0, lr=1, steps=2, schedule="triangle")


def test_loss_falls_and_curve_records(tmp_path):
    model = _tiny()
    out = train(
        model,
        _loss,
        _batch_fn(),
        TrainConfig(steps=30, lr=1e-2, log_every=10),
        log=lambda s: None,
        progress=False,
        work_dir=tmp_path,
    )
    assert out.steps_done == 30 and out.resumed_from is None and len(out.losses) == 30
    assert out.losses[-1] < out.losses[0] - 0.5
    assert [r["step"] for r in out.curve] == [1, 10, 20, 30]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "tokens"} <= set(out.curve[-1])
    assert out.tokens == 30 * 4 * 16
    # a finished run is picked up from its final checkpoint without training again
    again = train(
        _tiny(),
        _loss,
        _batch_fn(),
        TrainConfig(steps=30, lr=1e-2, log_every=10),
        log=lambda s: None,
        progress=False,
        work_dir=tmp_path,
    )
    assert again.resumed_from == 30 and again.losses == out.losses


def test_grad_accum_matches_one_big_batch():
    big = train(
        _tiny(), _loss, _batch_fn(batch=8), TrainConfig(steps=5, lr=1e-2), log=lambda s: None, progress=False
    )
    full = _batch_fn(batch=8)

    def half(step, micro):
        b = full(step, 0)
        return {k: v[micro * 4 : (micro + 1) * 4] for k, v in b.items()}

    acc = train(
        _tiny(), _loss, half, TrainConfig(steps=5, lr=1e-2, grad_accum=2), log=lambda s: None, progress=False
    )
    assert acc.losses == pytest.approx(big.losses, rel=1e-4)


def test_a_step_reads_the_device_once_and_keeps_the_exact_host_sums(monkeypatch):
    """The micro-batches' losses and tensor stats stay on the device until the step's one read (with the
    gradient norm, for the guard); the logged means equal the float sums a host-side loop would make."""
    import torch

    class NoHostRead(torch.Tensor):
        """A loss or stat that fails if the core reads it back on its own (``float()``/``.item()``)."""

        def item(self):
            raise AssertionError("a per-micro-batch host read")

        def __float__(self):
            raise AssertionError("a per-micro-batch host read")

    calls: list[tuple[float, float]] = []  # (loss, stat) of every micro-batch, read by the test itself

    def loss_fn(model, batch):
        loss, _ = _loss(model, batch)
        frac = (batch["labels"] < 40).float().mean()
        calls.append((loss.detach().item(), frac.item()))
        return loss.as_subclass(NoHostRead), {"low_frac": frac.as_subclass(NoHostRead), "const": 0.1}

    import ops.train.core as core

    reads = []
    real_read = core._read
    monkeypatch.setattr(core, "_read", lambda values: reads.append(len(values)) or real_read(values))
    out = train(_tiny(), loss_fn, _batch_fn(), TrainConfig(steps=4, lr=1e-2, grad_accum=3, log_every=1),
                log=lambda s: None, progress=False)
    assert len(reads) == 4  # one read per step, whatever the number of micro-batches
    for step, rec in enumerate(out.curve):
        loss_sum = frac_sum = const_sum = 0.0
        for loss, frac in calls[3 * step : 3 * step + 3]:
            loss_sum, frac_sum, const_sum = loss_sum + loss, frac_sum + frac, const_sum + 0.1
        assert out.losses[step] == rec["loss"] == loss_sum / 3  # exact: same float64 sums, same order
        assert rec["low_frac"] == frac_sum / 3 and rec["const"] == const_sum / 3
        assert isinstance(rec["low_frac"], float) and math.isfinite(rec["grad_norm"])
    json.dumps(out.curve)  # records hold host numbers only


_SCRIPT = textwrap.dedent("""
    import os, signal, sys, json
    sys.path.insert(0, {root!r})
    from tests.ops.train.test_core import _tiny, _batch_fn, _loss
    from ops.train.core import TrainConfig, train
    from ops.train.checkpoint import save_tensors
    work, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    inner = _batch_fn()
    def batch_fn(step, micro):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)   # a real crash: no cleanup, no exception handlers
        return inner(step, micro)
    import torch
    torch.set_num_threads(1)
    model = _tiny()
    res = train(model, _loss, batch_fn, TrainConfig(steps=20, lr=5e-3, ckpt_every=4, keep_last=2, log_every=3,
                eval_every=5, weight_decay=0.1, warmup_steps=3),
                work_dir=work, fingerprint={{"data": "x"}}, eval_fn=lambda m, s: {{"val_probe": float(
                    m(input_ids=torch.arange(16)[None]).logits.sum())}}, progress=False, log=lambda s: None)
    save_tensors(model.state_dict(), out + ".safetensors")
    json.dump({{"losses": res.losses, "resumed_from": res.resumed_from,
               "curve": [{{k: v for k, v in r.items() if k != "tokens_per_s"}} for r in res.curve]}},
              open(out + ".json", "w"))
""")


def _run_script(tmp_path: Path, work: Path, out: Path, kill_at: int) -> subprocess.CompletedProcess:
    script = tmp_path / "train_script.py"
    script.write_text(_SCRIPT.format(root=str(ROOT)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(script), str(work), str(out), str(kill_at)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    ref = _run_script(tmp_path, tmp_path / "w_ref", tmp_path / "ref", kill_at=-1)
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = _run_script(tmp_path, tmp_path / "w_crash", tmp_path / "crash", kill_at=14)
    assert killed.returncode == -9  # SIGKILL
    cks = ckpt.list_checkpoints(tmp_path / "w_crash" / "checkpoints")
    assert [s for s, _ in cks] == [8, 12]  # keep_last=2; step 14 never saved
    resumed = _run_script(tmp_path, tmp_path / "w_crash", tmp_path / "crash", kill_at=-1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((tmp_path / "ref.json").read_text())
    b = json.loads((tmp_path / "crash.json").read_text())
    assert b["resumed_from"] == 12 and a["resumed_from"] is None
    assert a["losses"] == b["losses"]  # every step's loss, exactly
    assert a["curve"] == b["curve"]  # logged records incl. eval values
    assert (tmp_path / "ref.safetensors").read_bytes() == (tmp_path / "crash.safetensors").read_bytes()


def test_resume_refused_when_fingerprint_differs(tmp_path):
    cfg = TrainConfig(steps=6, lr=1e-2, ckpt_every=2)
    train(
        _tiny(),
        _loss,
        _batch_fn(),
        cfg,
        work_dir=tmp_path,
        fingerprint={"tokenizer": "aaa"},
        progress=False,
        log=lambda s: None,
    )
    with pytest.raises(ResumeRefused, match=r"data\.tokenizer: stored 'aaa', now 'bbb'"):
        train(
            _tiny(),
            _loss,
            _batch_fn(),
            cfg,
            work_dir=tmp_path,
            fingerprint={"tokenizer": "bbb"},
            progress=False,
            log=lambda s: None,
        )
    with pytest.raises(ResumeRefused, match=r"train\.lr"):
        train(
            _tiny(),
            _loss,
            _batch_fn(),
            TrainConfig(steps=6, lr=2e-2, ckpt_every=2),
            work_dir=tmp_path,
            fingerprint={"tokenizer": "aaa"},
            progress=False,
            log=lambda s: None,
        )


def test_absurd_lr_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    import torch

    cfg = TrainConfig(steps=20, lr=1e25, ckpt_every=1, keep_last=3, grad_clip=0.0)
    with pytest.raises(NonFiniteError, match=r"non-finite .* at step (\d+)") as ei:
        train(_tiny(), _loss, _batch_fn(), cfg, work_dir=tmp_path, progress=False, log=lambda s: None)
    err = ei.value
    assert err.step >= 2 and err.last_checkpoint is not None
    last_step, last_path = ckpt.latest(tmp_path / "checkpoints")
    assert last_step == err.step - 1 and last_path == err.last_checkpoint
    state = ckpt.load(last_path)
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert all(math.isfinite(x) for x in state["state"]["losses"])


def test_checkpoint_ignores_partial_writes_and_prunes(tmp_path):
    import torch

    root = tmp_path / "ck"
    sd = {"w": torch.ones(2, 2)}
    sd["tied"] = sd["w"]
    for s in (1, 2, 3):
        ckpt.save(root, s, model_state=sd, optim_state={}, rng_state={}, state={"s": s}, keep_last=2)
    (root / ".tmp-step-00000004-dead").mkdir()  # what a kill mid-write leaves
    (root / "step-00000005").mkdir()  # a directory without state.json is not a checkpoint
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [2, 3]
    loaded = ckpt.load(ckpt.latest(root)[1])
    assert torch.equal(loaded["model"]["tied"], sd["w"]) and loaded["state"] == {"s": 3}
    ckpt.save(root, 6, model_state=sd, optim_state={}, rng_state={}, state={}, keep_last=2)
    assert not list(root.glob(".tmp-*"))


# ---------------------------------------------------------------- steps of several updates (the RL seam)
def _weights(m) -> dict:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_step_batch_updates_equal_plain_steps_at_a_constant_lr():
    """A step of two updates is two guarded optimizer steps at the step's LR: with a constant LR it ends
    exactly where four one-update steps over the same batches end."""
    from ops.train.core import StepBatch

    plain = _batch_fn()
    cfg = dict(lr=1e-2, schedule="constant", seed=3, log_every=1)
    a = _tiny()
    out_a = train(a, _loss, lambda s, m: StepBatch([plain(2 * s, 0), plain(2 * s + 1, 0)]),
                  TrainConfig(steps=2, **cfg), progress=False, log=lambda s: None)
    b = _tiny()
    out_b = train(b, _loss, plain, TrainConfig(steps=4, **cfg), progress=False, log=lambda s: None)
    assert _same(_weights(a), _weights(b))
    # the step's loss and gradient norm are the means over its updates
    assert out_a.losses[0] == (out_b.losses[0] + out_b.losses[1]) / 2
    assert out_a.curve[1]["grad_norm"] == (out_b.curve[2]["grad_norm"] + out_b.curve[3]["grad_norm"]) / 2


def test_a_step_without_updates_moves_nothing_and_records_no_loss(tmp_path):
    import torch

    from ops.train.core import StepBatch

    plain = _batch_fn()
    m = _tiny()
    seen: dict[int, dict] = {}

    def batch_fn(step, micro):
        return StepBatch([] if step in (1, 2) else [plain(step, 0)])

    def on_step(done, record):
        seen[done] = _weights(m)
        record["extra"] = done  # the caller's own fields join the curve record

    out = train(m, _loss, batch_fn, TrainConfig(steps=4, lr=1e-2, log_every=1), progress=False,
                log=lambda s: None, on_step=on_step, work_dir=tmp_path)
    assert _same(seen[1], seen[2]) and _same(seen[2], seen[3])  # steps 2 and 3 made no update
    assert not _same(seen[3], seen[4])
    assert ["loss" in r for r in out.curve] == [True, False, False, True]
    assert [r["extra"] for r in out.curve] == [1, 2, 3, 4] and len(out.losses) == 2
    assert all(math.isfinite(r["lr"]) for r in out.curve)
    # and the optimizer counted exactly the two updates (its state is what the checkpoint keeps)
    opt = torch.load(out.last_checkpoint / "optimizer.pt", weights_only=True)
    assert {int(s["step"]) for s in opt["state"].values()} == {2}


def test_param_group_lr_mult_scales_the_scheduled_lr():
    """An extra param group trains at ``lr_mult`` times the scheduled LR (0 here: it never moves) and is
    clipped with the rest."""
    import torch

    m = _tiny()
    head = torch.nn.Linear(32, 1)
    before_head, before_m = _weights(head), _weights(m)
    both = torch.nn.ModuleDict({"lm": m, "head": head})

    def loss(model, batch):
        out = model["lm"](input_ids=batch["input_ids"], output_hidden_states=True)
        ce, _ = _loss(model["lm"], batch)
        return ce + model["head"](out.hidden_states[-1]).pow(2).mean(), {}

    train(both, loss, _batch_fn(), TrainConfig(steps=2, lr=1e-2), progress=False, log=lambda s: None,
          trainable_params=list(m.parameters()),
          param_groups=[{"params": list(head.parameters()), "weight_decay": 0.0, "lr_mult": 0.0}])
    assert _same(_weights(head), before_head) and not _same(_weights(m), before_m)


def test_step_batch_resume_restores_the_callers_state_and_is_exact(tmp_path):
    """Interrupted after step 3 (checkpoint at 2), resumed: the caller's state comes back from the
    checkpoint and the run ends bit-identical to an uninterrupted one."""
    from ops.train.core import StepBatch

    plain = _batch_fn()

    def run(work, stop_at=None):
        m = _tiny()
        state = {"history": []}

        def on_step(done, record):
            state["history"].append({"step": done, "loss": record.get("loss")})
            if done == stop_at:
                raise KeyboardInterrupt

        train(m, _loss, lambda s, mi: StepBatch([plain(s, 0), plain(s, 1)]),
              TrainConfig(steps=5, lr=1e-2, warmup_steps=2, ckpt_every=2), work_dir=work, progress=False,
              log=lambda s: None, state=state, on_step=on_step)
        return _weights(m), state

    ref_w, ref_state = run(None)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "w", stop_at=3)
    w, state = run(tmp_path / "w")
    assert _same(w, ref_w) and state == ref_state
