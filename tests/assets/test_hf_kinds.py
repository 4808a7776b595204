"""Every model-consuming kind runs on an imported checkpoint with a foreign tokenizer (Llama 3's header format
and ``<|eot_id|>``, Qwen2.5's ChatML with a system turn; neither has lmforge's ``<think>``/``<answer>``
tokens): SFT (full and LoRA) and GRPO on both families, the other kinds on the Llama one. What they write
loads in plain transformers and generates in the model's own chat format."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from assets.registry import load_kinds
from pipelines.execute import run_kind
from testkit import hf_checkpoints as H

load_kinds()
QUIET = {"log": lambda s: None}
MARK = {"llama": "<|start_header_id|>assistant<|end_header_id|>", "qwen2": "<|im_start|>assistant",
        "qwen3": "<|im_start|>assistant", "mistral": "[/INST]"}
END = {"llama": "<|eot_id|>", "qwen2": "<|im_end|>", "qwen3": "<|im_end|>", "mistral": "</s>"}
FAMILIES = ["llama", "qwen2", "qwen3", "mistral"]


def _import(home, tmp_path, family):
    src = H.checkpoint(family, tmp_path / f"{family}-src")
    art, _ = run_kind("hf_model", {"path": str(src)}, home, stage="base", **QUIET)
    return art


def _tasks(home):
    art, _ = run_kind("reasoning_tasks", {"train": 40, "eval": 6, "difficulties": [1]}, home, stage="tasks", **QUIET)
    return art


def _generates_in_own_format(path, family) -> str:
    """Load ``path`` with plain transformers and generate a few tokens through its chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    text = tok.decode(out[0], skip_special_tokens=False)
    assert MARK[family] in text and out.shape[1] > ids["input_ids"].shape[1]
    eos = model.generation_config.eos_token_id
    assert tok.convert_tokens_to_ids(END[family]) in (eos if isinstance(eos, list) else [eos])
    return text


@pytest.mark.unit
@pytest.mark.parametrize("family", FAMILIES)
def test_training_examples_use_the_models_own_turn_end(tmp_path, family):
    from ops.posttrain.common import Example, encode_all

    tok = H.build_tokenizer(family)
    (ids, n_prompt), = encode_all(tok, [Example("1", "What is 2+3?", "<think>2+3=5</think><answer>5</answer>")], 256)[0]
    chat = [{"role": "user", "content": "What is 2+3?"}]
    assert ids[:n_prompt] == tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert ids[-1] == tok.convert_tokens_to_ids(END[family])
    full = tok.apply_chat_template(chat + [{"role": "assistant", "content": "<think>2+3=5</think><answer>5</answer>"}],
                                   tokenize=False)
    assert tok.decode(ids) == full.rstrip()


@pytest.mark.unit
def test_a_template_refusing_a_context_turn_names_the_example():
    from ops.generate import ChatTemplateError
    from ops.posttrain.common import Example, encode_all

    tok = H.build_tokenizer("mistral")
    tok.chat_template = (  # Mistral-Instruct's own check: roles alternate from a user turn, no system turn
        "{%- for m in messages %}{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{- raise_exception('Conversation roles must alternate') }}{%- endif %}"
        "{%- if m['role'] == 'user' %}{{- '[INST] ' + m['content'] + ' [/INST]' }}"
        "{%- else %}{{- m['content'] + eos_token }}{%- endif %}{%- endfor %}"
    )
    ok = Example("a", "2+3?", "5", context=(("user", "1+1?"), ("assistant", "2")))
    assert len(encode_all(tok, [ok], 256)[0]) == 1
    with pytest.raises(ChatTemplateError, match=r"example 'b': .*\(system, user\): Conversation roles must alt"):
        encode_all(tok, [ok, Example("b", "2+3?", "5", context=(("system", "Be brief."),))], 256)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_sft_full_lora_and_grpo_on_imported_checkpoint(lmforge_home, tmp_path, family):
    base, tasks = _import(lmforge_home, tmp_path, family), _tasks(lmforge_home)
    common = {"model": "base", "data": ["tasks"], "eval_problems": 2, "max_new_tokens": 8, "warmup_steps": 0}
    full, res = run_kind("sft", {**common, "steps": 3, "lr": 1e-3}, lmforge_home,
                         inputs={"model": [base], "data": [tasks]}, stage="sft", **QUIET)
    assert res.metrics["examples"] == 40
    _generates_in_own_format(full.path, family)
    lora, _ = run_kind("sft", {**common, "steps": 3, "lora_r": 4, "lr": 1e-2}, lmforge_home,
                       inputs={"model": [base], "data": [tasks]}, stage="lora", **QUIET)
    _generates_in_own_format(lora.path, family)
    rl, res = run_kind(
        "grpo",
        {"model": "sft", "prompts": ["tasks"], "steps": 2, "prompts_per_step": 2, "group_size": 2,
         "max_new_tokens": 8, "warmup_steps": 0, "eval_problems": 2, "eval_samples": 0},
        lmforge_home, inputs={"model": [full], "prompts": [tasks]}, stage="grpo", **QUIET,
    )
    rolls = pq.read_table(rl.path / "rollouts.parquet").to_pylist()
    assert rolls and all(MARK[family] not in r["completion"] for r in rolls)
    _generates_in_own_format(rl.path, family)


