"""Import a pretrained causal LM (a user's ``save_pretrained`` directory or a Hugging Face cache snapshot) as
the files of a model artifact.

Key design choices:

* Identity is content. A checkpoint is named by the SHA-256 of each file it is made of (weights, config,
  tokenizer), never by where it lies, so the same bytes at another path are the same model and one changed
  byte is a new one.
* Hashing a 15 GB checkpoint takes minutes, so each file's hash is cached under the lmforge home, keyed by
  the file's cheap fingerprint ``(real path, size, mtime_ns, ctime_ns, inode)``. Any write, replacement or
  move changes the fingerprint and the file is hashed again in full; an unchanged file costs one ``stat``.
* Everything that can be refused is refused from the small JSON files and the safetensors headers before a
  tensor is read: pickled weights (``.bin``/``.pt``) without safetensors, anything that needs
  ``trust_remote_code``, a tokenizer without a chat template (unless one is given), an architecture the
  trainers do not run, a weights file cut short, and tensors missing or shaped unlike the config says (the
  model is built from its config on the ``meta`` device, which allocates nothing, and its state dict is
  compared with the headers).
* The hub is never contacted: a hub id is resolved in the local cache's layout
  (``models--org--name/refs/<revision>`` -> ``snapshots/<commit>/``), and a missing entry says which
  directory to fill and the command that fills it on a machine with internet.
* The checkpoint is copied once, hashing while copying, and the copy is checked against the hashes the
  version was computed from; ``link=True`` hard-links the weight files instead (a copy where the filesystem cannot).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

# model_type values whose decoder layout (q/k/v/o + gate/up/down projections, RMSNorm, plain LM head) the
# trainers, LoRA targets and the partial-head fast path are written for and tested on.
SUPPORTED_ARCHS = ("llama", "mistral", "qwen2", "qwen3")

# The files that make a checkpoint; everything else in the directory (README, .gitattributes, images) is
# neither copied nor part of its identity.
_NAMED = {
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
}
_PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class ModelImportError(ValueError):
    """A checkpoint that cannot be imported (raised before anything is copied)."""


class CheckpointNotFound(ModelImportError):
    """The checkpoint is not on this machine (no such directory, or not in the local Hugging Face cache): the
    spec may be right and the files not there yet."""


# --------------------------------------------------------------------------------------------- sources
def hub_cache_dir(cache_dir: str | None = None) -> Path:
    """The Hugging Face hub cache: ``cache_dir``, else ``$HF_HUB_CACHE``, ``$HF_HOME/hub``,
    ``~/.cache/huggingface/hub`` (read when called, as huggingface_hub does)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def resolve_hub(hub_id: str, revision: str = "main", cache_dir: str | None = None) -> tuple[Path, str]:
    """``(snapshot directory, commit)`` of ``hub_id`` at ``revision`` (a branch, tag or commit hash) in the
    local cache; :class:`ModelImportError` saying what to download where when it is not there."""
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", hub_id):
        raise ModelImportError(f"hub id {hub_id!r} is not of the form 'org/name'")
    root = hub_cache_dir(cache_dir)
    repo = root / ("models--" + hub_id.replace("/", "--"))
    commit = revision
    ref = repo / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
    snap = repo / "snapshots" / commit
    if not (snap / "config.json").is_file():
        raise CheckpointNotFound(
            f"{hub_id}@{revision} is not in the local Hugging Face cache ({snap} has no config.json; "
            "lmforge never downloads at run time). On a machine with internet run "
            f"`hf download {hub_id} --revision {revision} --cache-dir {root}` (older clients: "
            f"`huggingface-cli download {hub_id} --revision {revision} --cache-dir {root}`) and copy {root} "
            "here, or point the stage's cache_dir (or HF_HUB_CACHE / HF_HOME) at a cache that holds it"
        )
    return snap, commit


def checkpoint_files(src: Path) -> list[str]:
    """Relative names of the files that make the checkpoint in ``src`` (sorted)."""
    out = []
    for p in sorted(src.iterdir()):
        if p.is_file() and (p.name in _NAMED or p.name.endswith(".safetensors")):
            out.append(p.name)
    return out


