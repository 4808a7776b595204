"""The training core: one loop for every objective (pretraining, SFT, reward model, DPO, distillation,
GRPO, PPO).

Key design choice: the loop knows nothing about the objective. It receives ``loss_fn(model, batch) ->
(loss, stats)`` and ``batch_fn(step, micro) -> batch``; because the batch is a pure function of the step,
resuming needs only the step counter, the weights, the optimizer state and the RNG state, and a resumed run
on CPU reproduces the uninterrupted one bit for bit. RL plugs in the same way (the TrainModule/Trainer seam
of OLMo-core): its ``batch_fn`` samples and scores a rollout batch and returns a :class:`StepBatch`, the
list of minibatches the step updates on (``updates_per_batch`` passes, possibly none when no group is live);
the core runs one guarded update per minibatch at the step's LR, so checkpoints fall on rollout-batch
boundaries and the caller's own progress (history, rollouts) rides in the checkpoint as ``state``.
Everything else is plain composition:

* AdamW (fused on CUDA), weight decay on matrices only, the LR from :mod:`ops.train.schedule` written into
  the param groups each step (no scheduler object to save; a group's ``lr_mult`` scales it, e.g. PPO's value
  head);
* gradient accumulation (DDP's ``no_sync`` on all but the last micro-batch), clipping, bf16 autocast on
  CUDA (on the CPU with ``precision: bf16``, attention kept in fp32), optional ``torch.compile`` and activation
  checkpointing;
* atomic keep-last-k checkpoints in ``work_dir`` (:mod:`ops.train.checkpoint`) that refuse to resume under a
  different fingerprint (config, data, tokenizer — whatever the caller puts in ``fingerprint``);
* a non-finite loss or gradient raises :class:`NonFiniteError` naming the step *before* the optimizer
  touches the weights, so the last checkpoint on disk is the last good state; the step's loss, gradient
  norm and tensor stats reach the host in one read, the one this guard needs (on a GPU the step's only
  wait for the device: losses are summed over micro-batches where they live);
* when ``torch.distributed`` is initialised the model is wrapped in DDP, or sharded with FSDP2
  (``fully_shard`` per decoder layer and at the root, CPU/gloo or CUDA/NCCL) with ``fsdp=True``; under FSDP
  ``precision: bf16`` (or ``auto`` on CUDA) becomes a mixed-precision policy (bf16 parameters and compute,
  fp32 gradient reduction); each rank's ``batch_fn`` returns its shard of the global batch; only rank 0
  writes checkpoints, logs and draws the progress bar.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import checkpoint as ckpt
from .schedule import SCHEDULES, lr_at

# Config fields that cannot change the numbers a run produces; a resume may differ in these.
_NON_RESULT_FIELDS = ("ckpt_every", "keep_last")
# auto: bf16 autocast on CUDA, fp32 on the CPU | bf16: bf16 autocast (on the CPU, attention in fp32) | fp32
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    steps: int
    lr: float
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | wsd | linear | constant
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # 0 = no clipping (the norm is still measured and guarded)
    grad_accum: int = 1
    seed: int = 0
    eval_every: int = 0  # 0 = evaluate only at the end (when eval_fn is given)
    ckpt_every: int = 0  # 0 = checkpoint only at the end (when work_dir is given)
    keep_last: int = 2
    log_every: int = 10
    compile: bool = False
    activation_checkpointing: bool = False
    decay_frac: float = 0.2  # wsd: fraction of steps spent decaying
    eps: float = 1e-8
    precision: str = "auto"  # one of PRECISIONS
    fsdp: bool = False  # under torch.distributed: FSDP2 (fully_shard) instead of DDP
    spike_factor: float = 2.0  # a step whose loss exceeds spike_factor x the running mean is a spike

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule: unknown {self.schedule!r}; expected one of {SCHEDULES}")
        if self.steps < 1 or self.grad_accum < 1:
            raise ValueError("TrainConfig: steps and grad_accum must be >= 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision: unknown {self.precision!r}; expected one of {PRECISIONS}")
        self.betas = tuple(self.betas)  # type: ignore[assignment]


# the fields of a step record that the core measures itself; the rest come from the loss and evaluation
CORE_FIELDS = ("step", "lr", "tokens", "tokens_per_s", "mfu")


@dataclass
class StepBatch:
    """What ``batch_fn(step, 0)`` returns for a step of several optimizer updates (an RL rollout batch):
    ``updates`` holds one batch per update, all taken at the step's LR; an empty list leaves the weights and
    the optimizer state untouched. ``grad_accum`` must be 1."""

    updates: list[Any]


@dataclass
class TrainOutcome:
    curve: list[dict[str, Any]]  # one record per logged step
    steps_done: int
    resumed_from: int | None  # the checkpoint step this run started from, None if fresh
    spikes: list[dict[str, Any]]
    losses: list[float] = field(default_factory=list)  # every step's loss (global mean over ranks)
    tokens: int = 0  # tokens processed over the whole run (all ranks, incl. before resume)
    wall_s: float = 0.0  # this process's training wall time
    last_checkpoint: Path | None = None
    final_eval: dict[str, Any] = field(default_factory=dict)

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


class NonFiniteError(RuntimeError):
    """Loss or gradient norm became NaN/inf; raised before the update, so weights on disk stay good."""

    def __init__(self, what: str, step: int, value: float, last_checkpoint: Path | None):
        self.step, self.value, self.last_checkpoint = step, value, last_checkpoint
        where = (
            f"last good checkpoint: {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
        )
        super().__init__(
            f"non-finite {what} ({value}) at step {step}; training stopped before the update; {where}"
        )


class ResumeRefused(RuntimeError):
    """A checkpoint exists in the work directory but was written under a different fingerprint."""


# ---------------------------------------------------------------- helpers
def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when torch.distributed is not initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def make_optimizer(params: list[Any], cfg: TrainConfig) -> Any:
    """AdamW with weight decay on >=2-D tensors only; fused on CUDA."""
    import torch

    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("make_optimizer: no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    fused = all(p.is_cuda for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused or None)


def set_lr(optimizer: Any, lr: float) -> None:
    """Write ``lr`` into every param group, times the group's ``lr_mult`` when it has one."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g["lr_mult"] if "lr_mult" in g else lr


