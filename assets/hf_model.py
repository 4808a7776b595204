"""Stage kind ``hf_model``: import a pretrained causal LM (a local ``save_pretrained`` directory, or a hub id
and revision already in the local Hugging Face cache) as a model artifact every post-training kind takes.

Key design choice: the stage's version is the *content* of the checkpoint (the SHA-256 of every weight,
config and tokenizer file, plus the fields that change what is written: ``chat_template`` and
``special_tokens``), never its location: ``path``, ``hub_id``, ``revision`` and ``cache_dir`` only say where to
look. Moving the directory keeps the version and every artifact after it; one changed byte re-versions the
import and its descendants. Hashes are cached under ``$LMFORGE_HOME/cache/sha256`` by each file's cheap
fingerprint (path, size, mtime, ctime, inode), so ``plan`` and every materialization after the first cost
a ``stat`` per file. Every refusal (pickled weights, remote code, no chat template, an architecture the
trainers do not run, a weights file cut short, tensors the config implies missing or shaped otherwise)
happens in ``validate`` and again before anything is copied (``ops/hf_import.py``); the written copy's
weights are checked the same way before the artifact is committed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from .registry import StageConfig, StageKind, StageResult, StageRun, Table, register, run_option

THINK_ANSWER = ["<think>", "</think>", "<answer>", "</answer>"]


class HFModelConfig(StageConfig):
    path: str | None = run_option(
        None,
        description="a local save_pretrained directory (config.json, *.safetensors, tokenizer files); "
        "where to read, not part of the version (the files' content is)",
    )
    hub_id: str | None = run_option(
        None, description="a hub model id ('org/name') resolved in the local Hugging Face cache only"
    )
    revision: str = run_option("main", description="hub_id: branch, tag or commit hash in the cache")
    cache_dir: str | None = run_option(
        None, description="hub_id: the hub cache to read (default: $HF_HUB_CACHE, $HF_HOME/hub, "
        "~/.cache/huggingface/hub)"
    )
    link: bool = run_option(
        False,
        description="hard-link the weight files into the artifact instead of copying them (copied where the "
        "filesystem cannot link; linked source files must never be rewritten in place)",
    )
    chat_template: str | None = Field(
        None, description="a Jinja chat template for a tokenizer that has none (or to replace its own)"
    )
    special_tokens: list[str] = Field(
        default_factory=list,
        description="tokens to add as special tokens, growing the embeddings (new rows: the mean of the "
        f"existing ones), e.g. {THINK_ANSWER} for budget forcing; empty = the checkpoint as is",
    )

    @model_validator(mode="after")
    def _one_source(self) -> HFModelConfig:
        if bool(self.path) == bool(self.hub_id):
            raise ValueError("give exactly one of path (a local directory) or hub_id (in the local HF cache)")
        return self


def _source(c: HFModelConfig) -> tuple[str, Path, str | None]:
    """``(field, directory, resolved commit)``; raises ModelImportError naming what is missing."""
    from ops.hf_import import check_dir, resolve_hub

    if c.path:
        p = Path(c.path).expanduser()
        check_dir(p)
        return "path", p.resolve(), None
    snap, commit = resolve_hub(str(c.hub_id), c.revision, c.cache_dir)
    return "hub_id", snap, commit


def _problems(c: HFModelConfig) -> list[tuple[str, str]]:
    """``[(field, message)]``: an unresolvable source, then every refusal of the checkpoint."""
    from ops.hf_import import CheckpointNotFound, ModelImportError, problems
    from ops.loaders import MissingInput

    try:
        field, src, _ = _source(c)
    except CheckpointNotFound as e:
        return [MissingInput("hub_id" if c.hub_id else "path", str(e))]
    except ModelImportError as e:
        return [("hub_id" if c.hub_id else "path", str(e))]
    found = problems(src, chat_template_given=bool(c.chat_template), cache=_cache())
    return [(field, f"{f}: {m}") for f, m in found]


def _validate(c: HFModelConfig, refs: dict[str, str]) -> list[tuple[str, str]]:
    out = _problems(c)
    if len(set(c.special_tokens)) != len(c.special_tokens) or any(not t.strip() for t in c.special_tokens):
        out.append(("special_tokens", f"tokens must be distinct and non-empty, got {c.special_tokens}"))
    return out


def _cache():
    from ops.hf_import import HashCache
    from resources.store import default_home

    return HashCache(default_home() / "cache" / "sha256")


def _fingerprint(c: HFModelConfig) -> dict[str, Any]:
    """The checkpoint's content: ``{file: sha256}`` (cached by cheap file fingerprints). A source that cannot
    be found gives a placeholder identity instead of an error here: the stage's run refuses it with the
    message naming stage and field, and nothing is stored under that version."""
    from ops.hf_import import ModelImportError, content_identity

    try:
        _, src, _ = _source(c)
    except ModelImportError as e:
        return {"unresolved": str(e)}
    return {"files": content_identity(src, _cache())}


def run(r: StageRun) -> StageResult:
    from ops.hf_import import (
        content_identity,
        copy_checkpoint,
        describe,
        identity_digest,
        set_chat_template,
        weight_problems,
    )

    c: HFModelConfig = r.config
    bad = _validate(c, {})
    if bad:
        raise _refusal(r, bad[0][0], "; ".join(m for _, m in bad))
    field, src, commit = _source(c)
    expected = content_identity(src, _cache())
    r.log(f"{r.stage}: importing {src} ({len(expected)} files)")
    if c.special_tokens:
        added = _with_tokens(c, src, r.out)
    else:
        copy_checkpoint(src, r.out, expected, link=c.link)
        if c.chat_template:
            set_chat_template(r.out, c.chat_template)
        added = []
    broken = weight_problems(r.out)  # what was written, not only the source, loads; else nothing is stored
    if broken:
        shown = "; ".join(f"{Path(f).name}: {m}" for f, m in broken)
        raise _refusal(r, field, f"the copy of {src} written for the store fails its checks ({shown}); the "
                                 "checkpoint may have changed while it was read: rerun once it is no longer written")
    tok = _check_tokenizer(r, field)
    arch, model_type, n_params = describe(r.out)
    digest = identity_digest(expected)
    metrics = {
        "source": c.hub_id or str(src),
        "revision": (f"{c.revision} ({commit})" if commit and commit != c.revision else c.revision)
        if c.hub_id else "",
        "architecture": arch,
        "model_type": model_type,
        "parameters": n_params,
        "vocab_size": len(tok),
        "content_sha256": digest,
        "added_tokens": len(added),
    }
    sizes = {n: (src / n).stat().st_size for n in expected}
    files = Table([{"file": n, "bytes": sizes[n], "sha256": h} for n, h in sorted(expected.items())])
    return StageResult(metrics=metrics, metadata={"source_files": files, "added_tokens": ", ".join(added)})


def _with_tokens(c: HFModelConfig, src: Path, out: Path) -> list[str]:
    """Load the checkpoint, add ``special_tokens`` (embeddings grown), and save it into ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ops.model import add_special_tokens, save_model

    tok = AutoTokenizer.from_pretrained(str(src), local_files_only=True, trust_remote_code=False)
    if c.chat_template:
        tok.chat_template = c.chat_template
    model = AutoModelForCausalLM.from_pretrained(
        str(src), local_files_only=True, trust_remote_code=False, use_safetensors=True, dtype="auto"
    )
    added = add_special_tokens(model, tok, list(c.special_tokens))
    save_model(model, tok, out)
    return added


def _check_tokenizer(r: StageRun, field: str):
    """The imported tokenizer, loaded and its chat template rendered once (a broken one fails here)."""
    from ops.generate import chat_prompts, turn_end
    from ops.tokenizer import load_tokenizer

    try:
        tok = load_tokenizer(r.out)
        chat_prompts(tok, ["1+1?"])
        turn_end(tok)
    except Exception as e:
        raise _refusal(r, field, f"the tokenizer cannot render chats: {e}") from None
    return tok


def _refusal(r: StageRun, field: str, message: str):
    from ops.hf_import import ModelImportError

    return ModelImportError(f"stage {r.stage!r}, field {field!r}: {message}")


register(
    StageKind(
        name="hf_model",
        config=HFModelConfig,
        produces="model",
        run=run,
        description="Import a pretrained causal LM (local directory or local HF cache) as a model artifact "
        "versioned by its content.",
        validate=_validate,
        fingerprint=_fingerprint,
    )
)
