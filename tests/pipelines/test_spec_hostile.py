"""Hostile or broken spec files are refused with one SpecError naming the file, within bounded time and memory:
an alias bomb, an oversized file, a runaway nesting, a recursive alias and an overly deep ``extends`` chain."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tests.pipelines.toy_kinds  # noqa: F401  (registers toy kinds)
from pipelines import spec_reader as S
from pipelines.spec import SpecError, load_spec

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
STAGES = "stages:\n  w: {kind: toy_text, words: [x]}\n"


def only_issue(path: Path) -> str:
    with pytest.raises(SpecError) as ei:
        load_spec(path)
    assert len(ei.value.issues) == 1, str(ei.value)
    assert ei.value.issues[0].file == str(path)
    return str(ei.value)


def bomb(levels: int, width: int) -> str:
    """A spec whose description is a billion-laughs list: ``levels`` anchors, each a list of ``width``
    aliases of the previous one, so the last expands to ``width ** levels`` strings."""
    out = ["pipeline: bomb\n", STAGES, "description:\n", '  - &l0 "lol"\n']
    for i in range(1, levels + 1):
        out.append(f"  - &l{i} [{', '.join([f'*l{i - 1}'] * width)}]\n")
    return "".join(out)


def test_alias_expansion_beyond_the_bound_is_refused(tmp_path):
    # 5**9 ~ 2M strings once expanded: far beyond the bound, small enough to be loaded (slowly) without it
    p = tmp_path / "bomb.yaml"
    p.write_text(bomb(9, 5))
    msg = only_issue(p)
    assert f"{p}: refused: aliases expand the document beyond {S.MAX_NODES} values" in msg


def test_billion_laughs_is_refused_in_bounded_memory(tmp_path):
    """The classic 10**9 expansion: refused by a process capped at 2 GiB of address space."""
    p = tmp_path / "laughs.yaml"
    p.write_text(bomb(9, 10))
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        import tests.pipelines.toy_kinds
        from pipelines.spec import SpecError, load_spec
        try:
            load_spec({str(p)!r})
        except SpecError as e:
            print(e)
            sys.exit(0)
        sys.exit("loaded")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith(f"{p}: refused: aliases expand the document beyond")


def test_dense_spec_is_refused_while_parsing(tmp_path):
    """Under the size limit but with more values than the bound: stopped at the first value past it."""
    p = tmp_path / "dense.yaml"
    p.write_text(f"pipeline: dense\n{STAGES}description: [" + ",".join(["1"] * 500_000) + "]\n")
    assert p.stat().st_size < S.MAX_SPEC_BYTES
    msg = only_issue(p)
    assert f"{p}:4: invalid YAML: more than {S.MAX_NODES} values" in msg


def test_recursive_alias_is_refused(tmp_path):
    p = tmp_path / "loop.yaml"
    p.write_text("pipeline: loop\nstages:\n  w: {kind: toy_text, words: &a [x, *a]}\n")
    assert "an alias refers to a node containing itself" in only_issue(p)


def test_oversized_spec_is_refused_before_parsing(tmp_path):
    p = tmp_path / "big.yaml"
    body = f"pipeline: big\n{STAGES}"
    # valid YAML: a comment pads the file to 2 MiB
    p.write_text(body + "#" * (2 * 1024 * 1024 - len(body) - 1) + "\n")
    msg = only_issue(p)
    assert f"{p}: spec is too large ({2 * 1024 * 1024} bytes; the limit is {S.MAX_SPEC_BYTES}" in msg


def test_spec_at_the_size_limit_loads(tmp_path):
    p = tmp_path / "big.yaml"
    body = f"pipeline: big\n{STAGES}"
    p.write_text(body + "#" * (S.MAX_SPEC_BYTES - len(body) - 1) + "\n")
    assert p.stat().st_size == S.MAX_SPEC_BYTES
    assert list(load_spec(p).stages) == ["w"]
    p.write_text(p.read_text() + "#")
    assert "spec is too large" in only_issue(p)


def test_deep_nesting_is_refused_with_its_line(tmp_path):
    p = tmp_path / "deep.yaml"
    p.write_text(f"pipeline: deep\n{STAGES}description:\n  " + "[" * 5000 + "]" * 5000 + "\n")
    msg = only_issue(p)
    assert f"{p}:5: invalid YAML: nested deeper than {S.MAX_NESTING} levels" in msg


def test_non_utf8_spec_is_refused(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes(f"pipeline: x\n{STAGES}description: caf\xe9\n".encode("latin-1"))
    assert f"{p}:4: not UTF-8 text" in only_issue(p)


def chain(tmp_path: Path, hops: int) -> Path:
    """``s0.yaml`` extends ``s1.yaml`` ... extends ``s<hops>.yaml``, which defines the stage."""
    (tmp_path / f"s{hops}.yaml").write_text(f"pipeline: s{hops}\n{STAGES}")
    for i in range(hops):
        (tmp_path / f"s{i}.yaml").write_text(f"pipeline: s{i}\nextends: s{i + 1}\n")
    return tmp_path / "s0.yaml"


def test_extends_chain_deeper_than_the_limit_is_refused(tmp_path):
    root = chain(tmp_path, 1500)
    with pytest.raises(SpecError) as ei:
        load_spec(root)
    [issue] = ei.value.issues
    last = tmp_path / f"s{S.MAX_EXTENDS_DEPTH}.yaml"
    assert (issue.file, issue.field, issue.line) == (str(last), "extends", 2)
    assert f"extends chain deeper than {S.MAX_EXTENDS_DEPTH} files (from {root})" in str(ei.value)


def test_extends_chain_at_the_limit_loads(tmp_path):
    spec = load_spec(chain(tmp_path, S.MAX_EXTENDS_DEPTH))
    assert spec.name == "s0" and list(spec.stages) == ["w"]