def _pairs_file(tmp_path):
    p = tmp_path / "pairs.parquet"
    qs = [f"What is {a}+{b}?" for a in range(1, 5) for b in range(1, 4)]
    good = [f"<think>{q[8:-1]}</think><answer>{eval(q[8:-1])}</answer>" for q in qs]  # noqa: S307 - digits only
    bad = [f"<think>{q[8:-1]}</think><answer>{eval(q[8:-1]) + 1}</answer>" for q in qs]  # noqa: S307
    pq.write_table(pa.table({"prompt": qs, "chosen": good, "rejected": bad}), p)
    return str(p)


@pytest.mark.slow
def test_every_other_model_kind_runs_on_an_imported_llama(lmforge_home, tmp_path):
    base, tasks = _import(lmforge_home, tmp_path, "llama"), _tasks(lmforge_home)
    pairs = _pairs_file(tmp_path)
    m, t = {"model": [base]}, {"prompts": [tasks]}
    rm, res = run_kind("reward_model", {"model": "base", "pairs": [], "path": pairs, "steps": 2, "batch_size": 4}, lmforge_home,
                       inputs=m, stage="rm", **QUIET)
    assert res.metrics["held_out_pairs"] > 0
    dpo, _ = run_kind("dpo", {"model": "base", "pairs": [], "path": pairs, "steps": 2, "batch_size": 4, "eval_problems": 2},
                      lmforge_home, inputs=m, stage="dpo", **QUIET)
    _generates_in_own_format(dpo.path, "llama")
    ppo, _ = run_kind(
        "ppo",
        {"model": "base", "prompts": ["tasks"], "reward_model": "rm", "steps": 1, "prompts_per_step": 2,
         "minibatch_size": 2, "epochs": 1, "max_new_tokens": 6, "eval_problems": 2},
        lmforge_home, inputs={**m, **t, "reward_model": [rm]}, stage="ppo", **QUIET,
    )
    _generates_in_own_format(ppo.path, "llama")
    rs, _ = run_kind("rejection_sample", {"model": "base", "prompts": ["tasks"], "samples": 2, "max_prompts": 4,
                                          "max_response_tokens": 8, "keep": "best_of_k", "reward_model": "rm"},
                     lmforge_home, inputs={**m, **t, "reward_model": [rm]}, stage="rs", **QUIET)
    assert pq.read_table(rs.path / "rollouts.parquet").num_rows == 8
    student, _ = run_kind(
        "distill",
        {"teacher": "base", "data": ["tasks"], "student": {"d_model": 32, "layers": 1, "heads": 2, "kv_heads": 1},
         "steps": 2, "batch_size": 4, "eval_problems": 2, "max_new_tokens": 6},
        lmforge_home, inputs={"teacher": [base], "data": [tasks]}, stage="student", **QUIET,
    )
    _generates_in_own_format(student.path, "llama")
    merged, _ = run_kind("merge", {"models": ["base", "dpo"], "eval_problems": 2}, lmforge_home,
                         inputs={"models": [base, dpo]}, stage="merged", **QUIET)
    _generates_in_own_format(merged.path, "llama")
    ev, res = run_kind(
        "evaluate",
        {"models": ["base"], "tasks": ["tasks"], "samples": 2, "max_items": 4, "max_think_tokens": 6,
         "max_answer_tokens": 4},
        lmforge_home, inputs={"models": [base], "tasks": [tasks]}, partition="base", stage="eval", **QUIET,
    )
    recs = pq.read_table(ev.path / "records.parquet").to_pylist()
    assert len(recs) == 4 * 3 and all(r["prompt"].rstrip().endswith(MARK["llama"]) for r in recs)
    report, _ = run_kind("report", {"from": ["eval"]}, lmforge_home, inputs={"from_": [ev]}, stage="report", **QUIET)
    md = (report.path / "report.md").read_text()
    assert f"imported from {tmp_path / 'llama-src'}" in md and "LlamaForCausalLM" in md


