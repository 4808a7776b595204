"""Code versions are derived from the code a kind runs: an edit re-versions exactly the kinds (and, in a
plan, the stages) that reach the edited code; comments, docstrings and descriptions re-version nothing.

Each edit is made in a copy of the package tree and measured in a fresh interpreter with that copy on
PYTHONPATH, the way a user's edited checkout is loaded."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from assets.registry import load_kinds
from pipelines.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("assets", "ops", "pipelines", "resources")

VERSIONS = """
import json
from assets.registry import load_kinds
out = {n: {"version": k.code_version, "modules": [m.module for m in k.code().modules]}
       for n, k in load_kinds().items()}
print(json.dumps(out))
"""


def _copy(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    for p in PACKAGES:
        shutil.copytree(ROOT / p, dst / p, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _edit(root: Path, rel: str, old: str, new: str) -> None:
    f = root / rel
    text = f.read_text()
    assert text.count(old) == 1, f"{rel}: {old!r} not found exactly once"
    f.write_text(text.replace(old, new))


def _run(root: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(root), "LMFORGE_HOME": str(root / "home")}
    p = subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def _versions(root: Path) -> dict[str, dict]:
    return json.loads(_run(root, "-c", VERSIONS))


def _changed(a: dict, b: dict) -> set[str]:
    assert a.keys() == b.keys()
    return {k for k in a if a[k]["version"] != b[k]["version"]}


def _users(base: dict, module: str) -> set[str]:
    return {k for k, v in base.items() if module in v["modules"]}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    return _versions(_copy(tmp_path_factory.mktemp("code"), "base"))


def test_copy_has_the_same_code_versions(base):
    """The version is a function of the code only, not of where the checkout lives."""
    kinds = load_kinds()  # in this process other tests may have registered toy kinds too
    assert {n: kinds[n].code_version for n in base} == {n: v["version"] for n, v in base.items()}
    assert {"crawl", "grpo", "sft", "pretrain", "evaluate"} <= base.keys()


def test_ops_edit_reversions_exactly_the_kinds_that_reach_it(tmp_path, base):
    root = _copy(tmp_path, "grpo_clip")
    _edit(root, "ops/rl/grpo.py", "    min_std: float = 1e-6\n", "    min_std: float = 1e-5\n")
    changed = _changed(base, _versions(root))
    assert changed == _users(base, "ops.rl.grpo")
    assert "grpo" in changed
    assert not changed & {"crawl", "sft", "ppo", "pretrain", "evaluate", "rejection_sample"}

    # SFT's LoRA dropout
    root = _copy(tmp_path, "sft_floor")
    _edit(root, "ops/posttrain/sft.py", "    lora_dropout: float = 0.0\n", "    lora_dropout: float = 0.05\n")
    changed = _changed(base, _versions(root))
    assert changed == _users(base, "ops.posttrain.sft")
    assert "sft" in changed and not changed & {"crawl", "grpo", "ppo", "pretrain"}


def test_docstring_comment_description_and_format_edits_reversion_nothing(tmp_path, base):
    root = _copy(tmp_path, "docs")
    grpo = root / "ops/rl/grpo.py"
    grpo.write_text(grpo.read_text().replace('"""', '"""A reworded module docstring.\n\n', 1))
    _edit(root, "ops/rl/grpo.py", "    min_std: float = 1e-6\n", "    min_std: float = 1e-6  # a new comment\n")
    core = (root / "ops/train/core.py").read_text()
    fn = re.search(r'^def \w+\(.*?\).*?:\n(    """)', core, re.M | re.S)
    assert fn, "no documented top-level function in ops/train/core.py"
    _edit(root, "ops/train/core.py", fn.group(0), fn.group(0) + "Reworded. ")
    (root / "ops/train/core.py").write_text((root / "ops/train/core.py").read_text() + "\n# trailing comment\n")
    # a field description and a kind description are documentation too
    post = root / "assets/posttrain.py"
    assert 'description="' in post.read_text()
    post.write_text(post.read_text().replace('description="', 'description="(reworded) '))
    # formatting: the same statement split over lines
    _edit(root, "ops/rl/grpo.py", "    clip_eps: float = 0.2\n", "    clip_eps: float = (\n        0.2\n    )\n")
    assert _changed(base, _versions(root)) == set()


