"""Errors a person can read: a failed `lmforge materialize` ends with the stage, the cause and the file
(not Dagster's "Error occurred while executing op"), the full trace goes to the run's log, a full disk is
named as such, and `lmforge runs` shows the failed stage with its message."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from pipelines.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("LMFORGE_HOME", str(h))
    monkeypatch.setenv("DAGSTER_HOME", str(h / "dagster"))
    return h


def _spec(tmp_path: Path, name: str, stage: str) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"pipeline: {name}\nstages:\n  {stage}\n")
    return p


def _tail(text: str, n: int) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip()][-n:]


def test_failed_stage_ends_with_stage_cause_and_file(tmp_path, home, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": "b"}\n{"text": "c"}\n[1, 2]\n')
    spec = _spec(tmp_path, "bad_in", f"docs: {{kind: load_documents, paths: [{bad}]}}")
    assert main(["--home", str(home), "materialize", str(spec)]) == 1
    err = capsys.readouterr().err
    log_line, cause, where = _tail(err, 3)
    assert cause == f"FAILED stage bad_in/docs: ValueError: {bad}:4: not a JSON object"
    assert where.startswith("raised at ops/data/load.py:") and where.endswith("in _rows_jsonl")
    assert "Error occurred while executing op" not in "\n".join(_tail(err, 3))
    # the full trace stays in the run's log
    log = Path(log_line.split("full log with traces: ", 1)[1].split(" and the Dagster UI", 1)[0])
    assert log.parent == home / "logs"
    text = log.read_text()
    assert "STEP_FAILURE" in text and 'ops/data/load.py", line' in text and "not a JSON object" in text

    assert main(["--home", str(home), "runs"]) == 0
    out = capsys.readouterr().out
    first, second = out.splitlines()[:2]
    assert "FAILURE" in first and "bad_in: docs" in first
    assert second.strip() == f"failed stage bad_in/docs: ValueError: {bad}:4: not a JSON object"


def test_stage_out_of_disk_space_is_named(tmp_path, home, capsys, monkeypatch):
    src = tmp_path / "docs.jsonl"
    src.write_text('{"text": "hello"}\n')

    def full_disk(rows, out):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "documents.parquet"))

    monkeypatch.setattr("ops.data.load.write_documents", full_disk)
    spec = _spec(tmp_path, "full_in", f"docs: {{kind: load_documents, paths: [{src}]}}")
    assert main(["--home", str(home), "materialize", str(spec)]) == 1
    cause, where = _tail(capsys.readouterr().err, 2)
    assert cause.startswith("FAILED stage full_in/docs: OSError: [Errno 28] No space left on device")
    assert "documents.parquet" in cause and where.startswith("raised at ")


def test_warc_import_with_unreadable_records_names_the_files(tmp_path, home, capsys):
    junk = tmp_path / "junk.warc"
    junk.write_bytes(b"this is not a WARC file\n" * 50)
    spec = _spec(tmp_path, "warc_in", f"crawl: {{kind: crawl, source: warc, warc: [{junk}]}}")
    assert main(["--home", str(home), "materialize", str(spec)]) == 1
    tail = _tail(capsys.readouterr().err, 3)
    assert tail[0].startswith("FAILED stage warc_in/crawl: a blocking check failed")
    assert tail[1] == "failed check 'non_empty': 0 response records imported"
    assert tail[2].startswith("failed check 'no_bad_records': 1 damaged record(s) skipped")
    assert "examples: junk.warc: ValueError: not a WARC record" in tail[2]


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def _fill(mount: Path, leave: int) -> None:
    st = os.statvfs(mount)
    with (mount / "filler").open("wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))


def test_full_disk_says_no_space_left_on_device(tmp_path, monkeypatch, capsys):
    """A real full disk (a tiny tmpfs holding LMFORGE_HOME): the stage's own write fails, and when even
    the Dagster instance cannot write, the CLI still says "No space left on device", never only sqlite's
    "disk I/O error"."""
    mnt = tmp_path / "mnt"
    if not _mount_tmpfs(mnt, "16m"):
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)")
    try:
        home = mnt / "home"
        monkeypatch.setenv("LMFORGE_HOME", str(home))
        monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
        small = tmp_path / "small.jsonl"
        small.write_text('{"text": "hello"}\n')
        big = tmp_path / "big.jsonl"
        with big.open("w") as f:  # ~3 MB of incompressible text
            for _ in range(1000):
                f.write(json.dumps({"text": os.urandom(1500).hex()}) + "\n")
        ok = _spec(tmp_path, "small_in", f"docs: {{kind: load_documents, paths: [{small}]}}")
        assert main(["--home", str(home), "materialize", str(ok)]) == 0
        spec = _spec(tmp_path, "big_in", f"docs: {{kind: load_documents, paths: [{big}]}}")

        _fill(mnt, 400_000)  # room for the instance's writes, not for the stage's Parquet
        capsys.readouterr()
        assert main(["--home", str(home), "materialize", str(spec)]) == 1
        cause, _ = _tail(capsys.readouterr().err, 2)
        assert cause.startswith("FAILED stage big_in/docs: OSError:") and "No space left on device" in cause

        (mnt / "filler").unlink()
        _fill(mnt, 0)  # nothing left: the instance itself fails
        assert main(["--home", str(home), "materialize", str(spec)]) == 1
        captured = capsys.readouterr()
        last = _tail(captured.err, 1)[0]
        assert last.startswith("No space left on device") and str(home) in last
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=60)
