"""Content-addressed artifact store: ``$LMFORGE_HOME/artifacts/<kind>/<version>/``.

Key design choice: an artifact directory exists only once it is complete. A stage writes into a private
temporary directory beside the final one; ``manifest.json`` is written last, then the whole directory is
renamed into place (``os.rename`` is atomic within one file system). A crash at any point leaves at most
a ``.tmp-*`` directory that no reader looks at and that :meth:`ArtifactStore.sweep` removes; a directory
without its manifest is treated as absent.

Trust rules every reader gets from :meth:`ArtifactStore.get` (and :meth:`ArtifactStore.state` explains):

* One version is computed by one process at a time: :meth:`ArtifactStore.lock` takes an exclusive
  ``flock`` on ``$LMFORGE_HOME/locks/<kind>/<version>.lock`` (the OS releases it when the holder dies; the
  file names the holder's pid and host for whoever waits). Temporary directories are only created under
  that lock, so a ``.tmp-*`` directory whose lock is free belongs to a dead writer and is swept.
* The manifest lists every file with its size and SHA-256. A read checks that the directory holds
  exactly those files with those sizes, and re-hashes a file whose stat key (size, mtime, ctime, inode)
  is not the one recorded under ``$LMFORGE_HOME/cache/verified/`` when its hash was last checked (at
  commit, or by a read or verify since): any write changes the key, so an edited file is caught on
  reuse, and an unchanged one costs a ``stat``. :meth:`ArtifactStore.verify` hashes every byte (silent
  bit rot keeps the key). An unreadable manifest makes its artifact damaged. A damaged artifact is never
  returned; the writer that recomputes it first moves it aside to ``.damaged-<version>-<time>``.
  Artifacts whose manifest has no file list (stored before the list existed) are *legacy*: trusted on
  manifest presence.
* An artifact whose blocking check failed is committed to ``.failed-<version>/`` (its manifest carries
  ``failed``): kept for inspection, never at the version's path, so no reader can take it as the result.

Resumable work (training checkpoints) must survive a crash, so it lives outside the artifact, under
``$LMFORGE_HOME/work/<kind>/<version>/``; the stage copies what belongs in the final artifact. Work
directories are never swept: the version lock makes one process at a time use them.

What the manifest records, how it is written and how a directory is checked against it is
``resources/manifest.py``. This module imports no Dagster, so the CLI and tests use it directly.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .manifest import (
    MANIFEST,
    ArtifactState,
    ManifestError,
    StoredArtifact,
    check_files,
    fsync_path,
    read_manifest,
    stat_key,
    utc_now,
    write_manifest,
)

DEFAULT_HOME = Path.home() / ".lmforge"


def default_home() -> Path:
    """Where lmforge keeps artifacts, the catalog and Dagster's instance.

    ``$LMFORGE_HOME`` if set (made absolute), else ``~/.lmforge``. Called by resources and the CLI at run
    time, never at import time.
    """
    env = os.environ.get("LMFORGE_HOME")
    return Path(env).expanduser().resolve() if env else DEFAULT_HOME


class ArtifactStore:
    """Directory-per-version store. Safe for several processes: a version is written under its lock,
    writers never share a temporary directory, and the rename either wins or finds that another writer
    already stored the same version."""

    # (lock file, thread) -> depth: a version lock is reentrant within one thread and exclusive across
    # threads and processes (flock locks belong to the open file description, not to the process).
    _held: dict[tuple[str, int], int] = {}
    _held_guard = threading.Lock()

    def __init__(self, home: Path | str):
        self.home = Path(home).expanduser().resolve()
        self.root = self.home / "artifacts"

    # -- paths ---------------------------------------------------------------------------------
    def path(self, kind: str, version: str) -> Path:
        return self.root / kind / version

    def failed_path(self, kind: str, version: str) -> Path:
        return self.root / kind / f".failed-{version}"

    def lock_path(self, kind: str, version: str) -> Path:
        return self.home / "locks" / kind / f"{version}.lock"

    def checked_path(self, kind: str, version: str) -> Path:
        """The stat keys of the stored files whose hash was checked (a cache: losing it costs a re-hash)."""
        return self.home / "cache" / "verified" / kind / f"{version}.json"

    def work_dir(self, kind: str, version: str) -> Path:
        """Persistent scratch for resumable state of one version (survives crashes, not part of the artifact)."""
        d = self.home / "work" / kind / version
        d.mkdir(parents=True, exist_ok=True)
        return d

    # -- reads ---------------------------------------------------------------------------------
    def _read(self, kind: str, version: str, path: Path) -> StoredArtifact | None:
        """The artifact at ``path``; None without a manifest; :class:`ManifestError` if it is unreadable."""
        m = path / MANIFEST
        if not m.is_file():
            return None
        manifest = read_manifest(m)
        if manifest.get("version", version) != version:
            raise ManifestError(f"{m}: the manifest records version {manifest['version']}, not {version}")
        return StoredArtifact(kind, version, path, manifest)

    def _read_or_none(self, kind: str, version: str, path: Path) -> StoredArtifact | None:
        try:
            return self._read(kind, version, path)
        except ManifestError:
            return None

    def _check(self, art: StoredArtifact, *, hashes: bool = False) -> list[str]:
        """:func:`check_files` against the recorded stat keys; records the files it found intact."""
        rec = self.checked_path(art.kind, art.version)
        try:
            known = json.loads(rec.read_text())
        except (OSError, ValueError):
            known = {}
        known = known if isinstance(known, dict) else {}
        problems, checked = check_files(art.path, art.manifest, hashes=hashes, known=known)
        if checked:
            self._record_checked(art.kind, art.version, {**known, **checked})
        return problems

    def _record_checked(self, kind: str, version: str, records: dict[str, list]) -> None:
        rec = self.checked_path(kind, version)
        tmp = rec.with_name(f".{rec.name}.{uuid.uuid4().hex[:8]}")
        try:  # a cache: a home that cannot be written is still read, at the cost of re-hashing
            rec.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(records))
            os.replace(tmp, rec)
        except OSError:
            tmp.unlink(missing_ok=True)

    def exists(self, kind: str, version: str) -> bool:
        return self.get(kind, version) is not None

    def get(self, kind: str, version: str) -> StoredArtifact | None:
        """The stored artifact if it is complete and intact (see the module docstring), else None."""
        art = self._read_or_none(kind, version, self.path(kind, version))
        if art is None or self._check(art):
            return None
        return art

    def unchecked(self, kind: str, version: str) -> StoredArtifact | None:
        """The artifact at the version's path without checking its files (diagnostics and verify only)."""
        return self._read_or_none(kind, version, self.path(kind, version))

    def get_failed(self, kind: str, version: str) -> StoredArtifact | None:
        """The artifact kept after its blocking check failed (for inspection only), if any."""
        return self._read_or_none(kind, version, self.failed_path(kind, version))

    def state(self, kind: str, version: str) -> ArtifactState:
        """Whether ``version`` is stored and usable, absent, failed a blocking check, or damaged."""
        p = self.path(kind, version)
        try:
            art = self._read(kind, version, p)
        except ManifestError as e:
            return ArtifactState("damaged", str(e), p)
        if art is not None:
            problems = self._check(art)
            if problems:
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                return ArtifactState("damaged", problems[0] + more, p)
            return ArtifactState("stored", "", p, legacy=art.legacy)
        failed = self.get_failed(kind, version)
        if failed is not None:
            return ArtifactState("failed", str(failed.failed or "a blocking check failed"), failed.path)
        return ArtifactState("absent")

    def find(self, version: str) -> StoredArtifact | None:
        """Look an artifact up by version alone (versions are unique across kinds)."""
        if not self.root.exists():
            return None
        for kdir in self.root.iterdir():
            art = self.get(kdir.name, version)
            if art:
                return art
        return None

    def versions(self) -> Iterator[tuple[str, str]]:
        """``(kind, version)`` of every directory holding a manifest at a version's path, intact or not."""
        if not self.root.exists():
            return
        for kdir in sorted(self.root.iterdir()):
            if not kdir.is_dir():
                continue
            for vdir in sorted(kdir.iterdir()):
                if not vdir.name.startswith(".") and (vdir / MANIFEST).is_file():
                    yield kdir.name, vdir.name

    def all(self) -> Iterator[StoredArtifact]:
        """Every usable artifact (failed, damaged and temporary directories are skipped)."""
        for kind, version in self.versions():
            art = self.get(kind, version)
            if art:
                yield art

    def verify(self, kind: str, version: str) -> list[str]:
        """Hash every file of a stored artifact against its manifest; returns the problems found."""
        try:
            art = self._read(kind, version, self.path(kind, version))
        except ManifestError as e:
            return [str(e)]
        if art is None:
            return [f"{self.path(kind, version)}: no manifest"]
        return self._check(art, hashes=True)

    def quarantine(self, kind: str, version: str, reason: str) -> Path:
        """Move a damaged artifact aside (``.damaged-<version>-<time>``) so that nothing reads it and the
        version can be recomputed; ``DAMAGED.txt`` inside says why. Call with the version's lock held."""
        src = self.path(kind, version)
        dst = self.root / kind / f".damaged-{version}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:4]}"
        os.rename(src, dst)
        with contextlib.suppress(OSError):
            (dst / "DAMAGED.txt").write_text(f"{utc_now()}: {reason}\n")
            self.checked_path(kind, version).unlink(missing_ok=True)
        return dst

    # -- locks ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(
        self,
        kind: str,
        version: str,
        *,
        holder: str = "",
        log: Callable[[str], None] | None = None,
    ) -> Iterator[None]:
        """Hold the exclusive lock of one version (see :func:`file_lock`); reentrant within a thread."""
        lf = self.lock_path(kind, version)
        key = (str(lf), threading.get_ident())
        with self._held_guard:
            depth = self._held.get(key, 0)
            self._held[key] = depth + 1
        try:
            if depth:
                yield
                return
            with file_lock(lf, holder=holder, log=log, what=f"{kind} version {version}"):
                yield
        finally:
            with self._held_guard:
                if self._held[key] == 1:
                    del self._held[key]
                else:
                    self._held[key] -= 1

    # -- writes --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self, kind: str, version: str) -> Iterator[Path]:
        """Yield a fresh temporary directory, under the version's lock; the caller fills it and calls
        :meth:`commit`.

        If the block raises, the temporary directory is removed and nothing becomes visible. If the
        process is killed, the ``.tmp-*`` directory stays behind, invisible to readers, and the next
        :meth:`sweep` removes it (its lock is free once the process is gone).
        """
        with self.lock(kind, version):
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
        *,
        failed: str | None = None,
    ) -> StoredArtifact:
        """Write metadata, then ``manifest.json`` (with the file list) last, then rename ``tmp`` into place.

        ``failed`` (a blocking check's message) stores the directory as ``.failed-<version>`` instead,
        replacing an older failed attempt; a good commit removes any failed attempt of its version. If
        another process stored the same version meanwhile, its copy wins (same inputs, same version) and
        ``tmp`` is discarded.
        """
        written = write_manifest(tmp, manifest, metadata, failed=failed)
        files = {f["path"]: f["sha256"] for f in written["files"]}
        with self.lock(kind, version):
            if failed is not None:
                final = self.failed_path(kind, version)
                if final.exists():
                    old = final.with_name(f".tmp-{version}-{uuid.uuid4().hex[:8]}")
                    os.rename(final, old)
                    shutil.rmtree(old, ignore_errors=True)
                os.rename(tmp, final)
                fsync_path(final.parent)
                art = self.get_failed(kind, version)
                assert art is not None
                return art
            final = self.path(kind, version)
            try:
                os.rename(tmp, final)
            except OSError:
                state = self.state(kind, version)
                if state.usable:
                    files = {}  # another writer's copy stands, with the check records it made
                else:
                    # What sits there is incomplete or damaged: keep it aside, never read it.
                    if state.status == "damaged":
                        self.quarantine(kind, version, "replaced by a new commit: " + state.message)
                    else:
                        shutil.rmtree(final, ignore_errors=True)
                    os.rename(tmp, final)
            fsync_path(final.parent)
            if files:
                self._record_checked(kind, version, self._stat_records(final, files))
            stale = self.failed_path(kind, version)
            if stale.exists():
                shutil.rmtree(stale, ignore_errors=True)
            art = self.get(kind, version)
            assert art is not None
            return art

    @staticmethod
    def _stat_records(path: Path, files: dict[str, str]) -> dict[str, list]:
        """The check records of files just hashed into the manifest (a rename keeps their stat keys)."""
        return {rel: [*stat_key((path / rel).stat()), sha] for rel, sha in files.items()}

    def sweep(self) -> int:
        """Remove the ``.tmp-*`` directories of dead writers: those whose version lock no live process
        holds (a writer creates its temporary directory only under that lock). Returns how many."""
        n = 0
        if not self.root.exists():
            return 0
        for kdir in self.root.iterdir():
            if not kdir.is_dir():
                continue
            for d in kdir.glob(".tmp-*"):
                version = d.name[len(".tmp-") :].rpartition("-")[0]
                if not version:
                    continue
                # Held while removing, so no writer of this version can start meanwhile.
                try:
                    with self._try_lock(kdir.name, version) as got:
                        if got and d.exists():
                            shutil.rmtree(d, ignore_errors=True)
                            n += 1
                except OSError:
                    continue
        return n

    @contextlib.contextmanager
    def _try_lock(self, kind: str, version: str) -> Iterator[bool]:
        lf = self.lock_path(kind, version)
        with self._held_guard:
            if any(k[0] == str(lf) for k in self._held):
                yield False
                return
        lf.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lf, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EACCES):
                    yield False
                    return
                raise
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


@contextlib.contextmanager
def file_lock(
    path: Path,
    *,
    holder: str = "",
    log: Callable[[str], None] | None = None,
    what: str = "",
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; while another process holds it, say whom we wait for.

    The lock file records the holder's pid, host and ``holder`` label for whoever waits. It is never
    deleted (deleting it would let two processes lock two different files of the same name); the kernel
    drops the lock when the holder exits, crashed or not. Not reentrant (a second open file description
    of the same file blocks).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            name = what or str(path)
            if log is not None:
                log(f"{name} is in use by {_describe_holder(path)}; waiting for it")
            t0 = time.time()
            fcntl.flock(fd, fcntl.LOCK_EX)
            if log is not None:
                log(f"{name}: lock acquired after waiting {time.time() - t0:.1f}s")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now(), "holder": holder}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _describe_holder(lock_file: Path) -> str:
    try:
        info = json.loads(lock_file.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    who = f"pid {info.get('pid')} on {info.get('host')}"
    if info.get("holder"):
        who += f" ({info['holder']})"
    return who + f" since {info.get('since')}"
