"""Acceptance of pretraining on the tiny default itself: the `base` stage of pipelines/tiny_r1.yaml (and every
stage it needs: crawl of the local docs site, extract, filter, dedupe, decontaminate, tokenizer, shards),
materialized through Dagster by the CLI exactly as `make demo` does. Validation loss must end at least 20%
below the unigram entropy of the validation tokens, and the checkpoint must load and generate in the corpus's
style."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.spec import load_spec
from resources.store import ArtifactStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_tiny_default_base_beats_unigram_and_loads(tmp_path: Path):
    home = tmp_path / "home"
    assert main(["--home", str(home), "materialize", "tiny_r1", "--stages", "+base"]) == 0
    spec = load_spec("tiny_r1")
    art = ArtifactStore(home).get("pretrain", spec.stages["base"].version)
    m = art.manifest["metrics"]
    assert m["val_loss_vs_unigram"] <= 0.8, m  # >= 20% below unigram entropy
    assert {c["name"]: c["passed"] for c in art.manifest["checks"]} == {
        "finite_loss": True,
        "reloads": True,
        "beats_unigram": True,
    }
    assert m["generation_corpus_word_frac"] >= 0.7  # generations use the corpus's words
    gens = art.metadata()["generations"]["value"]
    assert len(gens) == len(spec.stages["base"].config.prompts) and all(g["completion"].strip() for g in gens)
    for f in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "curve.parquet",
        "loss_curve.png",
        "training_state/model.safetensors",
        "training_state/optimizer.pt",
    ):
        assert (art.path / f).is_file(), f
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(art.path, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(art.path, local_files_only=True)
    assert tok.chat_template and model.config.vocab_size == len(tok) == 2048
    ids = tok("The ", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids.shape[1]
