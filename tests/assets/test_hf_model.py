"""The ``hf_model`` kind: an imported checkpoint loads back bit-identical; its version is its content (a moved
directory keeps it, one changed weight byte re-versions the import and everything after it); file hashes
are cached by cheap fingerprints; every refusal is one error naming the file, stage and field, before
anything is stored; hub ids resolve in the local cache only; special tokens grow the embeddings."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest

from assets.registry import load_kinds
from pipelines.execute import run_kind
from testkit import hf_checkpoints as H

load_kinds()
QUIET = {"log": lambda s: None}


def _stored(home: Path, kind: str = "hf_model") -> list[Path]:
    d = home / "artifacts" / kind
    return sorted(p for p in d.iterdir() if not p.name.startswith(".")) if d.is_dir() else []


def _flip_last_byte(p: Path, keep_mtime: bool = True) -> None:
    st = p.stat()
    with open(p, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        b = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([b[0] ^ 0x01]))
    if keep_mtime:  # a byte changed behind the mtime's back is still seen (ctime, and the hash behind it)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.unit
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_import_loads_back_bit_identical(lmforge_home, tmp_path, family):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = H.checkpoint(family, tmp_path / "ckpt")
    art, res = run_kind("hf_model", {"path": str(src)}, lmforge_home, **QUIET)
    m = res.metrics
    assert m["source"] == str(src) and m["model_type"] == family
    assert m["architecture"] == {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                                 "qwen3": "Qwen3ForCausalLM", "mistral": "MistralForCausalLM"}[family]
    a = AutoModelForCausalLM.from_pretrained(art.path, local_files_only=True)
    b = AutoModelForCausalLM.from_pretrained(src, local_files_only=True)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert m["parameters"] == sum(p.numel() for p in b.parameters())
    ta, tb = AutoTokenizer.from_pretrained(art.path), AutoTokenizer.from_pretrained(src)
    texts = ["What is 12+30?", "<think>7</think><answer>7</answer>", "héllo wörld 2024"]
    assert ta(texts)["input_ids"] == tb(texts)["input_ids"]
    chat = [{"role": "user", "content": "What is 2+3?"}]
    assert ta.apply_chat_template(chat, add_generation_prompt=True) == tb.apply_chat_template(
        chat, add_generation_prompt=True
    )
    for f in src.iterdir():
        assert (art.path / f.name).read_bytes() == f.read_bytes()
    meta = json.loads((art.path / "metadata.json").read_text())
    assert {r["file"] for r in meta["source_files"]["value"]} == {f.name for f in src.iterdir()}


def _spec(tmp_path: Path, src: Path, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(f"""\
        pipeline: hf_plan
        stages:
          tasks: {{kind: reasoning_tasks, train: 40, eval: 8, difficulties: [1]}}
          base: {{kind: hf_model, path: {src}}}
          sft: {{kind: sft, model: base, data: [tasks], steps: 2, eval_problems: 0}}
        """))
    return p


@pytest.mark.unit
def test_version_is_content_not_path(lmforge_home, tmp_path):
    from pipelines.spec import load_spec, plan
    from resources.store import ArtifactStore

    src = H.checkpoint("llama", tmp_path / "a" / "ckpt")
    spec = load_spec(_spec(tmp_path, src))
    v = {s: st.version for s, st in spec.stages.items()}
    art, _ = run_kind("hf_model", {"path": str(src)}, lmforge_home, stage="base", **QUIET)
    assert art.version == v["base"]

    moved = tmp_path / "b" / "elsewhere"
    moved.parent.mkdir()
    shutil.move(src, moved)
    spec2 = load_spec(_spec(tmp_path, moved, "moved.yaml"))
    assert {s: st.version for s, st in spec2.stages.items()} == v
    again, res = run_kind("hf_model", {"path": str(moved)}, lmforge_home, stage="base", **QUIET)
    assert res is None and again.version == art.version  # a cache hit: nothing copied again

    _flip_last_byte(moved / "model.safetensors")
    spec3 = load_spec(_spec(tmp_path, moved, "moved.yaml"))
    v3 = {s: st.version for s, st in spec3.stages.items()}
    assert v3["tasks"] == v["tasks"]
    assert v3["base"] != v["base"] and v3["sft"] != v["sft"]
    rows = {r["stage"]: r["status"] for r in plan(spec3, ArtifactStore(lmforge_home))}
    assert rows["base"] == "to compute"
    assert {r["stage"]: r["status"] for r in plan(spec2, ArtifactStore(lmforge_home))}["base"] == "stored"


@pytest.mark.unit
def test_file_hashes_are_cached_by_fingerprint(lmforge_home, tmp_path, monkeypatch):
    import ops.hf_import as I
    from assets.hf_model import HFModelConfig, _fingerprint

    src = H.checkpoint("qwen2", tmp_path / "ckpt")
    calls: list[str] = []
    real = I.file_sha256
    monkeypatch.setattr(I, "file_sha256", lambda p: calls.append(Path(p).name) or real(p))
    cfg = HFModelConfig(path=str(src))
    first = _fingerprint(cfg)
    assert sorted(calls) == sorted(first["files"]) and "model.safetensors" in calls
    calls.clear()
    assert _fingerprint(cfg) == first and calls == []  # unchanged files: one stat each, no read
    (src / "config.json").write_text((src / "config.json").read_text() + "\n")
    third = _fingerprint(cfg)
    assert calls == ["config.json"] and third["files"]["config.json"] != first["files"]["config.json"]
    assert (lmforge_home / "cache" / "sha256").is_dir()


def _break(kind: str, src: Path) -> tuple[str, str]:
    """Damage ``src`` one way; returns ``(the file the error names, a phrase of the error)``."""
    cfg = json.loads((src / "config.json").read_text())
    if kind == "pickle":
        (src / "model.safetensors").rename(src / "pytorch_model.bin")
        return str(src), "only pickled weights (pytorch_model.bin)"
    if kind == "auto_map":
        cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
        (src / "config.json").write_text(json.dumps(cfg))
        return str(src / "config.json"), "trust_remote_code"
    if kind == "code":
        (src / "modeling_x.py").write_text("import os\n")
        return str(src), "custom code files (modeling_x.py)"
    if kind == "template":
        (src / "chat_template.jinja").unlink()
        tc = json.loads((src / "tokenizer_config.json").read_text())
        tc.pop("chat_template", None)
        (src / "tokenizer_config.json").write_text(json.dumps(tc))
        return str(src / "tokenizer_config.json"), "no chat template; give one in the stage's chat_template"
    if kind == "truncated":  # an interrupted download: the header is whole, the tensor data is not
        _truncate(src / "model.safetensors")
        return str(src / "model.safetensors"), "truncated: its tensors need"
    if kind == "shape":
        cfg["hidden_size"] *= 2
        (src / "config.json").write_text(json.dumps(cfg))
        return str(src / "config.json"), "does not match the weights"
    if kind == "missing_tensor":
        from safetensors.torch import load_file, save_file

        weights = load_file(src / "model.safetensors")
        del weights["model.norm.weight"]
        save_file(weights, src / "model.safetensors", metadata={"format": "pt"})
        return str(src / "model.safetensors"), "lacks 1 tensor(s) config.json implies: model.norm.weight [64]"
    cfg["model_type"], cfg["architectures"] = "gpt2", ["GPT2LMHeadModel"]
    (src / "config.json").write_text(json.dumps(cfg))
    return str(src / "config.json"), "model_type 'gpt2': the trainers run llama, mistral, qwen2, qwen3"


def _truncate(p: Path) -> None:
    with open(p, "r+b") as f:
        f.truncate(p.stat().st_size // 2)


@pytest.mark.unit
@pytest.mark.parametrize("case", ["pickle", "auto_map", "code", "template", "arch", "truncated", "shape",
                                  "missing_tensor"])
def test_refusals_name_file_stage_field_and_store_nothing(lmforge_home, tmp_path, case):
    from ops.hf_import import ModelImportError
    from pipelines.spec import SpecError, load_spec

    src = H.checkpoint("llama", tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    good, _ = run_kind("hf_model", {"path": str(src)}, lmforge_home, stage="base", **QUIET)
    file, phrase = _break(case, src)
    with pytest.raises(SpecError) as ei:
        load_spec(_spec(tmp_path, src))
    issues = [i for i in ei.value.issues if i.stage == "base"]
    assert len(issues) == 1 and issues[0].field == "path"
    assert file in issues[0].message and phrase in issues[0].message
    with pytest.raises(ModelImportError) as ei2:
        run_kind("hf_model", {"path": str(src)}, lmforge_home, stage="base", **QUIET)
    msg = str(ei2.value)
    assert "stage 'base', field 'path'" in msg and file in msg and phrase in msg
    assert _stored(lmforge_home) == [good.path]  # nothing new stored, the earlier import untouched
    assert (good.path / "model.safetensors").read_bytes() == before["model.safetensors"]


@pytest.mark.unit
def test_shape_mismatch_names_config_and_weights_file(lmforge_home, tmp_path):
    from pipelines.spec import SpecError, load_spec

    src = H.checkpoint("qwen2", tmp_path / "ckpt")
    _break("shape", src)
    with pytest.raises(SpecError) as ei:
        load_spec(_spec(tmp_path, src))
    (issue,) = [i for i in ei.value.issues if i.stage == "base"]
    assert issue.message.startswith(f"{src / 'config.json'}: does not match the weights: ")
    assert "model.embed_tokens.weight is [420, 64] in model.safetensors, the config needs [420, 128]" in issue.message


@pytest.mark.unit
def test_weight_checks_are_cached_by_file_fingerprints(lmforge_home, tmp_path, monkeypatch):
    """Building the model on the meta device costs a transformers import: an unchanged checkpoint is
    checked once; a changed config is checked again."""
    import ops.hf_import as I
    from assets.hf_model import HFModelConfig, _validate

    src = H.checkpoint("llama", tmp_path / "ckpt")
    calls: list[Path] = []
    real = I._shape_problems
    monkeypatch.setattr(I, "_shape_problems", lambda s, *a: calls.append(s) or real(s, *a))
    cfg = HFModelConfig(path=str(src))
    assert _validate(cfg, {}) == [] and _validate(cfg, {}) == [] and len(calls) == 1
    _break("shape", src)
    assert [f for f, _ in _validate(cfg, {})] == ["path"] and len(calls) == 2


@pytest.mark.unit
def test_a_copy_that_fails_the_weight_checks_is_not_stored(lmforge_home, tmp_path, monkeypatch):
    """A source cut short after it was checked (still being written): the written copy is checked too."""
    import ops.hf_import as I
    from ops.hf_import import ModelImportError

    src = H.checkpoint("llama", tmp_path / "ckpt")
    real = I.copy_checkpoint

    def copy_then_cut(s, out, *a, **kw):
        got = real(s, out, *a, **kw)
        _truncate(out / "model.safetensors")
        return got

    monkeypatch.setattr(I, "copy_checkpoint", copy_then_cut)
    with pytest.raises(ModelImportError) as ei:
        run_kind("hf_model", {"path": str(src)}, lmforge_home, stage="base", **QUIET)
    msg = str(ei.value)
    assert msg.startswith(f"stage 'base', field 'path': the copy of {src} written for the store fails its checks")
    assert "model.safetensors: truncated: its tensors need" in msg
    assert _stored(lmforge_home) == []


@pytest.mark.unit
def test_a_file_given_as_path_is_not_a_checkpoint_directory(lmforge_home, tmp_path):
    from ops.hf_import import ModelImportError
    from pipelines.spec import SpecError, load_spec

    src = H.checkpoint("llama", tmp_path / "ckpt")
    f = src / "model.safetensors"
    with pytest.raises(SpecError) as ei:
        load_spec(_spec(tmp_path, f))
    (issue,) = [i for i in ei.value.issues if i.stage == "base"]
    assert issue.field == "path" and not issue.missing_input  # it is there, and wrong
    assert issue.message.startswith(f"{f}: is a file, not a checkpoint directory")
    with pytest.raises(ModelImportError, match=rf"^stage 'base', field 'path': {f}: is a file, not a checkpoint"):
        run_kind("hf_model", {"path": str(f)}, lmforge_home, stage="base", **QUIET)
    assert _stored(lmforge_home) == []


@pytest.mark.unit
def test_chat_template_field_supplies_a_missing_template(lmforge_home, tmp_path):
    from ops.tokenizer import load_tokenizer

    src = H.checkpoint("qwen2", tmp_path / "ckpt")
    _break("template", src)
    art, res = run_kind("hf_model", {"path": str(src), "chat_template": H.QWEN_TEMPLATE}, lmforge_home, **QUIET)
    tok = load_tokenizer(art.path)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n") and "You are a helpful assistant." in text
    # the template is part of the version: another template is another artifact
    other, _ = run_kind("hf_model", {"path": str(src), "chat_template": H.QWEN_TEMPLATE + " "}, lmforge_home, **QUIET)
    assert other.version != art.version


def _hub_cache(root: Path, src: Path, repo: str, commit: str, branch: str = "main") -> None:
    """``src`` laid out as huggingface_hub caches it: blobs by hash, snapshot symlinks, a ref per branch."""
    import hashlib

    base = root / ("models--" + repo.replace("/", "--"))
    (base / "blobs").mkdir(parents=True)
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in src.iterdir():
        blob = base / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (base / "refs").mkdir()
    (base / "refs" / branch).write_text(commit)


@pytest.mark.unit
def test_hub_id_resolves_in_local_cache_only(lmforge_home, tmp_path, monkeypatch):
    from ops.hf_import import ModelImportError

    src = H.checkpoint("qwen2", tmp_path / "ckpt")
    cache = tmp_path / "hf" / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    _hub_cache(cache, src, "acme/tiny-chat", commit)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    art, res = run_kind("hf_model", {"hub_id": "acme/tiny-chat"}, lmforge_home, stage="base", **QUIET)
    assert res.metrics["source"] == "acme/tiny-chat" and res.metrics["revision"] == f"main ({commit})"
    local, res2 = run_kind("hf_model", {"path": str(src)}, lmforge_home, stage="base", **QUIET)
    assert local.version == art.version and res2 is None  # same bytes: the same artifact
    by_commit, _ = run_kind("hf_model", {"hub_id": "acme/tiny-chat", "revision": commit}, lmforge_home, **QUIET)
    assert by_commit.version == art.version
    assert not (art.path / "model.safetensors").is_symlink()
    with pytest.raises(ModelImportError) as ei:
        run_kind("hf_model", {"hub_id": "acme/missing", "revision": "v1"}, lmforge_home, stage="base", **QUIET)
    msg = str(ei.value)
    assert msg.startswith("stage 'base', field 'hub_id': acme/missing@v1 is not in the local Hugging Face cache")
    assert f"hf download acme/missing --revision v1 --cache-dir {cache}" in msg
    assert str(cache / "models--acme--missing" / "snapshots" / "v1") in msg and "HF_HOME" in msg
    gone = tmp_path / "gone"
    with pytest.raises(ModelImportError, match=rf"^stage 'base', field 'path': {gone}: no such directory$"):
        run_kind("hf_model", {"path": str(gone)}, lmforge_home, stage="base", **QUIET)
    assert len(_stored(lmforge_home)) == 1


@pytest.mark.unit
def test_link_shares_weight_bytes_without_a_second_copy(lmforge_home, tmp_path):
    src = H.checkpoint("llama", tmp_path / "ckpt")
    art, _ = run_kind("hf_model", {"path": str(src), "link": True}, lmforge_home, **QUIET)
    assert (art.path / "model.safetensors").stat().st_ino == (src / "model.safetensors").stat().st_ino
    assert (art.path / "config.json").stat().st_ino != (src / "config.json").stat().st_ino


@pytest.mark.unit
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_special_tokens_grow_embeddings_with_mean_rows(lmforge_home, tmp_path, family):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from assets.hf_model import THINK_ANSWER

    src = H.checkpoint(family, tmp_path / "ckpt")
    art, res = run_kind("hf_model", {"path": str(src), "special_tokens": THINK_ANSWER}, lmforge_home, **QUIET)
    assert res.metrics["added_tokens"] == 4
    tok = AutoTokenizer.from_pretrained(art.path)
    ids = [tok.convert_tokens_to_ids(t) for t in THINK_ANSWER]
    assert tok("<think>1</think>", add_special_tokens=False)["input_ids"][0] == ids[0]
    old = AutoModelForCausalLM.from_pretrained(src)
    new = AutoModelForCausalLM.from_pretrained(art.path)
    n = old.get_input_embeddings().weight.shape[0]
    assert new.get_input_embeddings().weight.shape[0] == n + 4 == new.config.vocab_size
    for get in ("get_input_embeddings", "get_output_embeddings"):
        w_old, w_new = getattr(old, get)().weight, getattr(new, get)().weight
        assert torch.equal(w_new[:n], w_old)
        assert torch.allclose(w_new[n:], w_old.mean(0, keepdim=True).expand(4, -1), atol=1e-6)
    tied = new.get_output_embeddings().weight is new.get_input_embeddings().weight
    assert tied == (family == "qwen2")


@pytest.mark.unit
def test_lmforge_plan_shows_a_changed_weight_byte_re_versioning_descendants(tmp_path, monkeypatch, capsys):
    """``lmforge --home H plan``: stored after the import; one flipped weight byte puts the import and the
    SFT stage after it back to "to compute" under new versions, the task stage untouched; hashes are cached
    in H."""
    from pipelines.cli import main

    home = tmp_path / "home"
    monkeypatch.delenv("LMFORGE_HOME", raising=False)
    src = H.checkpoint("qwen2", tmp_path / "ckpt")
    spec = _spec(tmp_path, src)

    def plan() -> dict[str, tuple[str, str]]:
        capsys.readouterr()
        assert main(["--home", str(home), "plan", str(spec)]) == 0
        rows = [ln.split(None, 3) for ln in capsys.readouterr().out.splitlines() if ln.strip()]
        return {r[0]: (r[2], r[3]) for r in rows}

    before = plan()
    run_kind("hf_model", {"path": str(src)}, home, stage="base", **QUIET)
    stored = plan()
    assert stored["base"] == (before["base"][0], "stored") and stored["sft"][1] == "to compute"
    assert any((home / "cache" / "sha256").rglob("*.json"))
    _flip_last_byte(src / "model.safetensors")
    after = plan()
    assert after["tasks"] == stored["tasks"]
    assert after["base"][1] == "to compute" and after["base"][0] != stored["base"][0]
    assert after["sft"][0] != stored["sft"][0]


def _sharded(family: str, src: Path):
    tok = H.build_tokenizer(family)
    model = H.build_model(family, tok)
    model.save_pretrained(src, max_shard_size="100KB")
    tok.save_pretrained(src)
    shards = sorted(p.name for p in src.glob("*.safetensors"))
    assert len(shards) > 1 and (src / "model.safetensors.index.json").is_file()
    return model, shards


@pytest.mark.unit
def test_sharded_checkpoint_imports_every_shard(lmforge_home, tmp_path):
    """A checkpoint saved in several safetensors shards (with its index) imports whole, its parameter count
    read from the shard headers; an index naming a missing shard is refused before anything is copied."""
    import torch
    from transformers import AutoModelForCausalLM

    from ops.hf_import import ModelImportError

    src = tmp_path / "sharded"
    model, shards = _sharded("llama", src)
    art, res = run_kind("hf_model", {"path": str(src)}, lmforge_home, **QUIET)
    assert sorted(p.name for p in art.path.glob("*.safetensors")) == shards
    assert res.metrics["parameters"] == sum(p.numel() for p in model.parameters())
    back = AutoModelForCausalLM.from_pretrained(art.path).state_dict()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    (src / shards[-1]).unlink()

    with pytest.raises(ModelImportError, match=rf"model.safetensors.index.json: names shard\(s\) not in the "
                                               rf"directory: {shards[-1]}"):
        run_kind("hf_model", {"path": str(src)}, lmforge_home, stage="base", **QUIET)


@pytest.mark.unit
def test_sharded_tied_checkpoint_with_a_truncated_shard_is_refused(lmforge_home, tmp_path):
    """Qwen2 ties its embeddings (the head is stored once): its sharded checkpoint passes; one shard cut short
    is one error naming that shard, at validate time and at run time, and nothing is stored."""
    from ops.hf_import import ModelImportError
    from pipelines.spec import SpecError, load_spec

    src = tmp_path / "sharded"
    _, shards = _sharded("qwen2", src)
    load_spec(_spec(tmp_path, src))
    _truncate(src / shards[0])
    with pytest.raises(SpecError) as ei:
        load_spec(_spec(tmp_path, src))
    (issue,) = [i for i in ei.value.issues if i.stage == "base"]
    assert issue.field == "path" and issue.message.startswith(f"{src / shards[0]}: truncated")
    with pytest.raises(ModelImportError, match=rf"^stage 'base', field 'path': {src / shards[0]}: truncated"):
        run_kind("hf_model", {"path": str(src)}, lmforge_home, stage="base", **QUIET)
    assert _stored(lmforge_home) == []
