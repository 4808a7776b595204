"""What an artifact's ``manifest.json`` records, how it is written, and how a stored directory is checked
against it.

Key design choice: the manifest is written last, through a ``.partial`` file fsynced and renamed into
place, and it lists every file of the artifact with its size and SHA-256 (``manifest.json`` itself
excepted). So a directory with a manifest is complete; a read (:func:`check_files`) lists the directory,
``stat``s each file, and re-hashes only the files whose stat key changed since their hash was last checked;
``lmforge verify`` hashes every byte. A manifest that cannot be read as such is :class:`ManifestError`,
which makes its artifact damaged, never a crash. The data version (the materialization's Dagster
``data_version``) is hashed in the same pass over the same bytes, minus the metadata and the resumable
``training_state/``, so it changes exactly when the data a child reads changes.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
METADATA = "metadata.json"


def git_state() -> dict[str, Any]:
    """The commit and dirty flag of the lmforge checkout, when it is a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


class ManifestError(ValueError):
    """A ``manifest.json`` that is not a readable manifest (truncated, empty, not an object, a malformed
    file list): its artifact is damaged."""


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at ``path``, checked for the shape every reader relies on; else :class:`ManifestError`."""
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ManifestError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(m, dict):
        raise ManifestError(f"{path}: the manifest is a JSON {type(m).__name__}, not an object")
    files = m.get("files")
    ok = {"path": str, "size": int, "sha256": str}
    if "files" in m and not (
        isinstance(files, list)
        and all(isinstance(f, dict) and all(isinstance(f.get(k), t) for k, t in ok.items()) for f in files)
    ):
        raise ManifestError(f"{path}: malformed file list (each entry needs path, size and sha256)")
    return m


def artifact_files(root: Path) -> list[Path]:
    """Every file under ``root`` but its ``manifest.json``, sorted: what the manifest's file list covers."""
    return [p for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).as_posix() != MANIFEST]


def stat_key(st: os.stat_result) -> list[int]:
    """What any write to a file, or its replacement by another, changes: size, mtime, ctime, inode, device."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory's entries (a rename inside it), to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hash_files(
    root: Path, exclude: tuple[str, ...], *, sync: bool = False
) -> tuple[list[dict[str, Any]], str]:
    """One pass over the files under ``root``: ``([{path, size, sha256}], data_version)``; with ``sync``
    each file is also flushed to stable storage once read.

    The file list covers every file except ``manifest.json``; the data version covers the same bytes
    minus ``exclude`` and ``training_state/`` (resumable state is not data a child depends on).
    """
    files: list[dict[str, Any]] = []
    h = hashlib.sha256()
    for p in artifact_files(root):
        rel = p.relative_to(root).as_posix()
        in_data = not (rel in exclude or rel.startswith("training_state/"))
        fh = hashlib.sha256()
        if in_data:
            h.update(rel.encode() + b"\0")
        size = 0
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                fh.update(chunk)
                size += len(chunk)
                if in_data:
                    h.update(chunk)
            if sync:
                os.fsync(f.fileno())
        if in_data:
            h.update(b"\0")
        files.append({"path": rel, "size": size, "sha256": fh.hexdigest()})
    return files, h.hexdigest()[:24]


def content_hash(root: Path, exclude: tuple[str, ...] = (MANIFEST, METADATA)) -> str:
    """SHA-256 over the relative paths and bytes of every file under ``root`` (sorted), minus ``exclude``.

    This is the materialization's Dagster ``data_version``: it changes exactly when what was written
    changes, so children are marked stale only for real data changes.
    """
    return hash_files(root, exclude)[1]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class StoredArtifact:
    kind: str
    version: str
    path: Path
    manifest: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest.get("metrics", {})

    @property
    def failed(self) -> str | None:
        """The blocking check failure this artifact was stored with (then it lives in ``.failed-*``)."""
        return self.manifest.get("failed")

    @property
    def legacy(self) -> bool:
        """Stored without a file list: only the manifest's presence can be checked."""
        return "files" not in self.manifest

    def metadata(self) -> dict[str, Any]:
        f = self.path / METADATA
        return json.loads(f.read_text()) if f.exists() else {}


