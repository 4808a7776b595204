"""A throwaway PostgreSQL server for tests: Debian's ``postgresql`` binaries, a cluster made with ``initdb``
in a temporary directory, listening on 127.0.0.1 at a free port, stopped and deleted afterwards.

The server refuses to run as root, so under root the cluster belongs to the ``postgres`` user (its
directory lives under /tmp, which that user can reach, unlike pytest's 0700 tmp_path).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .servers import free_port


def postgres_bin() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or None where they are absent."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(d, "initdb").exists() and Path(d, "pg_ctl").exists():
            return Path(d)
    return None


def _demote():
    """preexec_fn: run as ``postgres`` when started as root (the server refuses root)."""
    if os.geteuid() != 0:
        return None
    pw = pwd.getpwnam("postgres")

    def change():
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    return change


def _run(cmd: list[str], timeout: float) -> None:
    res = subprocess.run(cmd, preexec_fn=_demote(), capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "LC_ALL": "C.UTF-8"})
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")


@contextlib.contextmanager
def postgres_server(db: str = "dagster", timeout: float = 120.0):
    """Start a fresh cluster; yield its URL ``postgresql://postgres@127.0.0.1:<port>/<db>``."""
    bindir = postgres_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL binaries (initdb, pg_ctl) not found")
    root = Path(tempfile.mkdtemp(prefix="lmforge-pg-", dir="/tmp"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for p in (root, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    port = free_port()
    started = False
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
              "--no-sync"], timeout)
        opts = (f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        started = True
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-o", opts,
              "-w", "-t", str(int(timeout)), "start"], timeout + 10)
        import psycopg2

        url = f"postgresql://postgres@127.0.0.1:{port}"
        deadline = time.time() + timeout
        while True:
            try:
                con = psycopg2.connect(url + "/postgres", connect_timeout=5)
                break
            except psycopg2.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{db}"')
        con.close()
        yield f"{url}/{db}"
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop"], 40)
        shutil.rmtree(root, ignore_errors=True)
