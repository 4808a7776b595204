"""Which config fields of each training kind reach its ops parameters (``assets.posttrain.params``): the
fields of the same name, no more, no fewer, so a new config or ops field never changes a run silently."""

from __future__ import annotations

import pytest

from assets.registry import load_kinds

pytestmark = pytest.mark.unit

CKPT = {"ckpt_every", "keep_last"}
EXPECTED = {
    ("sft", "ops.posttrain.sft", "SFTParams"): {
        "steps", "lr", "batch_size", "max_len", "pack", "seq_len", "warmup_steps", "seed", "lora_r",
        "lora_alpha", *CKPT,
    },
    ("grpo", "ops.rl.grpo", "GRPOParams"): {
        "steps", "prompts_per_step", "group_size", "max_new_tokens", "temperature", "top_p", "lr",
        "warmup_steps", "beta", "clip_eps", "norm", "scale_rewards", "updates_per_batch", "seed", *CKPT,
    },
    ("ppo", "ops.rl.ppo", "PPOParams"): {
        "steps", "prompts_per_step", "max_new_tokens", "lr", "kl_coef", "clip_eps", "value_clip_eps",
        "vf_coef", "gamma", "lam", "epochs", "minibatch_size", "seed", *CKPT,
    },
    ("dpo", "ops.posttrain.dpo", "DPOParams"): {"steps", "lr", "beta", "label_smoothing", "batch_size", "seed", *CKPT},
    ("reward_model", "ops.posttrain.rm", "RMParams"): {"steps", "lr", "batch_size", "seed", *CKPT},
    ("distill", "ops.posttrain.sft", "SFTParams"): {"steps", "lr", "batch_size", "seed", *CKPT},
    ("rejection_sample", "ops.posttrain.rejection", "RejectionParams"): {
        "samples", "keep", "max_per_prompt", "max_response_tokens", "temperature", "seed",
    },
}


@pytest.mark.parametrize("key", sorted(EXPECTED), ids=lambda k: k[0])
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
    assert p.seed == 7
    assert {f: getattr(p, f) for f in fields if f != "seed"} == {f: getattr(cls(), f) for f in fields if f != "seed"}