@dataclass(frozen=True)
class ArtifactState:
    """What the store holds for one version: ``stored``, ``absent``, ``failed`` or ``damaged``.

    ``message`` says why for ``failed`` (the blocking check) and ``damaged`` (the first bad file);
    ``path`` is where the stored, failed or damaged directory lies.
    """

    status: str
    message: str = ""
    path: Path | None = None
    legacy: bool = False

    @property
    def usable(self) -> bool:
        return self.status == "stored"

    def describe(self) -> str:
        if self.status == "stored":
            return "stored (legacy: no file list)" if self.legacy else "stored"
        if self.status == "absent":
            return "to compute"
        return f"{self.status}: {self.message}"


def check_files(
    path: Path, manifest: dict[str, Any], *, hashes: bool = False, known: dict[str, list] | None = None
) -> tuple[list[str], dict[str, list]]:
    """Problems of an artifact directory against its manifest's file list (empty: intact), and the
    records ``{path: stat key + [sha256]}`` of the files hashed here whose bytes matched.

    Every listed file must be there with its recorded size, and no other file may be (one listing of the
    directory). A file is then hashed when ``hashes`` is set, or when ``known`` (the records of earlier
    checks) does not hold its current stat key with the manifest's SHA-256: any write changes mtime and
    ctime, so an unchanged key means unchanged bytes, short of silent bit rot, which only ``hashes`` sees.
    A manifest without a file list yields no problems (legacy artifacts are checked by presence only).
    """
    if "files" not in manifest:
        return [], {}
    problems: list[str] = []
    checked: dict[str, list] = {}
    listed = {f["path"] for f in manifest["files"]}
    for p in artifact_files(path):
        if p.relative_to(path).as_posix() not in listed:
            problems.append(f"{p}: not in the manifest's file list")
    for f in manifest["files"]:
        p = path / f["path"]
        try:
            st = p.stat()
        except OSError:
            problems.append(f"{p}: missing")
            continue
        if st.st_size != f["size"]:
            problems.append(f"{p}: {st.st_size} bytes, the manifest records {f['size']}")
            continue
        record = [*stat_key(st), f["sha256"]]
        if not hashes and (known or {}).get(f["path"]) == record:
            continue
        if file_sha256(p) != f["sha256"]:
            problems.append(f"{p}: content differs from the manifest's SHA-256")
        elif stat_key(p.stat()) == record[:-1]:  # not written to while it was hashed
            checked[f["path"]] = record
    return problems, checked


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_manifest(
    tmp: Path, manifest: dict[str, Any], metadata: dict[str, Any] | None = None, *, failed: str | None = None
) -> dict[str, Any]:
    """Write ``metadata.json``, then ``manifest.json`` last (with the file list, the data version, when,
    where, by whom, the git state and ``failed`` when a blocking check failed) into the directory ``tmp``;
    returns the manifest written.

    Every file is fsynced as it is hashed, the manifest before its rename and ``tmp`` after it: once ``tmp``
    is renamed into place (and its parent fsynced, :meth:`ArtifactStore.commit`), a crash cannot leave a
    manifest whose files are not on disk, nor a committed artifact without its manifest."""
    if metadata is not None:
        (tmp / METADATA).write_text(json.dumps(metadata, indent=1, default=str))
    manifest = dict(manifest)
    files, data_version = hash_files(tmp, (MANIFEST, METADATA), sync=True)
    for d in [p for p in tmp.rglob("*") if p.is_dir()]:
        fsync_path(d)  # the entries of files in subdirectories (train/shard-*.bin) must be durable too
    manifest["files"] = files
    manifest.setdefault("data_version", data_version)
    manifest.setdefault("created_at", utc_now())
    manifest.setdefault("host", socket.gethostname())
    with contextlib.suppress(Exception):
        manifest.setdefault("user", getpass.getuser())
    manifest.setdefault("git", git_state())
    if failed is not None:
        manifest["failed"] = failed
    mtmp = tmp / (MANIFEST + ".partial")
    with mtmp.open("w") as f:
        f.write(json.dumps(manifest, indent=1, sort_keys=True, default=str))
        f.flush()
        os.fsync(f.fileno())
    os.replace(mtmp, tmp / MANIFEST)
    fsync_path(tmp)
    return manifest