def _read_json(p: Path) -> dict[str, Any]:
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ModelImportError(f"{p}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ModelImportError(f"{p}: expected a JSON object")
    return data


def has_chat_template(src: Path) -> bool:
    if (src / "chat_template.jinja").is_file() or (src / "chat_template.json").is_file():
        return True
    cfg = src / "tokenizer_config.json"
    return cfg.is_file() and bool(_read_json(cfg).get("chat_template"))


def check_dir(p: Path) -> None:
    """Raise unless ``p`` is a directory: :class:`CheckpointNotFound` when nothing is there."""
    if p.is_file():
        raise ModelImportError(f"{p}: is a file, not a checkpoint directory (give the directory save_pretrained "
                               "wrote, which holds config.json, the *.safetensors and the tokenizer files)")
    if not p.is_dir():
        raise CheckpointNotFound(f"{p}: no such directory")


def problems(src: Path, *, chat_template_given: bool = False, cache: HashCache | None = None) -> list[tuple[str, str]]:
    """Every reason ``src`` cannot be imported, as ``(file, message)``; reads the small JSON files and the
    safetensors headers, never a tensor (``cache``: see :func:`weight_problems`)."""
    try:
        check_dir(src)
    except ModelImportError as e:
        return [(str(src), str(e).removeprefix(f"{src}: "))]
    out: list[tuple[str, str]] = []
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        return [(str(cfg_path), "missing: not a save_pretrained model directory")]
    try:
        cfg = _read_json(cfg_path)
    except ModelImportError as e:
        return [(str(cfg_path), str(e))]
    names = [p.name for p in src.iterdir() if p.is_file()]
    if not any(n.endswith(".safetensors") for n in names):
        pickled = sorted(n for n in names if n.endswith(_PICKLED))
        what = f"only pickled weights ({', '.join(pickled)})" if pickled else "no weights"
        out.append((str(src), f"{what}: lmforge loads safetensors only (never pickle); convert with "
                              "`model.save_pretrained(dir, safe_serialization=True)` on a trusted machine"))
    code = sorted(n for n in names if n.endswith(".py"))
    if cfg.get("auto_map"):
        out.append((str(cfg_path), "config has auto_map: the model needs trust_remote_code, which lmforge "
                                   "never enables"))
    elif code:
        out.append((str(src), f"custom code files ({', '.join(code)}): the model needs trust_remote_code, "
                              "which lmforge never enables"))
    tcfg_path = src / "tokenizer_config.json"
    tcfg = _read_json(tcfg_path) if tcfg_path.is_file() else {}
    if tcfg.get("auto_map"):
        out.append((str(tcfg_path), "tokenizer has auto_map: it needs trust_remote_code"))
    if not (src / "tokenizer.json").is_file():
        out.append((str(src / "tokenizer.json"), "missing: lmforge needs the fast tokenizer file"))
    elif not chat_template_given and not has_chat_template(src):
        out.append((str(tcfg_path), "the tokenizer has no chat template; give one in the stage's "
                                    "chat_template field"))
    mt = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    if mt not in SUPPORTED_ARCHS:
        out.append((str(cfg_path), f"model_type {mt!r}: the trainers run {', '.join(SUPPORTED_ARCHS)}"))
    elif archs and not all(str(a).endswith("ForCausalLM") for a in archs):
        out.append((str(cfg_path), f"architectures {archs}: not a causal LM (expected *ForCausalLM)"))
    if cfg.get("quantization_config"):
        out.append((str(cfg_path), "quantized checkpoint: the trainers need full-precision weights"))
    # shapes are compared only for a config the loader builds without remote code
    buildable = not any(f == str(cfg_path) for f, _ in out)
    index = src / "model.safetensors.index.json"
    if index.is_file():
        shards = set(_read_json(index).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (src / s).is_file())
        if missing:
            out.append((str(index), f"names shard(s) not in the directory: {', '.join(missing)}"))
            return out
    if any(n.endswith(".safetensors") for n in names):
        out += weight_problems(src, shapes=buildable, cache=cache)
    return out


# --------------------------------------------------------------------------------------------- weights
def weight_files(src: Path) -> list[str]:
    """The safetensors files the loader reads: the shards the index names, else ``model.safetensors``."""
    index = src / "model.safetensors.index.json"
    if index.is_file():
        return sorted(set(_read_json(index).get("weight_map", {}).values()))
    return ["model.safetensors"] if (src / "model.safetensors").is_file() else []


def _header(p: Path) -> dict[str, Any]:
    """The tensor entries of a safetensors file's header (no tensor is read); :class:`ModelImportError`
    saying why the loader would refuse the file."""
    from safetensors import SafetensorError, safe_open

    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelImportError(f"truncated or not safetensors: {size} bytes, too short for a header")
        n = struct.unpack("<Q", head)[0]
        if 8 + n > size:
            raise ModelImportError(f"truncated or not safetensors: {size} bytes cannot hold the header it "
                                   f"announces ({n} bytes)")
        try:
            header = json.loads(f.read(n))
            tensors = {k: v for k, v in header.items() if k != "__metadata__"}
            end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise ModelImportError(f"the safetensors header is not valid ({type(e).__name__}: {e})") from None
    data = size - 8 - n
    if end > data:
        raise ModelImportError(f"truncated: its tensors need {end} bytes after the header, the file holds "
                               f"{data} ({size} bytes in all; an interrupted download or copy?)")
    try:  # the loader's own header checks (offsets contiguous, sizes matching dtypes and shapes)
        with safe_open(str(p), framework="numpy"):
            pass
    except (SafetensorError, OSError) as e:
        raise ModelImportError(f"not loadable by safetensors: {e}") from None
    return tensors


def weight_problems(src: Path, *, shapes: bool = True, cache: HashCache | None = None) -> list[tuple[str, str]]:
    """``[(file, message)]``, at most one per weights file: a file the loader refuses (cut short, header
    damaged); then, with ``shapes``, one saying which tensors the config implies are missing or shaped
    otherwise (the model is built on the ``meta`` device: nothing is allocated, no tensor is read). Building
    it imports transformers (seconds), so a ``cache`` remembers files that passed, by their fingerprints."""
    files = weight_files(src)
    if not files:
        shards = sorted(p.name for p in src.glob("*.safetensors"))
        return [(str(src), f"safetensors files ({', '.join(shards)}) but neither model.safetensors nor "
                           "model.safetensors.index.json naming which tensor lies in which shard")]
    headers: dict[str, dict[str, Any]] = {}
    out: list[tuple[str, str]] = []
    for name in files:
        try:
            headers[name] = _header(src / name)
        except ModelImportError as e:
            out.append((str(src / name), str(e)))
    if out or not shapes:
        return out
    index = src / "model.safetensors.index.json"
    seen = [src / "config.json", *(src / n for n in files)] + ([index] if index.is_file() else [])
    passed = cache.marker(f"shapes {metadata.version('transformers')}", seen) if cache else None
    if passed is not None and passed.is_file():
        return []
    out = _shape_problems(src, headers, index if index.is_file() else src / files[0])
    if passed is not None and not out:
        passed.parent.mkdir(parents=True, exist_ok=True)
        passed.touch()
    return out


def _shape_problems(src: Path, headers: dict[str, dict[str, Any]], weights: Path) -> list[tuple[str, str]]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg_path = src / "config.json"
    try:
        config = AutoConfig.from_pretrained(str(src), local_files_only=True, trust_remote_code=False)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - any config the loader cannot build from is one clear error
        return [(str(cfg_path), f"transformers cannot build the model it describes ({type(e).__name__}: {e})")]
    stored = {k: (name, list(v["shape"])) for name, h in headers.items() for k, v in h.items()}
    need = model.state_dict(keep_vars=True)
    tied: dict[int, list[str]] = {}  # tied weights (one tensor under several names) are stored once
    for k, t in need.items():
        tied.setdefault(id(t), []).append(k)
    missing = [f"{ks[0]} {list(need[ks[0]].shape)}" for ks in tied.values() if not any(k in stored for k in ks)]
    wrong = [f"{k} is {stored[k][1]} in {stored[k][0]}, the config needs {list(t.shape)}"
             for k, t in need.items() if k in stored and stored[k][1] != list(t.shape)]
    if wrong:
        also = f"; {len(missing)} more are missing" if missing else ""
        return [(str(cfg_path), f"does not match the weights: {len(wrong)} of {len(tied)} tensors are shaped "
                                f"otherwise{also} (e.g. {'; '.join(wrong[:2])}); check hidden_size, "
                                "intermediate_size, vocab_size and the head and layer counts")]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        return [(str(weights), f"lacks {len(missing)} tensor(s) config.json implies: "
                               f"{', '.join(missing[:3])}{more}")]
    return []


# ------------------------------------------------------------------------------------------ hash cache
class HashCache:
    """SHA-256 of files, cached under ``root`` by each file's cheap fingerprint. One small JSON file per
    entry, written atomically, so concurrent processes share the cache without a lock."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @staticmethod
    def key(path: Path) -> str:
        real = os.path.realpath(path)
        st = os.stat(real)
        ident = f"{real}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\0{st.st_dev}"
        return hashlib.sha256(ident.encode()).hexdigest()

    def marker(self, check: str, paths: list[Path]) -> Path:
        """A file whose presence records that ``check`` passed on exactly these files (a change to any of
        them changes its name)."""
        ident = "\0".join([check, *(self.key(p) for p in paths)])
        return self.root / "passed" / hashlib.sha256(ident.encode()).hexdigest()

    def sha256(self, path: Path) -> str:
        key = self.key(path)
        entry = self.root / key[:2] / f"{key}.json"
        if entry.is_file():
            try:
                return json.loads(entry.read_text())["sha256"]
            except (OSError, ValueError, KeyError):
                pass  # a damaged entry is recomputed below
        digest = file_sha256(Path(path))
        if self.key(path) != key:  # written to while it was hashed: do not cache a hash of mixed bytes
            return digest
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"sha256": digest, "path": os.path.realpath(path)}))
        os.replace(tmp, entry)
        return digest


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def content_identity(src: Path, cache: HashCache) -> dict[str, str]:
    """``{file name: sha256}`` of the checkpoint files in ``src``, and of any ``*.py`` beside them: such code
    is never imported (it is refused), but a directory that gains it is no longer the checkpoint it was."""
    names = checkpoint_files(src) + sorted(p.name for p in src.glob("*.py") if p.is_file())
    return {n: cache.sha256(src / n) for n in names}


def identity_digest(identity: dict[str, str]) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- import
@dataclass
class Imported:
    files: dict[str, str]  # name -> sha256 of the bytes written
    architecture: str
    model_type: str
    parameters: int
    linked: bool


def copy_checkpoint(src: Path, out: Path, expected: dict[str, str], *, link: bool = False) -> dict[str, str]:
    """Copy (or hard-link) the checkpoint files into ``out``, hashing the written bytes, and refuse if they
    differ from ``expected`` (the hashes the stage was versioned by). ``link`` hard-links the weight files:
    no second copy, but the artifact then shares its bytes with the source, which must never be rewritten
    in place."""
    out.mkdir(parents=True, exist_ok=True)
    got: dict[str, str] = {}
    for name in checkpoint_files(src):
        s, d = Path(os.path.realpath(src / name)), out / name
        if link and name.endswith(".safetensors") and _try_link(s, d):  # small files: always copied
            got[name] = file_sha256(d)
        else:
            h = hashlib.sha256()
            with open(s, "rb") as fi, open(d, "wb") as fo:
                for chunk in iter(lambda: fi.read(1 << 22), b""):
                    h.update(chunk)
                    fo.write(chunk)
            shutil.copystat(s, d)
            got[name] = h.hexdigest()
    if got != expected:
        changed = sorted(set(got) ^ set(expected) | {n for n in got if got[n] != expected.get(n)})
        raise ModelImportError(
            f"{src}: {', '.join(changed)} changed while being imported (the content no longer matches the "
            "version planned for it); rerun once the checkpoint is no longer being written"
        )
    return got


def _try_link(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` to ``dst``; False (the caller copies) across filesystems or where links fail."""
    try:
        os.link(src, dst)
    except OSError:
        return False
    return True


def safetensors_parameters(src: Path) -> int:
    """Number of parameters stored in the ``*.safetensors`` files, from their headers (no tensor is read)."""
    n = 0
    for p in sorted(src.glob("*.safetensors")):
        for v in _header(p).values():
            count = 1
            for d in v["shape"]:
                count *= int(d)
            n += count
    return n


def set_chat_template(out: Path, template: str) -> None:
    """Make ``template`` the tokenizer's only chat template."""
    for n in ("chat_template.jinja", "chat_template.json"):
        (out / n).unlink(missing_ok=True)
    p = out / "tokenizer_config.json"
    cfg = _read_json(p) if p.is_file() else {}
    cfg["chat_template"] = template
    p.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def describe(out: Path) -> tuple[str, str, int]:
    """``(architecture class, model_type, parameter count)`` of an imported directory."""
    cfg = _read_json(out / "config.json")
    archs = cfg.get("architectures") or [f"{cfg.get('model_type')}ForCausalLM"]
    return str(archs[0]), str(cfg.get("model_type")), safetensors_parameters(out)
