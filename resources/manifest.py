"""What an artifact's ``manifest.json`` records, how it is written, and how a stored directory is checked
against it.

Key design choice: the manifest is written last, through a ``.partial`` file fsynced and renamed into
place, and it lists every file of the artifact with its size and SHA-256 (``manifest.json`` itself
excepted). So a directory with a manifest is complete, a read can check presence and size with one
``stat`` per file (:func:`check_files`), and ``lmforge verify`` checks every byte. A manifest that cannot
be read as such is :class:`ManifestError`, which makes its artifact damaged, never a crash. The data
version (the materialization's Dagster ``data_version``) is hashed in the same pass over the same bytes,
minus the metadata and the resumable ``training_state/``, so it changes exactly when the data a child
reads changes.
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
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if rel == MANIFEST:
            continue
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


def check_files(path: Path, manifest: dict[str, Any], *, hashes: bool = False) -> list[str]:
    """Problems of an artifact directory against its manifest's file list (empty: intact).

    Without ``hashes`` this is a ``stat`` per file (presence and size); with it every byte is hashed.
    A manifest without a file list yields no problems (legacy artifacts are checked by presence only).
    """
    problems = []
    for f in manifest.get("files") or []:
        p = path / f["path"]
        try:
            size = p.stat().st_size
        except OSError:
            problems.append(f"{p}: missing")
            continue
        if size != f["size"]:
            problems.append(f"{p}: {size} bytes, the manifest records {f['size']}")
        elif hashes and file_sha256(p) != f["sha256"]:
            problems.append(f"{p}: content differs from the manifest's SHA-256")
    return problems



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
