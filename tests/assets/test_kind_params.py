"""Which config fields of each training kind reach its ops parameters (``assets.posttrain.params``): the
fields of the same name, no more, no fewer, so a new config or ops field never changes a run silently; and
the ``optim`` block set on a stage of each training kind is what its run's ``TrainConfig`` holds."""

from __future__ import annotations

import pytest

from assets.registry import load_kinds

pytestmark = pytest.mark.unit

CKPT = {"ckpt_every", "keep_last"}
OPTIM = {"optim"}
EXPECTED = {
    ("sft", "ops.posttrain.sft", "SFTParams"): {
        "steps", "lr", "batch_size", "max_len", "pack", "seq_len", "warmup_steps", "seed", "lora_r",
        "lora_alpha", "precision", *CKPT, *OPTIM,
    },
    ("grpo", "ops.rl.grpo", "GRPOParams"): {
        "steps", "prompts_per_step", "group_size", "max_new_tokens", "temperature", "top_p", "lr",
        "warmup_steps", "beta", "clip_eps", "clip_eps_high", "norm", "scale_rewards", "updates_per_batch",
        "dynamic_sampling", "max_refill", "seed", *CKPT, *OPTIM,
    },
    ("ppo", "ops.rl.ppo", "PPOParams"): {
        "steps", "prompts_per_step", "max_new_tokens", "lr", "kl_coef", "clip_eps", "value_clip_eps",
        "vf_coef", "gamma", "lam", "epochs", "minibatch_size", "seed", "kl_target", "kl_horizon", "rm_weight",
        "rm_clip", "reward_whiten", "value_warmup_steps", *CKPT, *OPTIM,
    },
    ("dpo", "ops.posttrain.dpo", "DPOParams"): {
        "steps", "lr", "warmup_steps", "beta", "label_smoothing", "loss", "alpha", "batch_size", "seed", *CKPT,
        *OPTIM,
    },
    ("dpo", "ops.posttrain.onpolicy", "OnPolicyParams"): {
        "iterations", "samples", "prompts_per_iteration", "max_pairs_per_prompt", "max_new_tokens", "temperature",
        "held_out", "reference_update",
    },
    ("reward_model", "ops.posttrain.rm", "RMParams"): {"steps", "lr", "batch_size", "seed", *CKPT, *OPTIM},
    ("distill", "ops.posttrain.sft", "SFTParams"): {"steps", "lr", "batch_size", "seed", "precision", *CKPT, *OPTIM},
    ("rejection_sample", "ops.posttrain.rejection", "RejectionParams"): {
        "samples", "keep", "max_per_prompt", "max_response_tokens", "temperature", "seed",
    },
}


@pytest.mark.parametrize("key", sorted(EXPECTED), ids=lambda k: f"{k[0]}-{k[2]}")
def test_config_fields_reaching_ops_params(key):
    import dataclasses
    import importlib

    from assets.posttrain import params

    kind, module, cls_name = key
    cls = getattr(importlib.import_module(module), cls_name)
    config_cls = load_kinds()[kind].config
    fields = {f.name for f in dataclasses.fields(cls)} & set(config_cls.model_fields)
    assert fields == EXPECTED[key]
    # and a config's values arrive; the other parameters keep the ops defaults
    cfg = config_cls.model_construct(**{**{f: getattr(cls(), f) for f in fields}, "seed": 7})
    p = params(cls, cfg)
    assert getattr(p, "seed", 7) == 7
    assert {f: getattr(p, f) for f in fields if f != "seed"} == {f: getattr(cls(), f) for f in fields if f != "seed"}


# ---------------------------------------------------------------- the optim block reaches the TrainConfig used
SET = {"schedule": "wsd", "weight_decay": 0.1, "betas": [0.8, 0.99], "grad_clip": 0.5}
# each training kind's optimiser defaults: a partial block keeps the others
DEFAULTS = {
    "pretrain": {"schedule": "cosine", "weight_decay": 0.1},
    "sft": {"schedule": "cosine", "weight_decay": 0.0},
    "distill": {"schedule": "cosine", "weight_decay": 0.0},
    "reward_model": {"schedule": "cosine", "weight_decay": 0.0},
    "dpo": {"schedule": "cosine", "weight_decay": 0.0},
    "grpo": {"schedule": "constant", "weight_decay": 0.0},
    "ppo": {"schedule": "constant", "weight_decay": 0.0},
}
TRAINING_KINDS = sorted(DEFAULTS)


class _Stop(Exception):
    pass


@pytest.fixture
def captured(monkeypatch):
    """The TrainConfig a run builds its optimizer from; the run stops there, before any update."""
    import ops.train.core as core

    seen = []

    def fake(params, cfg):
        seen.append(cfg)
        raise _Stop

    monkeypatch.setattr(core, "make_optimizer", fake)
    return seen


