"""The kinds that take a model, run on a MiniMax hybrid (lightning attention + a softmax layer every k layers +
MoE): ``sft`` (full and LoRA, the lightning projections adapted too), ``evaluate`` with budget forcing and a
Wait extension, and ``grpo``; ``sft`` with ``pack: true`` is refused before training, naming the stage and the
field, because the lightning layers ignore the block-diagonal mask that keeps packed examples apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.execute import run_kind
from tests.assets.eval_fixtures import model_artifact, tasks_artifact

pytestmark = pytest.mark.slow

MINIMAX = {
    "arch": "minimax",
    "d_model": 32,
    "layers": 2,
    "heads": 4,
    "kv_heads": 2,
    "full_attention_every": 2,
    "experts": 4,
    "top_k": 2,
    "block_size": 16,
}


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def mm_src(tmp_path_factory) -> Path:
    from ops.eval.tiny import cached_tiny_chat_model

    return cached_tiny_chat_model(tmp_path_factory.getbasetemp() / "eval-models", train_steps=30, arch=MINIMAX)


def test_sft_evaluate_and_grpo_run_on_a_minimax_model(lmforge_home, mm_src):
    from transformers import AutoModelForCausalLM

    tasks = tasks_artifact(lmforge_home)
    base = model_artifact(lmforge_home, mm_src, "base", kind="pretrain")
    sft, res = run_kind(
        "sft",
        {"model": "base", "data": ["tasks"], "steps": 12, "lr": 3e-3, "batch_size": 16, "eval_problems": 4,
         "max_new_tokens": 12},
        lmforge_home,
        inputs={"model": [base], "data": [tasks]},
        stage="sft",
        log=_quiet,
    )
    assert res.metrics["final_loss"] == res.metrics["final_loss"]
    assert type(AutoModelForCausalLM.from_pretrained(str(sft.path))).__name__ == "MiniMaxForCausalLM"

    ev, res = run_kind(
        "evaluate",
        {"models": ["sft"], "tasks": ["tasks"], "max_items": 6, "samples": 2, "budgets": [0, 3],
         "wait_extensions": [1], "max_think_tokens": 12, "max_answer_tokens": 6},
        lmforge_home,
        inputs={"models": [sft], "tasks": [tasks]},
        partition="sft",
        log=_quiet,
    )
    import pyarrow.parquet as pq

    recs = pq.read_table(ev.path / "records.parquet").to_pylist()
    assert len(recs) == 6 * (1 + 2 + 2 + 1)  # greedy, samples, budgets, wait
    assert all(r["thinking_tokens"] <= r["budget"] for r in recs if r["budget"] is not None)

    rl, res = run_kind(
        "grpo",
        {"model": "sft", "prompts": ["tasks"], "steps": 2, "prompts_per_step": 4, "group_size": 4,
         "max_new_tokens": 12, "eval_problems": 4, "warmup_steps": 0},
        lmforge_home,
        inputs={"model": [sft], "prompts": [tasks]},
        stage="rl",
        log=_quiet,
    )
    assert type(AutoModelForCausalLM.from_pretrained(str(rl.path))).__name__ == "MiniMaxForCausalLM"


def test_lora_sft_adapts_the_lightning_layers_too(lmforge_home, mm_src):
    import json

    tasks = tasks_artifact(lmforge_home)
    base = model_artifact(lmforge_home, mm_src, "base", kind="pretrain")
    art, _ = run_kind(
        "sft",
        {"model": "base", "data": ["tasks"], "steps": 3, "lora_r": 4, "eval_problems": 0},
        lmforge_home,
        inputs={"model": [base], "data": [tasks]},
        stage="lora",
        log=_quiet,
    )
    targets = set(json.loads((art.path / "adapter" / "adapter_config.json").read_text())["target_modules"])
    assert {"qkv_proj", "out_proj", "output_gate", "q_proj", "o_proj"} <= targets


def test_packed_sft_on_minimax_is_refused_before_training(lmforge_home, mm_src):
    from assets.posttrain import PostTrainError

    tasks = tasks_artifact(lmforge_home)
    base = model_artifact(lmforge_home, mm_src, "base", kind="pretrain")
    with pytest.raises(PostTrainError) as ei:
        run_kind(
            "sft",
            {"model": "base", "data": ["tasks"], "steps": 3, "pack": True, "seq_len": 256},
            lmforge_home,
            inputs={"model": [base], "data": [tasks]},
            stage="packed",
            log=_quiet,
        )
    msg = str(ei.value)
    assert "stage 'packed', field 'pack'" in msg and "'minimax'" in msg and "linear-attention" in msg
    assert not list((lmforge_home / "artifacts" / "sft").glob("*/manifest.json"))
