"""Trust in the artifact graph through the CLI and Dagster: two materializations of one spec at once
compute each version once; a damaged artifact (a file truncated, edited in place or not in its manifest,
an unreadable manifest) is shown by `plan`, recomputed by `materialize` and found by `verify`; an
artifact whose blocking check failed is shown as failed, never feeds a downstream stage, and is
recomputed by a rerun; temporary directories of dead runs are swept by the next materialize."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

import tests.pipelines.toy_kinds  # noqa: F401
from pipelines.cli import main
from pipelines.spec import load_spec
from resources.manifest import stat_key
from resources.store import ArtifactStore

ROOT = Path(__file__).resolve().parents[2]
SPECS = Path(__file__).parent / "specs"
pytestmark = pytest.mark.integration


def _plan(home: Path, spec: Path, capsys) -> dict[str, str]:
    capsys.readouterr()
    assert main(["--home", str(home), "plan", str(spec)]) == 0
    out = {}
    for ln in capsys.readouterr().out.splitlines():
        name, _kind, _version, status = ln.split(None, 3)
        out[name] = status
    return out


def _materializations(home: Path, pipeline: str, stage: str) -> list[dg.AssetMaterialization]:
    inst = dg.DagsterInstance.from_config(str(home / "dagster"))
    recs = inst.fetch_materializations(dg.AssetKey([pipeline, stage]), limit=100).records
    return [r.asset_materialization for r in recs]


def _cache_hits(home: Path, pipeline: str, stage: str) -> list[bool]:
    return sorted(m.metadata["lmforge/cache_hit"].value for m in _materializations(home, pipeline, stage))


def test_two_concurrent_materializations_compute_each_version_once(lmforge_home, tmp_path):
    """The data chain whose dedupe crashed when two runs shared its work directory."""
    from resources.site import make_resource

    spec_path = tmp_path / "conc.yaml"
    spec_path.write_text(
        "pipeline: conc\nstages:\n"
        "  crawl:  {kind: crawl, max_pages: 30, max_depth: 2}\n"
        "  text:   {kind: extract, from: crawl}\n"
        "  clean:  {kind: filter, from: text}\n"
        "  corpus: {kind: dedupe, from: clean}\n"
    )
    spec = load_spec(spec_path)
    make_resource(lmforge_home).ensure_rendered()  # the offline site, rendered once for both runs
    store = ArtifactStore(lmforge_home)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LMFORGE_HOME": str(lmforge_home)}
    cmd = [sys.executable, "-m", "pipelines.cli", "materialize", str(spec_path)]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    # Holding the first stage's lock here makes both runs reach it before either computes anything:
    # they start together, whatever the machine's load.
    with store.lock("crawl", spec.stages["crawl"].version, holder="the test"):
        procs = [
            subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f.open("w"), stderr=subprocess.STDOUT)
            for f in logs
        ]
        deadline = time.time() + 600
        while time.time() < deadline:
            waiting = [("is in use by" in f.read_text()) for f in logs]
            if all(waiting) or all(p.poll() is not None for p in procs):
                break
            time.sleep(0.5)
    rcs = [p.wait(timeout=900) for p in procs]
    outs = [f.read_text() for f in logs]
    assert rcs == [0, 0], "\n\n".join(o[-3000:] for o in outs)
    for out in outs:
        assert f"pid {os.getpid()}" in out and "(the test)" in out  # whom it waited for
    for s in spec.stages:
        assert _cache_hits(lmforge_home, "conc", s) == [False, True], s  # computed once, reused once
    corpus = store.get("dedupe", spec.stages["corpus"].version)
    assert corpus is not None and corpus.metrics["documents_out"] > 0
    assert not list(store.root.glob("*/.tmp-*"))


def test_damaged_artifact_is_shown_recomputed_and_verified(lmforge_home, capsys):
    spec_path = SPECS / "toy.yaml"
    spec = load_spec(spec_path)
    home = ["--home", str(lmforge_home)]
    assert main([*home, "materialize", str(spec_path)]) == 0
    store = ArtifactStore(lmforge_home)
    words = store.get("toy_text", spec.stages["words"].version)
    f = words.path / "documents.parquet"
    good = f.read_bytes()
    f.write_bytes(good[: len(good) // 2])  # truncated to half

    rows = _plan(lmforge_home, spec_path, capsys)
    assert rows["words"].startswith("damaged: ") and str(f) in rows["words"]
    assert rows["upper"] == "stored"

    assert main([*home, "materialize", str(spec_path)]) == 0
    assert _cache_hits(lmforge_home, "toy", "words") == [False, False]  # recomputed, not reused
    assert _cache_hits(lmforge_home, "toy", "upper") == [False, True]
    assert f.read_bytes() == good
    (aside,) = store.root.glob(f"toy_text/.damaged-{words.version}-*")
    assert (aside / "documents.parquet").stat().st_size == len(good) // 2
    assert _plan(lmforge_home, spec_path, capsys)["words"] == "stored"

    # one flipped byte keeps the size, but the write changed the file's stat key: plan re-hashes it
    b = bytearray(good)
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))
    rows = _plan(lmforge_home, spec_path, capsys)
    assert rows["words"] == f"damaged: {f}: content differs from the manifest's SHA-256"
    assert main([*home, "materialize", str(spec_path)]) == 0
    assert _cache_hits(lmforge_home, "toy", "words") == [False, False, False]
    assert f.read_bytes() == good

    # bit rot keeps the stat key: reuse trusts it (plan says stored), verify's full hash does not
    rec = store.checked_path("toy_text", words.version)
    records = json.loads(rec.read_text())
    f.write_bytes(bytes(b))
    records["documents.parquet"][:5] = stat_key(f.stat())
    rec.write_text(json.dumps(records))
    assert _plan(lmforge_home, spec_path, capsys)["words"] == "stored"
    capsys.readouterr()
    assert main([*home, "verify", str(spec_path)]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED  words  toy_text/{words.version}: {f}: content differs" in out
    assert "moved aside to" in out and "ok       upper" in out
    assert _plan(lmforge_home, spec_path, capsys)["words"] == "to compute"

    # an artifact stored without a file list is legacy: trusted by manifest presence, and said so
    m = store.path("toy_upper", spec.stages["upper"].version) / "manifest.json"
    manifest = json.loads(m.read_text())
    del manifest["files"]
    m.write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main([*home, "verify"]) == 0
    out = capsys.readouterr().out
    assert f"legacy   toy_upper/{spec.stages['upper'].version}: stored without a file list" in out
    assert "ok       toy_text/" in out and "ok       toy_join/" in out


@pytest.mark.parametrize("content", ['{"kind": "toy_text", "fi', "", "[]"], ids=["cut", "empty", "list"])
def test_unreadable_manifest_is_damaged_for_every_command_and_recomputed(lmforge_home, capsys, content):
    spec_path = SPECS / "toy.yaml"
    spec = load_spec(spec_path)
    home = ["--home", str(lmforge_home)]
    assert main([*home, "materialize", str(spec_path)]) == 0
    store = ArtifactStore(lmforge_home)
    m = store.path("toy_text", spec.stages["words"].version) / "manifest.json"
    m.write_text(content)

    rows = _plan(lmforge_home, spec_path, capsys)
    assert rows["words"].startswith(f"damaged: {m}: ")
    assert rows["more"] == rows["upper"] == rows["joined"] == "stored"
    assert main([*home, "catalog", "rebuild"]) == 0
    assert "catalog rebuilt from 3 manifests" in capsys.readouterr().out
    assert main([*home, "materialize", str(spec_path)]) == 0
    assert _cache_hits(lmforge_home, "toy", "words") == [False, False]  # recomputed, not reused
    assert _cache_hits(lmforge_home, "toy", "more") == [False, True]
    assert len(list(store.root.glob(f"toy_text/.damaged-{spec.stages['words'].version}-*"))) == 1

    m.write_text(content)
    capsys.readouterr()
    assert main([*home, "verify"]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED  toy_text/{spec.stages['words'].version}: {m}: " in out
    assert out.count("ok       ") == 3 and "3 ok, 1 damaged" in out
    assert _plan(lmforge_home, spec_path, capsys)["words"] == "to compute"


def test_a_file_not_in_the_manifest_is_damaged_for_plan_and_verify(lmforge_home, capsys):
    spec_path = SPECS / "toy.yaml"
    spec = load_spec(spec_path)
    home = ["--home", str(lmforge_home)]
    assert main([*home, "materialize", str(spec_path)]) == 0
    extra = ArtifactStore(lmforge_home).path("toy_text", spec.stages["words"].version) / "documents-2.parquet"
    extra.write_bytes(b"PAR1")
    rows = _plan(lmforge_home, spec_path, capsys)
    assert rows["words"] == f"damaged: {extra}: not in the manifest's file list"
    capsys.readouterr()
    assert main([*home, "verify", str(spec_path)]) == 1
    out = capsys.readouterr().out
    assert f"DAMAGED  words  toy_text/{spec.stages['words'].version}: {extra}: not in" in out


def test_failed_blocking_check_is_shown_refused_downstream_and_recomputed(lmforge_home, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    spec_path = tmp_path / "f.yaml"
    spec_path.write_text(
        f"pipeline: f\nstages:\n  docs: {{kind: load_documents, paths: [{json.dumps(str(empty))}]}}\n"
        "  corpus: {kind: dedupe, from: docs}\n"
    )
    home = ["--home", str(lmforge_home)]
    assert main([*home, "materialize", str(spec_path), "--stages", "docs"]) == 1  # its blocking check
    rows = _plan(lmforge_home, spec_path, capsys)
    assert rows["docs"] == "failed: check 'non_empty' failed (0 documents loaded)"
    assert rows["corpus"] == "to compute"

    assert main([*home, "materialize", str(spec_path), "--stages", "corpus"]) == 1
    err = capsys.readouterr().err
    assert "stage 'corpus' cannot start: upstream stage 'docs'" in err
    assert "failed its blocking check: check 'non_empty' failed (0 documents loaded)" in err
    assert not ArtifactStore(lmforge_home).exists("dedupe", load_spec(spec_path).stages["corpus"].version)

    # Dagster shows the failed check on the asset
    inst = dg.DagsterInstance.from_config(str(lmforge_home / "dagster"))
    ev = inst.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey(["f", "docs"]), "non_empty")]
    )
    assert ev[dg.AssetCheckKey(dg.AssetKey(["f", "docs"]), "non_empty")].evaluation.passed is False
    (mat,) = _materializations(lmforge_home, "f", "docs")
    assert "0 documents loaded" in mat.metadata["lmforge/failed"].value

    assert main([*home, "materialize", str(spec_path), "--stages", "docs"]) == 1
    assert _cache_hits(lmforge_home, "f", "docs") == [False, False]  # a rerun recomputes it


def test_materialize_sweeps_temporary_directories_of_dead_runs(lmforge_home, tmp_path):
    code = (
        "import tests.pipelines.toy_kinds; from pipelines.execute import run_kind; "
        f"run_kind('toy_text', {{'words': ['x'], 'crash_after_rows': 0}}, {str(lmforge_home)!r})"
    )
    env = {"LMFORGE_TEST_HARD_CRASH": "1", "PATH": "", "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env)
    assert p.returncode == 3
    (orphan,) = (lmforge_home / "artifacts" / "toy_text").glob(".tmp-*")
    work = ArtifactStore(lmforge_home).work_dir("toy_text", orphan.name[5:].rpartition("-")[0])
    (work / "state").write_text("resumable")
    assert main(["--home", str(lmforge_home), "materialize", str(SPECS / "toy.yaml")]) == 0
    assert not orphan.exists()  # the run that wrote it is dead, however recent
    assert (work / "state").read_text() == "resumable"
