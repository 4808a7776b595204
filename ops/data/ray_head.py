"""A throwaway single-machine Ray head (``ray start --head --block``) for tests and benchmarks.

Key design choices:

* The head runs in its own session (process group), so stopping it ends exactly the processes it started:
  first SIGTERM to ``ray start`` itself (which stops its GCS, raylet and workers), then, after a bounded
  wait, SIGKILL to whatever of that group is left. ``ray stop`` is never used: it ends every Ray process of
  the user on the machine, including other clusters.
* Every port the head opens is chosen free at start (GCS, client server, dashboard agent), so several
  heads can share a machine. Ray advertises the machine's own interface address for its components even
  when started on 127.0.0.1; the cluster is still local to this machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


@contextmanager
def local_ray_head(
    num_cpus: int = 2,
    log: Path | None = None,
    start_timeout_s: float = 120.0,
    stop_timeout_s: float = 30.0,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Start a Ray head on this machine with ``num_cpus`` CPUs; yields its address (``127.0.0.1:port``) once
    the cluster accepts a driver, and stops it on exit."""
    port = free_port()
    cmd = [
        _ray_cli(),
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(port),
        "--num-cpus",
        str(num_cpus),
        "--include-dashboard=false",
        "--disable-usage-stats",
        "--object-store-memory",
        str(100 * 2**20),
        "--ray-client-server-port",
        str(free_port()),
        "--dashboard-agent-listen-port",
        str(free_port()),
    ]
    if log is None:
        import tempfile

        log = Path(tempfile.mkstemp(prefix="ray-head-", suffix=".log")[1])
    out = open(log, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    address = f"127.0.0.1:{port}"
    try:
        _wait_ready(proc, address, start_timeout_s, log)
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + stop_timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=stop_timeout_s)
        out.close()


def _wait_ready(proc: subprocess.Popen, address: str, timeout_s: float, log: Path) -> None:
    """Bounded wait until ``ray start`` reports the runtime started and the GCS port answers."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"ray start exited with {proc.returncode}\n{tail}")
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            if "Ray runtime started" in log.read_text(errors="replace"):
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the Ray head at {address} did not come up within {timeout_s:g}s")
