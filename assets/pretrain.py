"""Stage kind ``pretrain``: token shards + tokenizer -> a pretrained decoder (``model`` artifact).

Key design choice: the stage only plans, launches and reports. The compute planner (``ops/planner.py``)
sizes the run and estimates FLOPs/time before anything trains; the job (a JSON-able dict) is run either
in-process or by ``torchrun`` through a launcher (``resources/launchers.py``: ``run_torchrun_job``, Dagster
Pipes inside Dagster), and in both cases every rank calls the same ``ops.train.lm.run_pretraining``; the
figures of the finished run come from ``ops/train/summary.py``. Checkpoints live in
``run.work`` (survive crashes, resumed on re-materialization, refused under a different data/tokenizer/code
fingerprint); the final ``save_pretrained`` directory and a copy of the last training state go into
``run.out``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ops.train.optim import OptimConfig, Precision, PretrainOptimConfig, optim_field, precision_field

from .architecture import arch_problems
from .registry import (
    CheckOutcome,
    CheckSpec,
    Image,
    Json,
    Markdown,
    StageConfig,
    StageKind,
    StageResult,
    StageRun,
    Table,
    ref,
    register,
    run_option,
)


class RopeScaling(StageConfig):
    type: Literal["yarn", "linear", "dynamic"] = Field("yarn", description="RoPE scaling method")
    factor: float = Field(..., gt=1.0, description="context extension factor")
    original_max_position_embeddings: int = Field(
        ..., ge=16, description="context length RoPE was trained at"
    )


class ModelSpec(StageConfig):
    """Decoder architecture; any size left out is chosen by the compute planner from the budget."""

    arch: Literal["qwen2", "llama", "qwen2_moe", "deepseek_v3", "minimax"] = Field(
        "qwen2",
        description="transformers class: Qwen2 (dense, QKV bias), Llama (dense, no bias), Qwen2-MoE, "
        "DeepSeek-V3 (multi-head latent attention + MoE), MiniMax (lightning linear attention, a softmax "
        "layer every k layers, MoE)",
    )
    d_model: int | None = Field(
        None, ge=16, description="hidden size; omit (with layers) to let the planner choose"
    )
    layers: int | None = Field(None, ge=1, description="number of decoder layers")
    heads: int | None = Field(None, ge=1, description="attention heads (default d_model/64)")
    kv_heads: int | None = Field(None, ge=1, description="key/value heads for grouped-query attention")
    ffn: int | None = Field(None, ge=8, description="SwiGLU intermediate size (default ~8/3 d_model)")
    max_seq_len: int | None = Field(None, ge=16, description="max positions (default: the training seq_len)")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base frequency")
    rope_scaling: RopeScaling | None = Field(None, description="YaRN/linear/dynamic RoPE scaling")
    qkv_bias: bool | None = Field(None, description="bias on Q/K/V projections (Qwen2: always on)")
    tie_embeddings: bool = Field(True, description="share input embedding and LM head")
    dropout: float = Field(0.0, ge=0, lt=1, description="attention dropout")
    init_std: float = Field(0.02, gt=0, description="initializer standard deviation")
    experts: int | None = Field(None, ge=2, description="MoE: routed experts")
    top_k: int | None = Field(None, ge=1, description="MoE: experts per token")
    expert_ffn: int | None = Field(None, ge=8, description="MoE: intermediate size of each routed expert")
    shared_expert_ffn: int | None = Field(
        None, ge=8, description="Qwen2-MoE: shared expert intermediate size"
    )
    shared_experts: int | None = Field(None, ge=0, description="DeepSeek-V3: number of shared experts")
    dense_layers: int | None = Field(None, ge=0, description="DeepSeek-V3: first k layers use a dense MLP")
    router_aux_loss_coef: float | None = Field(
        None, ge=0, description="Qwen2-MoE: load-balancing loss weight"
    )
    kv_lora_rank: int | None = Field(None, ge=4, description="MLA: compressed KV rank")
    q_lora_rank: int | None = Field(None, ge=4, description="MLA: compressed Q rank (None: full-rank Q)")
    qk_rope_head_dim: int | None = Field(None, ge=2, description="MLA: rotary part of each Q/K head")
    qk_nope_head_dim: int | None = Field(None, ge=2, description="MLA: non-rotary part of each Q/K head")
    v_head_dim: int | None = Field(None, ge=2, description="MLA: value head size")
    full_attention_every: int | None = Field(
        None,
        description="MiniMax: one softmax-attention layer, then k-1 lightning-attention layers (MiniMax-01: 8)",
    )
    layer_pattern: list[str] | None = Field(
        None,
        description="MiniMax: one period of full_attention / linear_attention layers (first: full_attention), "
        "repeated over the layers",
    )
    block_size: int | None = Field(
        None, ge=1, description="MiniMax: lightning attention block length (default 256)"
    )

    def arch_dict(self, seq_len: int) -> dict[str, Any]:
        d = {k: v for k, v in self.model_dump(mode="json").items() if v is not None}
        if self.rope_scaling is not None:
            d["rope_scaling"] = self.rope_scaling.model_dump(mode="json")
        d.setdefault(
            "max_seq_len",
            max(seq_len, (self.rope_scaling.original_max_position_embeddings if self.rope_scaling else 0)),
        )
        return d


class PretrainConfig(StageConfig):
    data: str = ref("tokens", description="tokenize stage whose train/val shards are trained on")
    tokenizer: str = ref(
        "tokenizer",
        description="train_tokenizer stage; the vocabulary size comes from it and it is saved with the model",
    )
    model: ModelSpec = Field(default_factory=ModelSpec, description="architecture (sizes optional: planner)")
    tokens: float | None = Field(None, gt=0, description="training tokens (rounded to whole steps)")
    budget_flops: float | None = Field(
        None, gt=0, description="compute budget; sizes the model and/or tokens"
    )
    tokens_per_param: float = Field(20.0, gt=0, description="Chinchilla ratio used when sizing from a budget")
    seq_len: int = Field(256, ge=8, description="tokens per training sequence")
    batch_size: int = Field(16, ge=1, description="sequences per optimizer step, over all ranks")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step (per rank)")
    lr: float = Field(3e-3, gt=0, description="peak learning rate (AdamW)")
    warmup_steps: int = Field(20, ge=0, description="linear warmup steps")
    optim: OptimConfig = optim_field(PretrainOptimConfig)
    seed: int = Field(0, description="seed of initialisation and of the batch sampler")
    eval_every: int = Field(50, ge=0, description="validation every N steps (and at the end)")
    eval_tokens: int = Field(32768, ge=16, description="validation tokens evaluated each time")
    log_every: int = Field(10, ge=1, description="log a curve record every N steps")
    ckpt_every: int = run_option(100, ge=0, description="checkpoint every N steps (and at the end)")
    keep_last: int = run_option(2, ge=1, description="checkpoints kept in the work directory")
    compile: bool = Field(False, description="torch.compile the model")
    activation_checkpointing: bool = Field(False, description="recompute activations in backward")
    precision: Precision = precision_field()
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to train")
    threads: int | None = Field(None, ge=1, description="torch CPU threads in-process (None: torch default)")
    launcher: Literal["inprocess", "torchrun"] = Field(
        "inprocess", description="run here, or out of process with torchrun (Pipes in Dagster)"
    )
    nproc_per_node: int = Field(1, ge=1, description="torchrun: ranks on each node")
    nnodes: int = Field(
        1, ge=1, description="torchrun: nodes; > 1 rendezvous over c10d at rdzv_endpoint, one agent per node"
    )
    rdzv_endpoint: str | None = Field(
        None,
        description="torchrun: host:port of the c10d rendezvous for nnodes > 1 (with local_nodes: default "
        "127.0.0.1 and a free port)",
    )
    node_rank: int = run_option(
        0, ge=0, description="torchrun, nnodes > 1 without local_nodes: the node whose agent this run starts"
    )
    local_nodes: bool = run_option(
        False,
        description="torchrun, nnodes > 1: start every node's agent on this machine (one host, loopback)",
    )
    rdzv_timeout: int = run_option(
        300,
        ge=1,
        description="torchrun, nnodes > 1: seconds an agent waits for all nodes to join the rendezvous",
    )
    fsdp: bool = Field(
        False,
        description="torchrun with > 1 rank: shard with FSDP2 (fully_shard) instead of DDP (CPU/gloo or CUDA)",
    )
    prompts: list[str] = Field(
        default_factory=lambda: ["The ", "In Python, ", "A function ", "The following "],
        description="fixed prompts for the sample generations shown in metadata",
    )
    sample_tokens: int = Field(40, ge=1, description="new tokens per sample generation")
    max_loss_vs_unigram: float = Field(
        0.8, gt=0, description="check: final val loss / unigram entropy of val tokens must be at most this"
    )

    @model_validator(mode="before")
    @classmethod
    def _top_level_optim_fields(cls, data: Any) -> Any:
        """``schedule``, ``min_lr_ratio``, ``weight_decay``, ``betas`` and ``grad_clip`` written at the top
        level of a pretrain stage (where this kind has always accepted them) are read into ``optim``."""
        if not isinstance(data, dict) or not set(data) & set(_TOP_LEVEL_OPTIM):
            return data
        data = dict(data)
        optim = data.get("optim") or {}
        if not isinstance(optim, dict):
            return data  # the optim field reports its own type error
        optim = dict(optim)
        for k in _TOP_LEVEL_OPTIM:
            if k in data:
                if k in optim:
                    raise ValueError(f"{k} is given both at the top level and in optim; give it once, in optim")
                optim[k] = data.pop(k)
        data["optim"] = optim
        return data


_TOP_LEVEL_OPTIM = ("schedule", "min_lr_ratio", "weight_decay", "betas", "grad_clip")


def _validate(cfg: PretrainConfig, kinds: dict[str, str]) -> list[tuple[str, str]]:
    m = cfg.model
    errs = arch_problems(m, "model")
    if (m.d_model is None) != (m.layers is None):
        errs.append(("model.d_model", "give both d_model and layers, or neither (planner chooses)"))
    if m.d_model is None and cfg.tokens is None and cfg.budget_flops is None:
        errs.append(
            ("model.d_model", "no model size and no tokens/budget_flops for the planner to size from")
        )
    ranks = cfg.nproc_per_node * cfg.nnodes if cfg.launcher == "torchrun" else 1
    if cfg.batch_size % ranks:
        errs.append(("batch_size", f"{cfg.batch_size} is not divisible by the {ranks} ranks"))
    if cfg.nnodes > 1 and not cfg.rdzv_endpoint and not cfg.local_nodes:
        errs.append(("rdzv_endpoint", "required when nnodes > 1 (unless local_nodes)"))
    if cfg.node_rank >= cfg.nnodes:
        errs.append(("node_rank", f"{cfg.node_rank} is not below nnodes {cfg.nnodes}"))
    if cfg.local_nodes and cfg.node_rank:
        errs.append(("node_rank", "local_nodes starts every node's agent; leave node_rank at 0"))
    if cfg.launcher == "inprocess" and (cfg.nproc_per_node > 1 or cfg.nnodes > 1):
        errs.append(("launcher", "nproc_per_node/nnodes > 1 need launcher: torchrun"))
    return errs


def train_job(cfg: PretrainConfig, steps: int) -> dict[str, Any]:
    """The ``train`` part of the job (``TrainConfig`` fields as JSON) for ``steps`` planned updates; the warm-up
    is capped below the step count so a short run still reaches its peak LR."""
    from dataclasses import asdict

    from ops.train.optim import train_config

    t = asdict(train_config(cfg, steps=steps, warmup_steps=min(cfg.warmup_steps, max(steps - 1, 0))))
    return {**t, "betas": list(t["betas"])}


def _inputs(run: StageRun) -> tuple[Any, Any, Any, Any, Any]:
    """``(data, tokenizer artifact, tokenizer, train stream, val stream)``, after checking that the shards
    and the tokenizer belong together and that the shards are long enough; errors name stage and field."""
    from ops.tokenizer import load_tokenizer
    from ops.tokens import TokenStream

    cfg: PretrainConfig = run.config
    data, tok_art = run.input("data"), run.input("tokenizer")
    made_with = [a.get("version") for a in (data.manifest.get("inputs", {}).get("tokenizer") or [])]
    if made_with and tok_art.version not in made_with:
        raise ValueError(
            f"stage {run.stage!r}, field 'data': the token shards of {data.stage!r} were made with "
            f"tokenizer version {made_with[0]}, but field 'tokenizer' names {tok_art.stage!r} "
            f"(version {tok_art.version}); point both at the same tokenizer"
        )
    if not (data.path / "meta.json").is_file():
        raise ValueError(
            f"stage {run.stage!r}, field 'data': {data.path} is not a tokens artifact (no meta.json)"
        )
    tokenizer = load_tokenizer(tok_art.path)
    vocab = len(tokenizer)
    train_stream, val_stream = TokenStream(data.path, "train"), TokenStream(data.path, "val")
    if train_stream.vocab_size != vocab:
        raise ValueError(
            f"stage {run.stage!r}: shards of {data.stage!r} have vocabulary {train_stream.vocab_size}, "
            f"tokenizer {tok_art.stage!r} has {vocab}"
        )
    if len(train_stream) < cfg.seq_len + 1:
        raise ValueError(
            f"stage {run.stage!r}, field 'seq_len': {cfg.seq_len} exceeds the {len(train_stream)} "
            f"training tokens of {data.stage!r}"
        )
    return data, tok_art, tokenizer, train_stream, val_stream


def _plan(run: StageRun, vocab: int) -> tuple[Any, bool, float | None]:
    """``(plan, use_cuda, peak FLOP/s)``: the device the config asks for and the planner's sizing of the run
    (model size, steps, FLOPs and time estimates) on it."""
    import torch

    from ops import planner

    cfg: PretrainConfig = run.config
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"stage {run.stage!r}, field 'device': cuda requested but no CUDA device is available"
        )
    dev_name = torch.cuda.get_device_name(0) if use_cuda else "cpu"
    peak = planner.peak_flops_for(dev_name) if use_cuda else None
    ranks = cfg.nproc_per_node * cfg.nnodes if cfg.launcher == "torchrun" else 1
    p = planner.plan(
        vocab_size=vocab,
        seq_len=cfg.seq_len,
        tokens_per_step=cfg.batch_size * cfg.grad_accum * cfg.seq_len,
        arch=cfg.model.arch_dict(cfg.seq_len),
        tokens=cfg.tokens,
        budget_flops=cfg.budget_flops,
        tokens_per_param=cfg.tokens_per_param,
        throughput=(peak * 0.3 * ranks) if peak else None,
    )
    run.log(f"plan: {p.rationale}")
    return p, use_cuda, peak


def _job(
    run: StageRun, p: Any, data: Any, tok_art: Any, use_cuda: bool, peak: float | None
) -> dict[str, Any]:
    """The JSON-able job every rank of ``ops.train.lm.run_pretraining`` runs: the plan, the config's
    training settings and the fingerprint a checkpoint must match to be resumed."""
    from ops.train.lm import resume_fingerprint

    cfg: PretrainConfig = run.config
    job = {
        "tokens_dir": str(data.path),
        "tokenizer_dir": str(tok_art.path),
        "out_dir": str(run.out),
        "work_dir": str(run.work),
        "arch": p.arch,
        "seq_len": cfg.seq_len,
        "batch_size": cfg.batch_size,
        "eval_tokens": cfg.eval_tokens,
        "eval_batch_size": 16,
        "prompts": cfg.prompts,
        "sample_tokens": cfg.sample_tokens,
        "seed": cfg.seed,
        "device": "cuda" if use_cuda else "cpu",
        "threads": cfg.threads,
        "flops_per_token": p.flops_per_token,
        "peak_flops": peak,
        "backend": "nccl" if use_cuda else "gloo",
        "train": train_job(cfg, p.steps),
    }
    job["fingerprint"] = {
        **resume_fingerprint(data.path, tok_art.path),
        "arch": p.arch,
        "seq_len": cfg.seq_len,
        "batch_size": cfg.batch_size,
        "eval_tokens": cfg.eval_tokens,
    }
    return job


def _report(
    run: StageRun, p: Any, result: dict[str, Any], tokenizer: Any, train: Any, val: Any
) -> StageResult:
    """Curve table and plot, metrics, the reload probe and the checks of a finished run."""
    from ops.tokens import unigram_entropy
    from ops.train.summary import (
        corpus_word_frac,
        losses_finite,
        plot_loss_curve,
        pretrain_metrics,
        reload_probe,
        write_curve_table,
    )

    cfg: PretrainConfig = run.config
    h_val = unigram_entropy(val.tokens) if len(val) else float("nan")
    n_params = int(result["params"])
    write_curve_table(result["curve"], run.out / "curve.parquet")
    plot_loss_curve(result, run.out / "loss_curve.png", f"{run.stage}: {n_params / 1e6:.2f}M params")
    word_frac = corpus_word_frac(result["generations"], train.tokens, tokenizer)
    reload_ok = reload_probe(run.out, train.tokens[: min(cfg.seq_len, 64)])
    metrics = pretrain_metrics(result, p, h_val, word_frac)
    val_loss, ratio = metrics["val_loss"], metrics["val_loss_vs_unigram"]
    tokens_done, flops_actual = metrics["tokens"], metrics["flops_actual"]
    checks = [
        CheckOutcome(
            "finite_loss", losses_finite(result), "every training loss and the final val loss are finite"
        ),
        CheckOutcome("reloads", reload_ok, "AutoModelForCausalLM.from_pretrained(artifact) loads and runs"),
        CheckOutcome(
            "beats_unigram",
            bool(ratio <= cfg.max_loss_vs_unigram),
            f"final val loss <= {cfg.max_loss_vs_unigram} x unigram entropy of val tokens",
            {"val_loss": val_loss, "unigram_entropy": h_val, "ratio": ratio},
        ),
    ]
    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len
    final = result.get("final_eval") or {}
    md = {
        "loss_curve": Image("loss_curve.png"),
        "plan": Markdown(
            f"**Plan**: {p.rationale}\n\n| | estimated | actual |\n|---|---|---|\n"
            f"| FLOPs | {p.flops:.3g} | {flops_actual:.3g} |\n"
            f"| time (s) | {p.est_seconds:.0f} | {result['train_wall_s']:.0f} |\n"
            f"| tokens | {p.tokens} | {tokens_done} |"
        ),
        "summary": Markdown(
            f"{p.arch.get('arch')} with {n_params:,} parameters ({p.active_params:,} active), {result['steps_done']} "
            f"steps x {tokens_per_step} tokens on {result['device_name']} x{result['world_size']}. Final val loss "
            f"**{val_loss:.4f}** nats/token ({final.get('val_bpb', float('nan')):.4f} bits/byte) vs unigram "
            f"entropy {h_val:.4f} (ratio {ratio:.3f})."
            + (f" Resumed from step {result['resumed_from']}." if result["resumed_from"] else "")
        ),
        "curve": Table(
            [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in result["curve"]]
        ),
        "generations": Table(result["generations"]),
        "loss_spikes": Table(result["spikes"]) if result["spikes"] else "none",
        "architecture": Json(p.arch),
    }
    return StageResult(metrics=metrics, metadata=md, checks=checks, flops=flops_actual, tokens=tokens_done)


def _run(run: StageRun) -> StageResult:
    cfg: PretrainConfig = run.config
    data, tok_art, tokenizer, train_stream, val_stream = _inputs(run)
    p, use_cuda, peak = _plan(run, len(tokenizer))
    job = _job(run, p, data, tok_art, use_cuda, peak)
    for stale in [run.work / "result.json", *run.work.glob("error-rank*.json"), *run.work.glob("rank*.json")]:
        stale.unlink(missing_ok=True)
    if cfg.launcher == "inprocess":
        from ops.train.lm import run_pretraining

        result = run_pretraining(job, log=run.log)
    else:
        from resources.launchers import make_launcher, run_torchrun_job

        result = run_torchrun_job(
            job,
            run.work,
            stage=run.stage,
            launcher=run.resources.get("launcher") or make_launcher(log=run.log),
            nproc_per_node=cfg.nproc_per_node,
            nnodes=cfg.nnodes,
            node_rank=cfg.node_rank,
            local_nodes=cfg.local_nodes,
            rdzv_endpoint=cfg.rdzv_endpoint,
            rdzv_timeout=cfg.rdzv_timeout,
            cuda=use_cuda,
            log=run.log,
        )
    return _report(run, p, result, tokenizer, train_stream, val_stream)


PRETRAIN = register(
    StageKind(
        name="pretrain",
        config=PretrainConfig,
        produces="model",
        run=_run,
        description="Pretrain a Qwen2/Llama/Qwen2-MoE/DeepSeek-V3/MiniMax decoder on token shards (in-process or "
        "torchrun)",
        checks=(
            CheckSpec("finite_loss", "training and validation losses are finite", blocking=True),
            CheckSpec("reloads", "the saved directory loads with from_pretrained and runs", blocking=True),
            CheckSpec(
                "beats_unigram", "val loss well below the unigram entropy of the val tokens", blocking=False
            ),
        ),
        pool="gpu",
        validate=_validate,
    )
)