def test_edits_in_kind_modules_and_resources_are_precise(tmp_path, base):
    # one kind's function: only that kind
    root = _copy(tmp_path, "sft_asset")
    src = (root / "assets/sft.py").read_text()
    m = re.search(r"^def run\(run: StageRun\) -> StageResult:\n", src, re.M)
    assert m
    _edit(root, "assets/sft.py", m.group(0), m.group(0) + "    _unused = 1  # noqa: F841\n")
    assert _changed(base, _versions(root)) == {"sft"}

    # a helper shared by some post-training kinds: exactly the kinds that use it
    root = _copy(tmp_path, "shared_helper")
    src = (root / "assets/posttrain.py").read_text()
    m = re.search(r"^def reference_policy\(run: StageRun\):\n", src, re.M)
    assert m
    _edit(root, "assets/posttrain.py", m.group(0), m.group(0) + "    _unused = 1  # noqa: F841\n")
    assert _changed(base, _versions(root)) == {"grpo", "dpo"}

    # one kind's function in a module that holds several kinds: only that kind
    root = _copy(tmp_path, "tokenizer_asset")
    src = (root / "assets/tokenizer.py").read_text()
    m = re.search(r"^def _run_tokenize\(run: StageRun\) -> StageResult:\n", src, re.M)
    assert m
    _edit(root, "assets/tokenizer.py", m.group(0), m.group(0) + "    _unused = 1  # noqa: F841\n")
    assert _changed(base, _versions(root)) == {"tokenize"}

    # the executor setting shared by the data kinds: exactly the kinds whose config has it
    root = _copy(tmp_path, "data_executor")
    src = (root / "assets/data.py").read_text()
    m = re.search(r"^    def settings\(self, stage: str\) -> Any:\n", src, re.M)
    assert m
    _edit(root, "assets/data.py", m.group(0), m.group(0) + "        _unused = 1  # noqa: F841\n")
    assert _changed(base, _versions(root)) == {"extract", "filter", "dedupe"}

    # the offline site renderer is data-affecting code the crawl reaches
    root = _copy(tmp_path, "site")
    _edit(root, "resources/site.py", "\ndef render_site(", "\nEXTRA = 1\n\n\ndef render_site(")
    changed = _changed(base, _versions(root))
    assert changed == _users(base, "resources.site") and "crawl" in changed and "extract" not in changed

    # the torchrun entry is run as a child process, not imported: pretraining still covers it
    root = _copy(tmp_path, "entry")
    _edit(root, "resources/train_entry.py", "\nimport json\n", "\nimport json\n\nEXTRA = 1\n")
    assert _changed(base, _versions(root)) == {"pretrain"}


def _plan(root: Path) -> dict[str, str]:
    out = _run(root, "-m", "pipelines.cli", "plan", "tiny_r1")
    return {line.split()[0]: line.split()[2] for line in out.splitlines() if line.strip()}


def test_plan_reversions_the_stages_of_the_edited_kind_and_their_descendants(tmp_path):
    before = _plan(_copy(tmp_path, "plan_base"))
    root = _copy(tmp_path, "plan_grpo")
    _edit(root, "ops/rl/grpo.py", "    min_std: float = 1e-6\n", "    min_std: float = 1e-5\n")
    after = _plan(root)
    spec = load_spec("tiny_r1")
    grpo_stages = [s for s, st in spec.stages.items() if st.kind.name == "grpo"]
    assert grpo_stages == ["rl1"]
    expect = set(grpo_stages) | {d for s in grpo_stages for d in spec.descendants(s)}
    changed = {row for row in before if before[row] != after[row]}
    assert before.keys() == after.keys()
    assert {row.split("[")[0] for row in changed} == expect
    # eval is partitioned by model: only the partitions of re-versioned models change
    assert "eval[rl1]" in changed and "eval[base]" not in changed and "eval[cold_sft]" not in changed
    assert not {"crawl", "base", "cold_sft", "tokens"} & changed