def test_every_training_kind_has_the_optim_block_with_its_defaults():
    from ops.train.optim import OptimConfig

    kinds = load_kinds()
    assert {n for n, k in kinds.items() if "optim" in k.config.model_fields} == set(TRAINING_KINDS)
    for name in TRAINING_KINDS:
        fld = kinds[name].config.model_fields["optim"]
        d = fld.default_factory()
        assert isinstance(d, OptimConfig)
        assert {k: getattr(d, k) for k in DEFAULTS[name]} == DEFAULTS[name], name
        assert d.grad_clip == 1.0 and d.betas == (0.9, 0.95) and d.min_lr_ratio == 0.1
        assert "schedule" in fld.description and "weight_decay" in fld.description
        # a partial block keeps the kind's own defaults for the fields it leaves out
        part = kinds[name].config.model_fields["optim"].annotation  # the declared base type
        assert part is OptimConfig
        partial = type(d).model_validate({"grad_clip": 2.0})
        assert {k: getattr(partial, k) for k in DEFAULTS[name]} == DEFAULTS[name], name


def _pairs_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "pairs.parquet"
    rows = [
        {"prompt": f"What is {i}+1?", "chosen": f"<think>{i}+1</think><answer>{i + 1}</answer>",
         "rejected": f"<think>no</think><answer>{i}</answer>"}
        for i in range(10)
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _run_posttrain_kind(kind: str, home, tmp_path, extra: dict | None = None) -> None:
    from pipelines.execute import run_kind
    from resources.store import StoredArtifact
    from tests import posttrain_helpers as H

    base = StoredArtifact("pretrain", "v-base", H.base_model_dir(), {"stage": "base", "produces": "model"})
    tasks, _ = run_kind("reasoning_tasks", {"train": 40, "eval": 4, "difficulties": [1]}, home, log=lambda s: None)
    cfg: dict = {"optim": SET, "steps": 2, **(extra or {})}
    ins: dict = {}
    if kind in ("sft", "distill"):
        ins = {"teacher" if kind == "distill" else "model": [base], "data": [tasks]}
        cfg |= {"teacher": "base"} if kind == "distill" else {"model": "base"}
        cfg |= {"data": ["tasks"], "eval_problems": 0}
        if kind == "distill":
            cfg["student"] = {"d_model": 32, "layers": 1, "heads": 2, "kv_heads": 1}
    elif kind in ("dpo", "reward_model"):
        ins = {"model": [base], "pairs": []}
        cfg |= {"model": "base", "pairs": [], "path": _pairs_file(tmp_path)}
    else:
        ins = {"model": [base], "prompts": [tasks]}
        cfg |= {"model": "base", "prompts": ["tasks"], "eval_problems": 0, "prompts_per_step": 2,
                "max_new_tokens": 4}
        if kind == "ppo":
            cfg |= {"rewards": ["accuracy"], "minibatch_size": 2}
    with pytest.raises(_Stop):
        run_kind(kind, cfg, home, inputs=ins, log=lambda s: None)


def _run_pretrain(tmp_path, extra: dict | None = None) -> None:
    from assets.pretrain import PretrainConfig, train_job
    from ops.tokenizer import save_tokenizer, train_bpe
    from ops.tokens import tokenize_documents
    from ops.train.lm import run_pretraining

    texts = [f"{i} plus {i} is {2 * i}." for i in range(200)]
    save_tokenizer(train_bpe(texts, vocab_size=300), tmp_path / "tok")
    tokenize_documents([str(i) for i in range(200)], texts, tmp_path / "tok" / "tokenizer.json", tmp_path / "tokens")
    c = PretrainConfig.model_validate({"data": "t", "tokenizer": "k", "optim": SET, **(extra or {})})
    job = {
        "tokens_dir": str(tmp_path / "tokens"), "tokenizer_dir": str(tmp_path / "tok"), "out_dir": str(tmp_path / "o"),
        "work_dir": str(tmp_path / "w"), "arch": {"arch": "qwen2", "d_model": 32, "layers": 1, "heads": 2},
        "seq_len": 16, "batch_size": 2, "eval_tokens": 64, "seed": 0, "device": "cpu", "fingerprint": {},
        "train": train_job(c, steps=4),
    }
    with pytest.raises(_Stop):
        run_pretraining(job, log=lambda s: None, progress=False)


@pytest.mark.parametrize("kind", TRAINING_KINDS)
def test_optim_block_reaches_the_train_config_of_every_training_kind(kind, captured, lmforge_home, tmp_path):
    if kind == "pretrain":
        _run_pretrain(tmp_path)
    else:
        _run_posttrain_kind(kind, lmforge_home, tmp_path)
    (cfg,) = captured
    assert (cfg.schedule, cfg.weight_decay, cfg.betas, cfg.grad_clip) == ("wsd", 0.1, (0.8, 0.99), 0.5)
    assert cfg.steps == (4 if kind == "pretrain" else 2)


@pytest.mark.parametrize("kind", ["pretrain", "sft", "distill"])
def test_precision_reaches_the_train_config(kind, captured, lmforge_home, tmp_path):
    if kind == "pretrain":
        _run_pretrain(tmp_path, {"precision": "bf16"})
    else:
        _run_posttrain_kind(kind, lmforge_home, tmp_path, {"precision": "bf16"})
    (cfg,) = captured
    assert cfg.precision == "bf16"
