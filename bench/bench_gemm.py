"""fp32 linear layers through oneDNN (``ops.cpu_gemm``) against PyTorch's own ``nn.Linear`` (MKL), on the
default pipeline's decoder (d=128, 4 layers, 2048 tokens; a 64 x 64-token batch).

Two figures, each a ratio of the two sides' times measured alternately in the same process (best of ``ROUNDS``):
a training step (forward, backward, AdamW) and a no-grad forward of a sampling-sized batch (256 x 16 tokens).
The entry also says which backend ``LMFORGE_CPU_GEMM=auto`` picks on this CPU and its vendor, since the gain
is MKL's vendor dispatch: expect at most about 1 on Intel CPUs (where ``auto`` keeps MKL) and well above 1 on
AMD.
"""

from __future__ import annotations

import copy
from pathlib import Path

from bench import best_alternating

ARCH = {"arch": "qwen2", "d_model": 128, "layers": 4, "heads": 4, "kv_heads": 2, "max_seq_len": 64}
VOCAB = 2048
ROUNDS = 5
STEPS = 8


def run(out_dir: Path, rounds: int = ROUNDS, steps: int = STEPS, batch: tuple[int, int] = (64, 64)) -> dict:
    import torch

    from ops.cpu_gemm import cpu_gemm_info, fast_linear
    from ops.model import build_model

    res: dict = {**cpu_gemm_info(), "threads": torch.get_num_threads(), "batch": list(batch)}
    plain = build_model(ARCH, VOCAB, seed=0)
    for m in plain.modules():  # build_model switched them where auto picks oneDNN: undo for the MKL side
        if isinstance(m, torch.nn.Linear):
            m.__class__ = torch.nn.Linear
    fast = fast_linear(copy.deepcopy(plain), "onednn")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, VOCAB, batch, generator=gen)
    opts = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (plain, fast)}

    def step(m):
        def f():
            opts[id(m)].zero_grad(set_to_none=True)
            m(input_ids=ids, labels=ids).loss.backward()
            opts[id(m)].step()

        return f

    sample_ids = torch.randint(2, VOCAB, (256, 16), generator=gen)

    def forward(m):
        def f():
            with torch.no_grad():
                m(input_ids=sample_ids)

        return f

    for name, make in (("train_step", step), ("forward", forward)):
        best = best_alternating({"mkl": make(plain), "onednn": make(fast)}, rounds, steps)
        mkl, one = best["mkl"], best["onednn"]
        res[f"{name}_mkl_ms"] = round(mkl * 1e3, 2)
        res[f"{name}_onednn_ms"] = round(one * 1e3, 2)
        res[f"{name}_speedup_onednn_vs_mkl"] = round(mkl / one, 3)
    return res
