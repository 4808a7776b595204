"""Atomic, keep-last-k training checkpoints in a work directory (weights, optimizer, RNG, step, curve).

Key design choice: a checkpoint is a directory ``step-XXXXXXXX`` that is written in full under a ``.tmp-``
name and then renamed into place; ``state.json`` is written last inside it. A reader only trusts directories
whose name matches and that contain ``state.json``, so a process killed mid-write leaves a ``.tmp-``
directory that is ignored and swept on the next save. Old checkpoints are deleted only *after* the new one
is in place, so at every instant at least one complete checkpoint exists once the first has been written.

Weights are safetensors (tied/shared tensors stored once, aliases recorded in the file's metadata);
optimizer state and RNG state are ``torch.save`` files read back with ``weights_only=True``: no pickle of
arbitrary objects is ever loaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

_NAME = re.compile(r"^step-(\d{8})$")


def save_tensors(state: dict[str, Any], path: Path) -> None:
    """Save a state dict as safetensors; tensors sharing storage (tied embeddings) are written once."""
    from safetensors.torch import save_file

    seen: dict[tuple, str] = {}
    tensors: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    for k, v in state.items():
        key = (
            v.device.type,
            v.untyped_storage().data_ptr(),
            v.storage_offset(),
            tuple(v.shape),
            tuple(v.stride()),
        )
        if key in seen:
            aliases[k] = seen[key]
            continue
        seen[key] = k
        tensors[k] = v.detach().contiguous().cpu()
    save_file(tensors, str(path), metadata={"lmforge_aliases": json.dumps(aliases)})


def load_tensors(path: Path) -> dict[str, Any]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    sd = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get("lmforge_aliases", "{}"))
    for k, src in aliases.items():
        sd[k] = sd[src]
    return sd


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as ``[(step, path)]``, oldest first."""
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and (p / "state.json").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest(root: Path) -> tuple[int, Path] | None:
    cks = list_checkpoints(root)
    return cks[-1] if cks else None


def save(
    root: Path,
    step: int,
    *,
    model_state: dict[str, Any],
    optim_state: dict[str, Any],
    rng_state: dict[str, Any],
    state: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically, then prune to the newest ``keep_last`` (at least 1)."""
    import torch

    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by a process killed mid-write; never read
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    save_tensors(model_state, tmp / "model.safetensors")
    torch.save(optim_state, tmp / "optimizer.pt")
    torch.save(rng_state, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state, sort_keys=True))
    _fsync_dir(tmp)
    if final.exists():  # same step saved again (e.g. an identical rerun): replace it whole
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    for _, old in list_checkpoints(root)[: -max(keep_last, 1)]:
        shutil.rmtree(old, ignore_errors=True)  # if this fails the extra checkpoint is merely kept
    return final


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint directory: ``model``, ``optimizer``, ``rng`` and ``state`` (the JSON)."""
    import torch

    return {
        "model": load_tensors(path / "model.safetensors"),
        "optimizer": torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"),
        "rng": torch.load(path / "rng.pt", weights_only=True, map_location="cpu"),
        "state": json.loads((path / "state.json").read_text()),
    }


def _fsync_dir(p: Path) -> None:
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
