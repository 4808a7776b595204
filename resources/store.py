"""Content-addressed artifact store: ``$LMFORGE_HOME/artifacts/<kind>/<version>/``.

Key design choice: an artifact directory exists only once it is complete. A stage writes into a private
temporary directory beside the final one; ``manifest.json`` is written last, then the whole directory is
renamed into place (``os.rename`` is atomic within one file system). A crash at any point leaves at most
a ``.tmp-*`` directory that no reader looks at and that :meth:`ArtifactStore.sweep` removes; a directory
without its manifest is treated as absent.

Resumable work (training checkpoints) must survive a crash, so it lives outside the artifact, under
``$LMFORGE_HOME/work/<kind>/<version>/``; the stage copies what belongs in the final artifact.

This module imports no Dagster, so the CLI and tests use it directly.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
METADATA = "metadata.json"

DEFAULT_HOME = Path.home() / ".lmforge"


def default_home() -> Path:
    """Where lmforge keeps artifacts, the catalog and Dagster's instance.

    ``$LMFORGE_HOME`` if set (made absolute), else ``~/.lmforge``. Called by resources and the CLI at run
    time, never at import time.
    """
    env = os.environ.get("LMFORGE_HOME")
    return Path(env).expanduser().resolve() if env else DEFAULT_HOME


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


def content_hash(root: Path, exclude: tuple[str, ...] = (MANIFEST, METADATA)) -> str:
    """SHA-256 over the relative paths and bytes of every file under ``root`` (sorted), minus ``exclude``.

    This is the materialization's Dagster ``data_version``: it changes exactly when what was written
    changes, so children are marked stale only for real data changes.
    """
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if rel in exclude or rel.startswith("training_state/"):
            continue
        h.update(rel.encode() + b"\0")
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()[:24]


@dataclass(frozen=True)
class StoredArtifact:
    kind: str
    version: str
    path: Path
    manifest: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest.get("metrics", {})

    def metadata(self) -> dict[str, Any]:
        f = self.path / METADATA
        return json.loads(f.read_text()) if f.exists() else {}


class ArtifactStore:
    """Directory-per-version store. Safe for several processes: writers never share a temp directory,
    and the rename either wins or finds that another writer already stored the same version."""

    def __init__(self, home: Path | str):
        self.home = Path(home).expanduser().resolve()
        self.root = self.home / "artifacts"

    # -- paths ---------------------------------------------------------------------------------
    def path(self, kind: str, version: str) -> Path:
        return self.root / kind / version

    def work_dir(self, kind: str, version: str) -> Path:
        """Persistent scratch for resumable state of one version (survives crashes, not part of the artifact)."""
        d = self.home / "work" / kind / version
        d.mkdir(parents=True, exist_ok=True)
        return d

    # -- reads ---------------------------------------------------------------------------------
    def exists(self, kind: str, version: str) -> bool:
        return (self.path(kind, version) / MANIFEST).is_file()

    def get(self, kind: str, version: str) -> StoredArtifact | None:
        p = self.path(kind, version)
        m = p / MANIFEST
        if not m.is_file():
            return None
        return StoredArtifact(kind, version, p, json.loads(m.read_text()))

    def find(self, version: str) -> StoredArtifact | None:
        """Look an artifact up by version alone (versions are unique across kinds)."""
        if not self.root.exists():
            return None
        for kdir in self.root.iterdir():
            art = self.get(kdir.name, version)
            if art:
                return art
        return None

    def all(self) -> Iterator[StoredArtifact]:
        if not self.root.exists():
            return
        for kdir in sorted(self.root.iterdir()):
            if not kdir.is_dir():
                continue
            for vdir in sorted(kdir.iterdir()):
                if vdir.name.startswith(".tmp-"):
                    continue
                art = self.get(kdir.name, vdir.name)
                if art:
                    yield art

    # -- writes --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self, kind: str, version: str) -> Iterator[Path]:
        """Yield a fresh temporary directory; the caller fills it and calls :meth:`commit`.

        If the block raises, the temporary directory is removed and nothing becomes visible. If the
        process is killed, the ``.tmp-*`` directory stays behind but is invisible to readers and is
        removed by the next :meth:`sweep`.
        """
        kdir = self.root / kind
        kdir.mkdir(parents=True, exist_ok=True)
        tmp = kdir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def commit(
        self,
        tmp: Path,
        kind: str,
        version: str,
        manifest: dict[str, Any],
        metadata: dict[str, Any] | None = None,
    ) -> StoredArtifact:
        """Write metadata, then ``manifest.json`` last, then rename ``tmp`` to its final place.

        If another process stored the same version meanwhile, its copy wins (same inputs, same version)
        and ``tmp`` is discarded.
        """
        if metadata is not None:
            (tmp / METADATA).write_text(json.dumps(metadata, indent=1, default=str))
        manifest = dict(manifest)
        manifest.setdefault("data_version", content_hash(tmp))
        manifest.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        manifest.setdefault("host", socket.gethostname())
        with contextlib.suppress(Exception):
            manifest.setdefault("user", getpass.getuser())
        manifest.setdefault("git", git_state())
        mtmp = tmp / (MANIFEST + ".partial")
        mtmp.write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
        os.replace(mtmp, tmp / MANIFEST)
        final = self.path(kind, version)
        try:
            os.rename(tmp, final)
        except OSError:
            if not self.exists(kind, version):
                # A stale directory without a manifest (should not happen: renames are atomic) -- replace it.
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
        art = self.get(kind, version)
        assert art is not None
        return art

    def sweep(self, older_than_s: float = 0.0) -> int:
        """Remove leftover temporary directories of crashed writers. Returns how many were removed."""
        n = 0
        if not self.root.exists():
            return 0
        now = time.time()
        for kdir in self.root.iterdir():
            if not kdir.is_dir():
                continue
            for d in kdir.glob(".tmp-*"):
                if now - d.stat().st_mtime >= older_than_s:
                    shutil.rmtree(d, ignore_errors=True)
                    n += 1
        return n
