"""The artifact store's trust rules without Dagster: a version's lock excludes other processes, names its
holder and dies with it; only dead writers' temporary directories are swept; the manifest's file list
catches a truncated or deleted file (size) and a changed byte (hash); an artifact whose blocking check
failed is kept aside and never returned as the version's result; an unreadable manifest or a file the
manifest does not list makes only that artifact damaged; reuse re-hashes exactly the files whose stat key
changed, and a commit is flushed to disk before and after its rename."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tests.pipelines.toy_kinds  # noqa: F401
from pipelines.execute import run_kind
from resources import manifest
from resources.manifest import stat_key
from resources.store import ArtifactStore

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.unit


def _hold_lock(home: Path, kind: str, version: str, holder: str) -> subprocess.Popen:
    """A separate process that takes the version's lock, says so on stdout, and sleeps until killed."""
    code = (
        "import sys, time; from resources.store import ArtifactStore; "
        f"s = ArtifactStore({str(home)!r}); "
        f"cm = s.lock({kind!r}, {version!r}, holder={holder!r}); cm.__enter__(); "
        "tmp = s.root / 'k' / '.tmp-v1-deadbeef'; tmp.mkdir(parents=True); "
        "print('locked', flush=True); time.sleep(600)"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert p.stdout.readline().strip() == "locked"
    return p


def test_lock_waits_names_the_holder_and_is_released_when_the_holder_is_killed(tmp_path):
    store = ArtifactStore(tmp_path)
    holder = _hold_lock(tmp_path, "k", "v1", "pipe/stage")
    try:
        said: list[str] = []

        def log(msg: str) -> None:
            said.append(msg)
            # the holder dies without any cleanup: the kernel must release its lock
            os.kill(holder.pid, signal.SIGKILL)

        t0 = time.time()
        with store.lock("k", "v1", holder="me", log=log):
            assert time.time() - t0 < 300
            info = json.loads(store.lock_path("k", "v1").read_text())
            assert info["pid"] == os.getpid() and info["holder"] == "me"
            with store.lock("k", "v1"):  # reentrant in one thread
                pass
        assert len(said) == 2
        assert f"pid {holder.pid}" in said[0] and "(pipe/stage)" in said[0] and "waiting" in said[0]
    finally:
        holder.kill()
        holder.wait()


def test_sweep_removes_only_temporary_directories_whose_writer_is_dead(tmp_path):
    store = ArtifactStore(tmp_path)
    live = _hold_lock(tmp_path, "k", "v1", "live writer")  # creates artifacts/k/.tmp-v1-deadbeef
    try:
        dead = store.root / "k" / ".tmp-v2-0badf00d"  # a writer of v2 that died: its lock is free
        dead.mkdir()
        work = store.work_dir("k", "v2")
        (work / "checkpoint.bin").write_bytes(b"resumable")
        assert store.sweep() == 1
        assert not dead.exists()
        assert (store.root / "k" / ".tmp-v1-deadbeef").is_dir()  # its writer is alive
        assert (work / "checkpoint.bin").read_bytes() == b"resumable"  # work dirs are never swept
    finally:
        live.kill()
        live.wait()
    assert store.sweep() == 1  # now that writer is dead too


def test_truncated_deleted_or_altered_files_are_caught_and_recomputed(lmforge_home):
    art, res = run_kind("toy_text", {"words": ["a", "b", "c"], "repeat": 50}, lmforge_home)
    assert res is not None
    files = {f["path"]: f for f in art.manifest["files"]}
    pq_file = art.path / "documents.parquet"
    assert files["documents.parquet"]["size"] == pq_file.stat().st_size
    assert len(files["documents.parquet"]["sha256"]) == 64
    store = ArtifactStore(lmforge_home)

    # truncated to half: the cheap check (sizes) refuses it, names the file, and a rerun recomputes
    data = pq_file.read_bytes()
    pq_file.write_bytes(data[: len(data) // 2])
    st = store.state("toy_text", art.version)
    assert st.status == "damaged" and str(pq_file) in st.message
    assert store.get("toy_text", art.version) is None
    said: list[str] = []
    again, res2 = run_kind(
        "toy_text", {"words": ["a", "b", "c"], "repeat": 50}, lmforge_home, log=said.append
    )
    assert res2 is not None and again.version == art.version
    assert pq_file.read_bytes() == data
    (aside,) = (lmforge_home / "artifacts" / "toy_text").glob(f".damaged-{art.version}-*")
    assert "damaged" in " ".join(said) and str(aside) in " ".join(said)
    assert "documents.parquet" in (aside / "DAMAGED.txt").read_text()

    # deleted: same
    pq_file.unlink()
    assert store.state("toy_text", art.version).status == "damaged"
    _, res3 = run_kind("toy_text", {"words": ["a", "b", "c"], "repeat": 50}, lmforge_home)
    assert res3 is not None

    # one byte changed in place, same size: the write changed the file's stat key, so reuse re-hashes it
    b = bytearray(pq_file.read_bytes())
    b[len(b) // 2] ^= 0xFF
    pq_file.write_bytes(bytes(b))
    st = store.state("toy_text", art.version)
    assert st.status == "damaged" and st.message == f"{pq_file}: content differs from the manifest's SHA-256"
    assert store.get("toy_text", art.version) is None
    _, res4 = run_kind("toy_text", {"words": ["a", "b", "c"], "repeat": 50}, lmforge_home)
    assert res4 is not None and pq_file.read_bytes() == data

    # bit rot under an unchanged stat key: reuse trusts the key; only verify's full hash sees it
    rotten = bytearray(data)
    rotten[len(rotten) // 2] ^= 0xFF
    pq_file.write_bytes(bytes(rotten))
    rec = store.checked_path("toy_text", art.version)
    records = json.loads(rec.read_text())
    records["documents.parquet"][:5] = stat_key(pq_file.stat())
    rec.write_text(json.dumps(records))
    assert store.get("toy_text", art.version) is not None
    (problem,) = store.verify("toy_text", art.version)
    assert str(pq_file) in problem and "SHA-256" in problem


def test_reuse_hashes_a_file_only_when_its_stat_key_changed(lmforge_home, monkeypatch):
    art, _ = run_kind("toy_text", {"words": ["a", "b"], "repeat": 20}, lmforge_home)
    store = ArtifactStore(lmforge_home)
    hashed: list[str] = []
    real = manifest.file_sha256
    monkeypatch.setattr(manifest, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    assert store.get("toy_text", art.version) is not None and store.state("toy_text", art.version).usable
    assert hashed == []  # the keys recorded at commit vouch for every file

    # a copy keeps the bytes but not the inode: hashed once on reuse, then trusted again
    pq_file = art.path / "documents.parquet"
    copy = pq_file.with_name("copy")
    shutil.copy2(pq_file, copy)
    os.replace(copy, pq_file)
    assert store.get("toy_text", art.version) is not None
    assert hashed == ["documents.parquet"]
    assert store.get("toy_text", art.version) is not None and hashed == ["documents.parquet"]

    # a lost record costs a re-hash of every file, never a wrong answer
    store.checked_path("toy_text", art.version).write_text("{not json")
    assert store.get("toy_text", art.version) is not None
    assert sorted(hashed[1:]) == sorted(f["path"] for f in art.manifest["files"])


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda m: m.write_text(m.read_text()[:50]), "unreadable manifest"),
        (lambda m: m.write_text(""), "unreadable manifest"),
        (lambda m: m.write_text("[]"), "the manifest is a JSON list, not an object"),
        (lambda m: m.write_text('{"files": [{"path": "documents.parquet"}]}'), "malformed file list"),
        (lambda m: m.write_text('{"version": "0123456789abcdef"}'), "records version 0123456789abcdef"),
    ],
    ids=["truncated", "empty", "list", "malformed-files", "other-version"],
)
def test_unreadable_manifest_makes_only_its_artifact_damaged(lmforge_home, damage, why):
    art, _ = run_kind("toy_text", {"words": ["a", "b"]}, lmforge_home)
    other, _ = run_kind("toy_text", {"words": ["c"]}, lmforge_home)
    m = art.path / "manifest.json"
    damage(m)
    store = ArtifactStore(lmforge_home)
    st = store.state("toy_text", art.version)
    assert st.status == "damaged" and st.message.startswith(f"{m}: ") and why in st.message
    assert store.get("toy_text", art.version) is None and store.unchecked("toy_text", art.version) is None
    (problem,) = store.verify("toy_text", art.version)
    assert problem == st.message
    assert [a.version for a in store.all()] == [other.version]
    assert store.verify("toy_text", other.version) == []

    said: list[str] = []
    again, res = run_kind("toy_text", {"words": ["a", "b"]}, lmforge_home, log=said.append)
    assert res is not None and again.version == art.version and store.get("toy_text", art.version)
    (aside,) = store.root.glob(f"toy_text/.damaged-{art.version}-*")
    assert why in (aside / "DAMAGED.txt").read_text() and str(aside) in " ".join(said)


def test_a_file_not_in_the_manifest_makes_the_artifact_damaged(lmforge_home):
    art, _ = run_kind("toy_text", {"words": ["a", "b"]}, lmforge_home)
    extra = art.path / "sub" / "stray.parquet"
    extra.parent.mkdir()
    extra.write_bytes(b"not written by the stage")
    store = ArtifactStore(lmforge_home)
    st = store.state("toy_text", art.version)
    assert st.status == "damaged" and st.message == f"{extra}: not in the manifest's file list"
    assert store.get("toy_text", art.version) is None
    assert store.verify("toy_text", art.version) == [st.message]
    again, res = run_kind("toy_text", {"words": ["a", "b"]}, lmforge_home)
    assert res is not None and not (again.path / "sub").exists()


def test_commit_flushes_files_manifest_and_directories_before_and_after_the_rename(lmforge_home, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    art, _ = run_kind("toy_text", {"words": ["a", "b"]}, lmforge_home)
    kdir = str(art.path.parent)
    tmp = next(p for p in synced if p.endswith("manifest.json.partial")).rpartition("/")[0]
    assert {f"{tmp}/{f['path']}" for f in art.manifest["files"]} <= set(synced)
    # every data file, then the manifest, then its directory entry, then the rename into place
    assert synced[-3:] == [f"{tmp}/manifest.json.partial", tmp, kdir]


def test_failed_blocking_check_is_kept_aside_and_never_an_input(lmforge_home):
    empty, res = run_kind("toy_text", {"words": []}, lmforge_home)
    assert res is not None and empty.failed and "non_empty" in empty.failed
    assert empty.path.name == f".failed-{empty.version}"
    store = ArtifactStore(lmforge_home)
    assert store.get("toy_text", empty.version) is None and not store.exists("toy_text", empty.version)
    st = store.state("toy_text", empty.version)
    assert st.status == "failed" and "non_empty" in st.message and st.describe().startswith("failed: ")
    assert list(store.all()) == []
    with pytest.raises(ValueError, match=r"input 'toy_text'.*failed a blocking check.*non_empty"):
        run_kind("toy_upper", {"from": "w"}, lmforge_home, inputs={"from_": [empty]})
    # a rerun recomputes it (no cache hit on a failed attempt)
    again, res2 = run_kind("toy_text", {"words": []}, lmforge_home)
    assert res2 is not None and again.failed


def test_warc_import_with_only_unreadable_records_is_stored_as_failed(lmforge_home, tmp_path):
    bad = tmp_path / "bad.warc.gz"
    bad.write_bytes(gzip.compress(b"this is not a WARC record\r\n\r\n" * 20))
    art, res = run_kind("crawl", {"source": "warc", "warc": [str(bad)]}, lmforge_home)
    assert res is not None and art.metrics["pages"] == 0
    assert art.failed and "non_empty" in art.failed
    assert ArtifactStore(lmforge_home).get("crawl", art.version) is None
