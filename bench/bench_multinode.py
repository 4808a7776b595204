"""Benchmark: pretraining tokens/s with two torchrun agents (2 nodes x 1 rank, c10d rendezvous on
loopback) against one agent with the same 2 ranks, same model, data and run.

Key design choice: both layouts run the real ``pretrain`` stage (``launcher: torchrun``) on copies of one
home, so the figure includes what multi-node adds on one host (a second agent, the c10d store, TCP gloo
between process groups) and nothing else; rounds alternate the layouts to spread machine noise, and the best
round of each is reported (the stage's own median tokens/s over its logged steps).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ROUNDS = 2
CFG = {
    "data": "tokens",
    "tokenizer": "tokenizer",
    "model": {"d_model": 128, "layers": 2, "heads": 4, "kv_heads": 2},
    "seq_len": 128,
    "batch_size": 16,
    "tokens": 40 * 16 * 128,
    "warmup_steps": 4,
    "eval_every": 0,
    "eval_tokens": 1024,
    "log_every": 4,
    "ckpt_every": 0,
    "sample_tokens": 4,
    "prompts": ["The "],
    "launcher": "torchrun",
}
LAYOUTS = {
    "single_node_2x1": {"nproc_per_node": 2},
    "two_nodes_1x2": {"nproc_per_node": 1, "nnodes": 2, "local_nodes": True},
}


def _base_home(root: Path) -> Path:
    from pipelines.execute import run_kind
    from tests.ops.test_tokenizer import pydoc_paragraphs, store_documents

    home = root / "base"
    docs = store_documents(home, pydoc_paragraphs())
    tok, _ = run_kind(
        "train_tokenizer",
        {"from": "corpus", "vocab_size": 2048},
        home,
        inputs={"from_": [docs]},
        stage="tokenizer",
    )
    run_kind(
        "tokenize",
        {"from": "corpus", "tokenizer": "tokenizer", "val_frac": 0.05},
        home,
        inputs={"from_": [docs], "tokenizer": [tok]},
        stage="tokens",
    )
    return home


def _pretrain(home: Path, layout: dict) -> dict:
    from pipelines.execute import run_kind
    from resources.store import ArtifactStore

    arts = {a.kind: a for a in ArtifactStore(home).all()}
    _, res = run_kind(
        "pretrain",
        {**CFG, **layout},
        home,
        inputs={"data": [arts["tokenize"]], "tokenizer": [arts["train_tokenizer"]]},
        stage="base",
        log=lambda s: None,
    )
    return res.metrics


def run(out_dir: Path | str) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rounds: dict[str, list[float]] = {k: [] for k in LAYOUTS}
    losses: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-multinode-") as tmp:
        base = _base_home(Path(tmp))
        for r in range(ROUNDS):
            for name, layout in LAYOUTS.items():
                home = Path(tmp) / f"{name}-{r}"
                shutil.copytree(base, home)
                m = _pretrain(home, layout)
                rounds[name].append(float(m["tokens_per_s"]))
                losses[name] = float(m["final_train_loss"])
                shutil.rmtree(home)
    single, multi = max(rounds["single_node_2x1"]), max(rounds["two_nodes_1x2"])
    res = {
        "model": CFG["model"],
        "seq_len": CFG["seq_len"],
        "batch": CFG["batch_size"],
        "steps": CFG["tokens"] // (CFG["batch_size"] * CFG["seq_len"]),
        "ranks": 2,
        "single_node_tokens_per_s": single,
        "two_nodes_tokens_per_s": multi,
        "rounds": rounds,
        "ratio": multi / single,
        "final_train_loss": losses,
    }
    (out / "bench_multinode.json").write_text(json.dumps(res, indent=2))
    (out / "bench_multinode.md").write_text(
        "# Pretraining: 2 torchrun agents x 1 rank vs 1 agent x 2 ranks (CPU, gloo, loopback)\n\n"
        f"| layout | tokens/s (best of {ROUNDS}) |\n|---|---|\n| 1 node x 2 ranks | {single:,.0f} |\n"
        f"| 2 nodes x 1 rank | {multi:,.0f} |\n\nratio {res['ratio']:.3f}\n"
    )
    return res


if __name__ == "__main__":
    r = run(sys.argv[1] if len(sys.argv) > 1 else ROOT / "bench" / "results")
    print(
        json.dumps(
            {k: r[k] for k in ("single_node_tokens_per_s", "two_nodes_tokens_per_s", "ratio")}, indent=2
        )
    )
