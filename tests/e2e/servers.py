"""Start and stop Dagster servers for tests without leaking processes (own process group, SIGKILL fallback)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pipelines.instance import write_instance_config

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dagster_server(args: list[str], home: Path, log: Path, dev: bool = False, timeout: float = 120.0):
    """Run ``dagster dev`` (webserver + daemon) or ``dagster-webserver``; yield the base URL."""
    port = free_port()
    dh = home / "dagster"
    write_instance_config(dh)  # the repo's dagster.yaml plus the environment's storage and limits
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dh),
        "LMFORGE_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    if dev:
        cmd = [sys.executable, "-m", "dagster", "dev", *args, "-h", "127.0.0.1", "-p", str(port)]
    else:
        cmd = [sys.executable, "-m", "dagster_webserver", *args, "-h", "127.0.0.1", "-p", str(port)]
    with log.open("w") as lf:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(url + "/server_info", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"dagster server did not start: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    import json

    req = urllib.request.Request(
        url + "/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        out = json.loads(r.read())
    if "errors" in out:
        raise RuntimeError(out["errors"])
    return out["data"]


RUNS = "{ runsOrError { ... on Runs { results { runId status assetSelection { path } } } } }"
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


def run_ids(url: str) -> set[str]:
    return {r["runId"] for r in graphql(url, RUNS)["runsOrError"]["results"]}


def wait_for_new_run(url: str, known: set[str], assets: set[tuple[str, ...]], timeout: float = 300.0) -> dict:
    """Wait for the run, not in `known`, that materializes all of `assets` (automation may launch smaller
    runs alongside) to finish; return it (runId, status, assetSelection). Fails if there is no such run, or
    more than one, or it does not finish within `timeout` seconds."""
    deadline = time.time() + timeout
    runs: list[dict] = []
    while time.time() < deadline:
        runs = [
            r
            for r in graphql(url, RUNS)["runsOrError"]["results"]
            if r["runId"] not in known and assets <= {tuple(a["path"]) for a in r["assetSelection"] or []}
        ]
        if len(runs) > 1:
            raise AssertionError(f"expected one new run of {sorted(assets)}, got {runs}")
        if runs and runs[0]["status"] in TERMINAL:
            return runs[0]
        time.sleep(1)
    raise AssertionError(
        f"no new run of {sorted(assets)} finished within {timeout:.0f} s: {runs or 'none launched'}"
    )