def schedule_lr(step: int, cfg: TrainConfig) -> float:
    return lr_at(
        step,
        lr=cfg.lr,
        steps=cfg.steps,
        warmup_steps=cfg.warmup_steps,
        schedule=cfg.schedule,
        min_lr_ratio=cfg.min_lr_ratio,
        decay_frac=cfg.decay_frac,
    )


def clip_grads(params: list[Any], max_norm: float) -> float:
    """Clip to ``max_norm`` (no-op when 0) and return the global L2 norm before clipping."""
    norm = _clip(params, max_norm)
    return 0.0 if norm is None else float(norm)


def autocast_ctx(device: Any, precision: str = "auto") -> Any:
    """bf16 autocast when ``precision`` asks for it (``auto``: on CUDA only), else nothing. On the CPU the
    attention itself stays fp32 (:func:`_fp32_attention`)."""
    import torch

    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    if device.type != "cpu":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
    stack.enter_context(_fp32_attention())
    return stack


@contextlib.contextmanager
def _fp32_attention() -> Any:
    """transformers' SDPA attention run in fp32 with autocast off, for the duration of the block.

    Under CPU bf16 autocast the projections' matmuls get faster, but PyTorch's CPU flash-attention backward
    in bf16 is several times slower than in fp32, which cancels the gain on small models; the attention's
    inputs are cast up and its output goes on to the (autocast) output projection. The override is put back
    on exit, also when the block raises."""
    import torch
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def sdpa_fp32(module: Any, q: Any, k: Any, v: Any, mask: Any, **kw: Any) -> Any:
        with torch.autocast(q.device.type, enabled=False):
            if mask is not None and mask.is_floating_point():
                mask = mask.float()
            return sdpa(module, q.float(), k.float(), v.float(), mask, **kw)

    ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa_fp32
    try:
        yield
    finally:
        ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa


def rng_state() -> dict[str, Any]:
    import torch

    st: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]) + [random.getstate()[2] or -1],
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(st["torch"])
    py = st.get("python")
    if py is not None:
        random.setstate((3, tuple(int(x) for x in py[:-1]), None if py[-1] == -1 else py[-1]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        a, b = list(a), list(b)
    return [] if a == b else [f"{path or '<root>'}: stored {a!r}, now {b!r}"]


def _jsonable(x: Any) -> Any:
    import json

    return json.loads(json.dumps(x, default=str))


def params_fingerprint(params: Any) -> dict[str, Any]:
    """A dataclass of op parameters as a fingerprint entry, without the fields that cannot change results;
    a nested config model (the ``optim`` block) enters as its fields."""
    return {
        k: v.model_dump(mode="json") if hasattr(v, "model_dump") else v
        for k, v in asdict(params).items()
        if k not in _NON_RESULT_FIELDS
    }


class Checkpointer:
    """Fingerprinted, periodic checkpoints of one training run in ``work_dir/checkpoints``.

    The one implementation of resume, used by :func:`train` for every training kind: the
    fingerprint is the result-changing part of ``cfg``, the world size and the caller's ``fingerprint``
    (data, tokenizer, op parameters); a checkpoint written under another fingerprint is refused with the
    differing fields named. ``model`` may be a ``ModuleDict`` when a run trains several modules (PPO's
    policy and value head). Each caller stores its own progress (curve, history, rollouts) in ``state``.
    Without ``work_dir`` nothing is read or written.
    """

    def __init__(
        self, work_dir: Path | None, cfg: TrainConfig, fingerprint: dict[str, Any] | None, world: int = 1
    ):
        self.cfg = cfg
        self.root = Path(work_dir) / "checkpoints" if work_dir is not None else None
        self.fingerprint = _jsonable(
            {
                "train": {k: v for k, v in asdict(cfg).items() if k not in _NON_RESULT_FIELDS},
                "world_size": world,
                "data": fingerprint or {},
            }
        )
        self.last: Path | None = None  # the newest complete checkpoint of this run (read or written)

    def resume(self, model: Any, optimizer: Any) -> tuple[int, dict[str, Any]] | None:
        """Load the newest checkpoint into ``model``/``optimizer`` and the RNGs; ``(step, state)`` or None."""
        found = ckpt.latest(self.root) if self.root is not None else None
        if found is None:
            return None
        step, path = found
        data = ckpt.load(path)
        diffs = _diff(data["state"].get("fingerprint"), self.fingerprint)
        if diffs:
            raise ResumeRefused(
                f"refusing to resume from checkpoint {path}: it was written under a different fingerprint "
                f"({'; '.join(diffs[:6])}{' ...' if len(diffs) > 6 else ''}). The configuration, data or tokenizer "
                f"changed; delete {self.root} to start over."
            )
        _load_model_state(model, data["model"], next(model.parameters()).device)
        _load_optim_state(model, optimizer, data["optimizer"])
        set_rng_state(data["rng"])
        self.last = path
        return step, data["state"]

    def due(self, done: int) -> bool:
        """Whether a checkpoint is written after ``done`` steps: every ``ckpt_every`` and at the last step."""
        c = self.cfg
        return self.root is not None and (done == c.steps or (c.ckpt_every > 0 and done % c.ckpt_every == 0))

    def save(self, done: int, model: Any, optimizer: Any, state: dict[str, Any]) -> Path:
        """Checkpoint at ``done`` steps. Under FSDP every rank takes part in gathering; only rank 0 writes."""
        assert self.root is not None
        rank, world = dist_info()
        model_state = _full_model_state(model)
        optim_state = _full_optim_state(model, optimizer)
        path = self.root / f"step-{done:08d}"
        if rank == 0:
            path = ckpt.save(
                self.root,
                done,
                model_state=model_state,
                optim_state=optim_state,
                rng_state=rng_state(),
                state={**state, "step": done, "fingerprint": self.fingerprint},
                keep_last=self.cfg.keep_last,
            )
        if world > 1:  # no rank moves on (and possibly crashes) before the checkpoint is complete
            import torch.distributed as dist

            dist.barrier()
        self.last = path
        return path


# ---------------------------------------------------------------- the loop
def train(
    model: Any,
    loss_fn: Callable[[Any, Any], tuple[Any, dict[str, float]]],
    batch_fn: Callable[[int, int], Any],
    cfg: TrainConfig,
    *,
    work_dir: Path | None = None,
    fingerprint: dict[str, Any] | None = None,
    eval_fn: Callable[[Any, int], dict[str, Any]] | None = None,
    log: Callable[[str], None] = print,
    trainable_params: list[Any] | None = None,
    flops_per_token: float | None = None,
    peak_flops: float | None = None,
    progress: bool = True,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    param_groups: list[dict[str, Any]] | None = None,
    state: dict[str, Any] | None = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainOutcome:
    """Train ``model`` in place for ``cfg.steps`` steps; see the module docstring.

    ``loss_fn`` may report ``"tokens"`` in its stats (tokens in the micro-batch, for throughput); otherwise
    ``batch["input_ids"].numel()`` is used when the batch has it. ``flops_per_token`` (training FLOPs, i.e.
    ~6N + attention) and ``peak_flops`` (per device) enable an MFU column. ``on_log`` receives each curve
    record as it is logged (e.g. to forward it through Dagster Pipes).

    ``param_groups`` are added to the optimizer after the ``trainable_params`` groups (with their own
    ``weight_decay`` and ``lr_mult``) and clipped together with them. ``state`` is the caller's progress: it is
    saved with every checkpoint and, on resume, updated in place from the checkpoint (JSON values only).
    ``on_step(done, record)`` is called after each step's update, before the step is logged and checkpointed;
    ``record`` (step, lr, and loss, grad_norm and the loss stats averaged over the step's updates when it had
    any) may be extended in place and is what the curve keeps for that step.
    """
    import torch

    rank, world = dist_info()
    is_main = rank == 0
    raw = model
    device = next(raw.parameters()).device
    params = (
        list(trainable_params)
        if trainable_params is not None
        else [p for p in raw.parameters() if p.requires_grad]
    )
    ck = Checkpointer(work_dir, cfg, fingerprint, world)

    if cfg.activation_checkpointing and hasattr(raw, "gradient_checkpointing_enable"):
        raw.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    # Parallel wrapping happens before the optimizer is built (FSDP2 replaces parameters with DTensors).
    wrapped = raw
    if world > 1:
        if cfg.fsdp:
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            kw: dict[str, Any] = {}
            if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
                kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            for layer in getattr(getattr(raw, "model", raw), "layers", []):
                fully_shard(layer, **kw)
            fully_shard(raw, **kw)
            params = [p for p in raw.parameters() if p.requires_grad] if trainable_params is None else params
        else:
            from torch.nn.parallel import DistributedDataParallel as DDP

            wrapped = DDP(raw, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(params, cfg)
    for g in param_groups or []:
        optimizer.add_param_group(g)
        params = params + [p for p in g["params"] if p.requires_grad]
    fwd_model = torch.compile(wrapped) if cfg.compile else wrapped

    # ---- resume
    start, resumed_from, last_ck = 0, None, None
    curve: list[dict[str, Any]] = []
    losses: list[float] = []
    spikes: list[dict[str, Any]] = []
    tokens_total = 0
    resumed = ck.resume(raw, optimizer)
    if resumed is not None:
        start, st = resumed
        resumed_from, last_ck = start, ck.last
        curve, losses, spikes = st["curve"], st["losses"], st["spikes"]
        tokens_total = int(st["tokens"])
        if state is not None:
            state.update(st.get("caller", {}))
        if is_main:
            log(f"resumed from checkpoint {last_ck.name} (step {start}/{cfg.steps})")

    bar = None
    if progress and is_main and start < cfg.steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)

    raw.train()
    t_run = time.perf_counter()
    t_log, tok_log = time.perf_counter(), 0
    final_eval: dict[str, Any] = {}
    for step in range(start, cfg.steps):
        done = step + 1
        lr = schedule_lr(step, cfg)
        set_lr(optimizer, lr)
        first = batch_fn(step, 0)
        try:
            if isinstance(first, StepBatch):
                if world > 1:
                    raise ValueError("steps of several updates (StepBatch) run in a single process")
                upd = _updates(first.updates, fwd_model, loss_fn, optimizer, params, cfg, device, done, last_ck)
            else:
                upd = _accumulated_update(first, step, batch_fn, wrapped, fwd_model, loss_fn, optimizer, params,
                                          cfg, device, world, done, last_ck)
        except NonFiniteError:
            _close(bar)
            raise
        step_tokens = upd.tokens if upd is not None else 0
        tokens_total += step_tokens
        tok_log += step_tokens
        if upd is not None:
            if len(losses) >= 5:
                ref = sum(losses[-20:]) / len(losses[-20:])
                if upd.loss > cfg.spike_factor * ref:
                    spikes.append({"step": done, "loss": upd.loss, "running_mean": ref})
            losses.append(upd.loss)

        is_last = done == cfg.steps
        do_eval = eval_fn is not None and (is_last or (cfg.eval_every > 0 and done % cfg.eval_every == 0))
        logged = done == 1 or is_last or (cfg.log_every > 0 and done % cfg.log_every == 0) or do_eval
        dt = max(time.perf_counter() - t_log, 1e-9)
        record: dict[str, Any] = {"step": done}
        if upd is not None:
            record.update(loss=upd.loss, lr=lr, grad_norm=upd.grad_norm)
        else:  # a step without an update (no live RL group) measured no loss
            record["lr"] = lr
        record.update(tokens=tokens_total, tokens_per_s=tok_log / dt)
        if flops_per_token and peak_flops:
            record["mfu"] = tok_log / dt * flops_per_token / (peak_flops * world)
        record.update(upd.stats if upd is not None else {})
        if do_eval:
            raw.eval()
            with torch.no_grad(), autocast_ctx(device, cfg.precision):
                ev = eval_fn(raw if world == 1 or not cfg.fsdp else wrapped, done)
            raw.train()
            record.update(ev)
            if is_last:
                final_eval = dict(ev)
        if on_step is not None:
            on_step(done, record)
        if logged:
            curve.append(record)
            if is_main:
                log(" ".join(f"{k}={_fmt(v)}" for k, v in record.items()))
                if on_log is not None:
                    on_log(record)
            t_log, tok_log = time.perf_counter(), 0
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{upd.loss:.4f}" if upd is not None else "-", lr=f"{lr:.2e}")
        if ck.due(done):
            saved = {"curve": curve, "losses": losses, "spikes": spikes, "tokens": tokens_total}
            if state is not None:
                saved["caller"] = state
            last_ck = ck.save(done, raw, optimizer, saved)
    _close(bar)
    if start >= cfg.steps and curve:
        final_eval = {k: v for k, v in curve[-1].items() if k.startswith(("val_", "eval_"))}
    return TrainOutcome(
        curve=curve,
        steps_done=cfg.steps,
        resumed_from=resumed_from,
        spikes=spikes,
        losses=losses,
        tokens=tokens_total,
        wall_s=time.perf_counter() - t_run,
        last_checkpoint=last_ck,
        final_eval=final_eval,
    )


@dataclass
class _Update:
    """What one step's update measured: the loss and gradient norm, the loss stats (means over the
    micro-batches or the updates of the step) and the tokens it processed."""

    loss: float
    grad_norm: float
    stats: dict[str, float]
    tokens: int


def _tokens(stats: dict[str, Any] | None, batch: Any) -> int:
    n_tok = stats.get("tokens") if stats else None
    if n_tok is None and isinstance(batch, dict) and "input_ids" in batch:
        n_tok = batch["input_ids"].numel()
    return int(n_tok or 0)


def _accumulated_update(
    first, step, batch_fn, wrapped, fwd_model, loss_fn, optimizer, params, cfg, device, world, done, last_ck
) -> _Update:
    """One optimizer update over ``cfg.grad_accum`` micro-batches (the first one already built), with the
    loss and gradient norm guarded before the weights move.

    The micro-batches' losses and tensor stats are summed where they live (float64, in micro-batch order,
    so the sums equal a host-side float sum bit for bit) and read back with the gradient norm in one
    transfer: on a GPU that is the step's only wait for the device, the one the guard needs."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss_sum: Any = None
    stat_sums: dict[str, Any] = {}  # a float, or a float64 tensor on the stat's device
    micro_tokens = 0
    for micro in range(cfg.grad_accum):
        batch = first if micro == 0 else batch_fn(step, micro)
        sync = micro == cfg.grad_accum - 1 or not hasattr(wrapped, "no_sync")
        with contextlib.nullcontext() if sync else wrapped.no_sync(), autocast_ctx(device, cfg.precision):
            loss, stats = loss_fn(fwd_model, batch)
        (loss if cfg.grad_accum == 1 else loss / cfg.grad_accum).backward()
        value = loss.detach().double()
        loss_sum = value if loss_sum is None else loss_sum + value
        micro_tokens += _tokens(stats, batch)
        for k, v in (stats or {}).items():
            if k != "tokens":
                v = v.detach().double() if isinstance(v, torch.Tensor) else float(v)
                stat_sums[k] = stat_sums.get(k, 0.0) + v
    step_loss = loss_sum / cfg.grad_accum
    step_tokens = micro_tokens
    if world > 1:  # global mean loss and token count: every rank sees the same numbers
        import torch.distributed as dist

        t = torch.stack([step_loss, step_loss.new_tensor(float(step_tokens))])
        if device.type != "cuda":
            t = t.cpu()
        dist.all_reduce(t)
        step_loss, step_tokens = t[0] / world, t[1]
    norm = _clip(params, cfg.grad_clip)
    tensor_stats = [k for k, v in stat_sums.items() if isinstance(v, torch.Tensor)]
    host = _read([step_loss, norm, step_tokens, *(stat_sums[k] for k in tensor_stats)])
    step_loss_f, grad_norm, step_tokens = host[0], host[1], int(host[2])
    stat_sums.update(zip(tensor_stats, host[3:], strict=True))
    if not math.isfinite(step_loss_f):
        raise NonFiniteError("loss", done, step_loss_f, last_ck)
    if not math.isfinite(grad_norm):
        raise NonFiniteError("gradient norm", done, grad_norm, last_ck)
    optimizer.step()
    return _Update(step_loss_f, grad_norm, {k: v / cfg.grad_accum for k, v in stat_sums.items()}, step_tokens)


def _clip(params: list[Any], max_norm: float) -> Any:
    """:func:`clip_grads` without reading the norm back: the norm as a tensor (0-d), None without grads."""
    import torch

    grads = [p for p in params if p.grad is not None]
    if not grads:
        return None
    norm = torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm > 0 else float("inf"))
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # DTensor under FSDP2


def _read(values: list[Any]) -> list[float]:
    """Scalars (0-d tensors on any device, floats, None = 0.0) as host floats, with one device-to-host copy."""
    import torch

    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if not tensors:
        return [0.0 if v is None else float(v) for v in values]
    dev = tensors[0].device
    read = iter(torch.stack([t.detach().to(dev, torch.float64) for t in tensors]).cpu().tolist())
    return [next(read) if isinstance(v, torch.Tensor) else 0.0 if v is None else float(v) for v in values]


def _updates(batches, fwd_model, loss_fn, optimizer, params, cfg, device, done, last_ck) -> _Update | None:
    """One guarded optimizer update per batch of a :class:`StepBatch` (single process); None when there are
    none. The loss is checked before its backward pass, the gradient norm before the update."""
    if not batches:
        return None
    if cfg.grad_accum != 1:
        raise ValueError("a StepBatch step takes one batch per update: grad_accum must be 1")
    loss_sum = norm_sum = 0.0
    stat_sums: dict[str, float] = {}
    n_tok = 0
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        with autocast_ctx(device, cfg.precision):
            loss, stats = loss_fn(fwd_model, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteError("loss", done, value, last_ck)
        loss.backward()
        grad_norm = clip_grads(params, cfg.grad_clip)
        if not math.isfinite(grad_norm):
            raise NonFiniteError("gradient norm", done, grad_norm, last_ck)
        optimizer.step()
        loss_sum += value
        norm_sum += grad_norm
        n_tok += _tokens(stats, batch)
        for k, v in (stats or {}).items():
            if k != "tokens":
                stat_sums[k] = stat_sums.get(k, 0.0) + float(v)
    n = len(batches)
    return _Update(loss_sum / n, norm_sum / n, {k: v / n for k, v in stat_sums.items()}, n_tok)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _close(bar: Any) -> None:
    if bar is not None:
        bar.close()


def full_model_state(raw: Any) -> dict[str, Any]:
    """The whole model's state dict on CPU: gathered from every rank under FSDP (a collective: every rank
    calls it), the plain ``state_dict()`` otherwise."""
    return _full_model_state(raw)


def _full_model_state(raw: Any) -> dict[str, Any]:
    if _is_fsdp(raw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(raw, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return raw.state_dict()


def _full_optim_state(raw: Any, optimizer: Any) -> dict[str, Any]:
    if _is_fsdp(raw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            raw, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return optimizer.state_dict()


def _load_model_state(raw: Any, sd: dict[str, Any], device: Any) -> None:
    if _is_fsdp(raw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(raw, sd, options=StateDictOptions(full_state_dict=True))
        return
    raw.load_state_dict(sd, strict=True)


def _load_optim_state(raw: Any, optimizer: Any, sd: dict[str, Any]) -> None:
    if _is_fsdp(raw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(raw, optimizer, sd, options=StateDictOptions(full_state_dict=True))
        return
    optimizer.load_state_dict(sd)


def _is_fsdp(raw: Any) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return isinstance(raw, FSDPModule)