def test_run_kind_and_spec_share_one_version_formula_and_the_manifest_records_the_code(tmp_path, lmforge_home):
    """A stage run directly (``run_kind``) gets the version the spec gives it, partitions included, and its
    manifest names the code version and the modules it covers."""
    import tests.pipelines.toy_kinds  # noqa: F401  (registers the toy kinds)
    from pipelines.execute import run_kind

    spec_path = tmp_path / "p.yaml"
    spec_path.write_text(
        "pipeline: p\nstages:\n"
        "  a: {kind: toy_text, words: [x, y]}\n"
        "  up: {kind: toy_upper, from: a, suffix: '!'}\n"
        "  count: {kind: toy_count, docs: [a, up]}\n"
    )
    spec = load_spec(spec_path)
    a, _ = run_kind("toy_text", {"words": ["x", "y"]}, lmforge_home, log=lambda _m: None)
    up, _ = run_kind("toy_upper", {"from": "a", "suffix": "!"}, lmforge_home, inputs={"from_": [a]},
                     log=lambda _m: None)
    assert (a.version, up.version) == (spec.stages["a"].version, spec.stages["up"].version)
    for name, art in (("a", a), ("up", up)):
        part, _ = run_kind("toy_count", {"docs": ["a", "up"]}, lmforge_home, inputs={"docs": [art]},
                           partition=name, log=lambda _m: None)
        assert part.version == spec.stages["count"].partition_versions[name]
    with pytest.raises(ValueError, match="partitioned by 'docs'"):
        run_kind("toy_count", {"docs": ["a"]}, lmforge_home, inputs={"docs": [a]}, log=lambda _m: None)

    kind = load_kinds()["toy_upper"]
    m = up.manifest
    assert m["code_version"] == kind.code_version
    mods = {c["module"]: c for c in m["code_modules"]}
    assert mods["tests.pipelines.toy_kinds"]["symbols"] == ["ToyUpperConfig", "_toy_upper"]
    assert "assets.registry" in mods and "ops.rl.grpo" not in mods


def test_cli_code_lists_the_covered_modules():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "code", "grpo"], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600,
    )
    assert out.returncode == 0, out.stderr
    kind = load_kinds()["grpo"]
    assert f"grpo               code {kind.code_version}" in out.stdout
    for m in kind.code().modules:
        assert f"{m.hash}  {m.path}" in out.stdout
    assert "ops/rl/grpo.py" in out.stdout and "ops/data/crawl.py" not in out.stdout
    bad = subprocess.run([sys.executable, "-m", "pipelines.cli", "code", "nope"], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert bad.returncode == 1 and "unknown stage kind(s): nope" in bad.stderr


def _helper_for_partial(x, y=1):
    return x + y


def test_callables_without_a_top_level_name_cover_their_whole_module():
    from functools import partial

    from resources.codehash import of_callables

    named = of_callables(_helper_for_partial)
    assert [(m.module, m.symbols) for m in named.modules if m.module.endswith("test_codehash")] == [
        ("tests.resources.test_codehash", ("_helper_for_partial",))
    ]
    assert of_callables(partial(_helper_for_partial, y=2)).version == named.version
    whole = of_callables(lambda r: r)
    mine = [m for m in whole.modules if m.module == "tests.resources.test_codehash"]
    assert mine and mine[0].symbols is None and "resources.codehash" in {m.module for m in whole.modules}