@pytest.mark.unit
def test_budget_forcing_needs_think_tokens_which_the_import_can_add(lmforge_home, tmp_path):
    from assets.hf_model import THINK_ANSWER

    src = H.checkpoint("qwen2", tmp_path / "src")
    plain, _ = run_kind("hf_model", {"path": str(src)}, lmforge_home, stage="base", **QUIET)
    tasks = _tasks(lmforge_home)
    cfg = {"models": ["base"], "tasks": ["tasks"], "samples": 0, "max_items": 3, "budgets": [2],
           "max_think_tokens": 4, "max_answer_tokens": 3}
    with pytest.raises(ValueError, match=r"stage 'eval', field 'budgets': model 'base' has no <think>"):
        run_kind("evaluate", cfg, lmforge_home, inputs={"models": [plain], "tasks": [tasks]}, partition="base",
                 stage="eval", **QUIET)
    assert not (lmforge_home / "artifacts" / "evaluate").is_dir() or not [
        p for p in (lmforge_home / "artifacts" / "evaluate").iterdir() if not p.name.startswith(".")
    ]
    tagged, _ = run_kind("hf_model", {"path": str(src), "special_tokens": THINK_ANSWER}, lmforge_home,
                         stage="base", **QUIET)
    ev, res = run_kind("evaluate", cfg, lmforge_home, inputs={"models": [tagged], "tasks": [tasks]},
                       partition="base", stage="eval", **QUIET)
    recs = pq.read_table(ev.path / "records.parquet").to_pylist()
    assert {r["mode"] for r in recs} == {"greedy", "budget"}
    assert all(r["thinking_tokens"] <= 2 for r in recs if r["mode"] == "budget")
    assert all(r["completion"].startswith("<think>") for r in recs)


@pytest.mark.unit
def test_bfloat16_checkpoint_trains_in_float32(lmforge_home, tmp_path):
    """A checkpoint stored in bfloat16 (as released instruct models are) is trained on float32 weights: an
    update of lr 1e-5 is far below bfloat16's rounding step at these weights and would vanish."""
    import torch
    from transformers import AutoModelForCausalLM

    from ops.model import load_model

    tok = H.build_tokenizer("qwen2")
    src = tmp_path / "bf16"
    H.build_model("qwen2", tok).to(torch.bfloat16).save_pretrained(src)
    tok.save_pretrained(src)
    base, _ = run_kind("hf_model", {"path": str(src)}, lmforge_home, stage="base", **QUIET)
    assert (base.path / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert next(load_model(base.path).parameters()).dtype == torch.float32
    sft, _ = run_kind("sft", {"model": "base", "data": ["tasks"], "steps": 2, "lr": 1e-5, "warmup_steps": 0,
                              "eval_problems": 0}, lmforge_home,
                      inputs={"model": [base], "data": [_tasks(lmforge_home)]}, stage="sft", **QUIET)
    a = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).state_dict()
    b = AutoModelForCausalLM.from_pretrained(sft.path, dtype=torch.float32).state_dict()
    k = "model.layers.0.mlp.up_proj.weight"
    assert 0 < (a[k] - b[k]).abs().max() < 1e-3
