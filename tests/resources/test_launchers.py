"""Launcher pieces that need no training: the torchrun command per node, the multi-node config rules, the
rank blamed for a failed job from the records its ranks leave, and that local agents never outlive a
failure."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from resources.launchers import SubprocessLauncher, rank_failure, run_local_nodes, torchrun_command

pytestmark = pytest.mark.unit


def test_multinode_command_has_c10d_rendezvous_node_rank_and_bounded_join():
    cmd = torchrun_command(
        Path("entry.py"), ["job.json"], nproc_per_node=1, nnodes=2, node_rank=1,
        rdzv_endpoint="127.0.0.1:29500", rdzv_timeout=30,
    )  # fmt: skip
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    for part in (
        "--nnodes=2",
        "--node_rank=1",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=127.0.0.1:29500",
        "--max_restarts=0",
        "--rdzv_conf=join_timeout=30",
    ):
        assert part in cmd
    assert cmd[-2:] == ["entry.py", "job.json"]
    assert "--standalone" in torchrun_command(Path("entry.py"), [], nproc_per_node=2)
    # the agents' log folders go where the job says, not into the system temp directory
    logged = torchrun_command(Path("entry.py"), ["job.json"], nproc_per_node=2, log_dir=Path("work/logs"))
    assert logged[-3:] == [f"--log-dir={Path('work/logs')}", "entry.py", "job.json"]
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        torchrun_command(Path("entry.py"), [], nnodes=2)


def test_pretrain_multinode_settings_are_validated():
    from assets.pretrain import PRETRAIN
    from tests.assets.test_pretrain import TINY

    def errs(**over):
        return dict(
            PRETRAIN.validate(PRETRAIN.config.model_validate({**TINY, "launcher": "torchrun", **over}), {})
        )

    assert "rdzv_endpoint" in errs(nnodes=2)
    assert errs(nnodes=2, local_nodes=True) == {}
    assert "node_rank" in errs(nnodes=2, rdzv_endpoint="h:1", node_rank=2)
    assert "node_rank" in errs(nnodes=2, local_nodes=True, node_rank=1)


def _rec(work: Path, rank: int, state: str, **err) -> None:
    (work / f"rank{rank}.json").write_text(
        json.dumps({"rank": rank, "pid": 100 + rank, "host": "h", "state": state})
    )
    if err:
        (work / f"error-rank{rank}.json").write_text(json.dumps({"rank": rank, **err}))


def test_rank_that_vanished_is_blamed_over_ranks_that_failed_after_it(tmp_path):
    _rec(tmp_path, 0, "failed", type="DistBackendError", message="Connection closed by peer")
    _rec(tmp_path, 1, "running")
    msg = rank_failure(tmp_path)
    assert msg.startswith("rank 1 (pid 101 on h) died without reporting an error")
    assert "rank 0 failed" in msg


def test_rank_with_its_own_error_is_blamed_over_terminated_ranks(tmp_path):
    _rec(tmp_path, 0, "terminated", type="Terminated", message="SIGTERM")
    _rec(tmp_path, 1, "failed", type="ValueError", message="bad shard")
    assert rank_failure(tmp_path).startswith("rank 1 failed: ValueError: bad shard")
    assert rank_failure(tmp_path / "none") is None


def test_failed_local_agent_stops_the_others(tmp_path):
    import os

    pid_file = tmp_path / "pid"
    slow = [
        sys.executable,
        "-c",
        f"import os, time\nopen({str(pid_file)!r} + '.tmp', 'w').write(str(os.getpid()))"
        f"\nos.replace({str(pid_file)!r} + '.tmp', {str(pid_file)!r})\ntime.sleep(120)",
    ]
    # fails once the other agent is up (bounded wait), as a crashing node 0 would
    fail = [
        sys.executable,
        "-c",
        f"import os, sys, time\nt = time.time() + 60\nwhile not os.path.exists({str(pid_file)!r}) and time.time() < t:"
        "\n    time.sleep(0.05)\nprint('boom')\nsys.exit(3)",
    ]
    lines: list[str] = []
    # node 0 (through the launcher) fails; node 1, sleeping, must be stopped, not waited for
    with pytest.raises(RuntimeError, match="exited with 3"):
        run_local_nodes(SubprocessLauncher(lines.append), [fail, slow], log=lines.append, stop_timeout=10)
    with pytest.raises(ProcessLookupError):  # the sleeping agent is gone, not left behind
        os.kill(int(pid_file.read_text()), 0)
    with pytest.raises(RuntimeError, match="node 1 agent exited with 3"):
        run_local_nodes(
            SubprocessLauncher(lines.append), [[sys.executable, "-c", "pass"], fail], log=lines.append
        )
    assert "[node 1] boom" in lines


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet counts as dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _orphan_after_parent_killed(tmp_path: Path, guard: bool) -> bool:
    """Start a parent that starts a sleeping child (through the lifeline or not), SIGKILL the parent, and
    say whether the child still runs (guarded: within 20 s; the control: 2 s later). It is stopped in any case."""
    import os
    import signal
    import subprocess
    import time

    child = "[sys.executable, '-c', 'import time; time.sleep(120)']"
    cmd = f"guarded({child})" if guard else child
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time\nfrom resources.lifeline import guarded\n"
         f"p = subprocess.Popen({cmd})\nprint(p.pid, flush=True)\ntime.sleep(120)"],
        stdout=subprocess.PIPE, text=True, cwd=str(Path(__file__).resolve().parents[2]),
    )  # fmt: skip
    pid = int(parent.stdout.readline())
    deadline = time.monotonic() + 20
    while guard and time.monotonic() < deadline and "lifeline" in Path(f"/proc/{pid}/cmdline").read_text():
        time.sleep(0.05)  # the lifeline has not exec'd the child yet
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + (20 if guard else 2)
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    survived = _alive(pid)
    if survived:
        os.kill(pid, signal.SIGKILL)
    return survived


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_training_child_dies_with_the_process_that_started_it(tmp_path):
    assert _orphan_after_parent_killed(tmp_path, guard=False)  # the control: a plain child is orphaned
    assert not _orphan_after_parent_killed(tmp_path, guard=True)


def test_new_job_waits_for_ranks_of_an_earlier_run_still_stopping(tmp_path):
    import subprocess

    from resources.launchers import JOB_LOCK, run_torchrun_job

    work = tmp_path / "work"
    work.mkdir()
    ready, leaving = tmp_path / "ready", tmp_path / "leaving"
    # a rank of a killed run: holds the job lock shared, as train_entry does, for a moment more
    survivor = subprocess.Popen(
        [sys.executable, "-c",
         f"import fcntl, os, time\nfd = os.open({str(work / JOB_LOCK)!r}, os.O_RDWR | os.O_CREAT)"
         f"\nfcntl.flock(fd, fcntl.LOCK_SH)\nopen({str(ready)!r}, 'w').close()\ntime.sleep(1.5)"
         f"\nopen({str(leaving)!r}, 'w').close()"],
    )  # fmt: skip
    while not ready.exists() and survivor.poll() is None:
        pass

    class Recorder:
        def run(self, command, *, env=None, extras=None, cwd=None):
            self.after_survivor = leaving.exists()
            self.command = command
            (work / "result.json").write_text(json.dumps({"ok": True}))
            return 0

    launcher, lines = Recorder(), []
    assert run_torchrun_job({}, work, stage="base", launcher=launcher, nproc_per_node=1, log=lines.append) == {
        "ok": True
    }
    assert launcher.after_survivor  # the new job started only once the survivor was exiting
    survivor.wait()
    assert any("waiting" in line for line in lines)
    assert launcher.command[:4] == [sys.executable, "-m", "resources.lifeline", str(__import__("os").getpid())]
