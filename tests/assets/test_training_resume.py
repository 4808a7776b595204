"""Resume at the stage level: the checkpoint options of every training kind are settable in the spec and left
out of the version (they cannot change a result), so changing them neither re-versions a stage nor moves an
interrupted run to a fresh work directory; an interrupted GRPO stage rerun in the same home resumes from its
work directory and stores exactly the artifact an uninterrupted run stores."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from assets.registry import load_kinds, run_option_fields
from pipelines.spec import load_spec

TINY = Path(__file__).resolve().parents[2] / "pipelines" / "tiny_r1.yaml"
TRAINING = ("pretrain", "sft", "reward_model", "dpo", "grpo", "ppo", "distill")


@pytest.mark.unit
def test_every_training_kind_has_checkpoint_run_options():
    kinds = load_kinds()
    for name in TRAINING:
        assert {"ckpt_every", "keep_last"} <= run_option_fields(kinds[name].config), name


@pytest.mark.unit
def test_checkpoint_options_do_not_change_versions(tmp_path):
    base = load_spec(TINY, fingerprints=False)
    raw = yaml.safe_load(TINY.read_text())
    touched = []
    for name, st in raw["stages"].items():
        if st.get("kind") in TRAINING:
            st.update(ckpt_every=3, keep_last=4)
            touched.append(name)
    assert {"pretrain", "grpo", "ppo", "sft"} <= {raw["stages"][n]["kind"] for n in touched}
    changed_path = tmp_path / "tiny_r1.yaml"
    changed_path.write_text(yaml.safe_dump(raw))
    changed = load_spec(changed_path, fingerprints=False)
    assert {n: s.version for n, s in changed.stages.items()} == {n: s.version for n, s in base.stages.items()}
    # a result-changing field still re-versions the stage
    raw["stages"][touched[0]]["seed"] = 12345
    changed_path.write_text(yaml.safe_dump(raw))
    assert (
        load_spec(changed_path, fingerprints=False).stages[touched[0]].version
        != base.stages[touched[0]].version
    )


class Interrupted(Exception):
    pass


@pytest.mark.slow
@pytest.mark.integration
def test_interrupted_grpo_stage_resumes_in_its_work_dir_and_stores_the_same_artifact(tmp_path):
    import pyarrow.parquet as pq

    from pipelines.execute import run_kind
    from resources.store import StoredArtifact
    from tests import posttrain_helpers as H
    from tests.ops.rl import resume_runs as R

    R.register_reward()
    base = StoredArtifact("pretrain", "v-base", H.base_model_dir(), {"stage": "base", "produces": "model"})
    cfg = {
        "model": "base",
        "prompts": ["tasks"],
        "rewards": [R.REWARD],
        "steps": 4,
        "prompts_per_step": 4,
        "group_size": 4,
        "max_new_tokens": 12,
        "lr": 1e-3,
        "warmup_steps": 1,
        "eval_problems": 0,
        "ckpt_every": 1,
    }

    def run(home: Path, log):
        tasks, _ = run_kind("reasoning_tasks", {"train": 64, "eval": 0, "difficulties": [1]}, home)
        return run_kind("grpo", cfg, home, inputs={"model": [base], "prompts": [tasks]}, log=log)

    def stop_at_3(line: str) -> None:
        if line.startswith("step=3 "):
            raise Interrupted(line)

    crashed = tmp_path / "crashed"
    with pytest.raises(Interrupted):
        run(crashed, stop_at_3)
    assert not list((crashed / "artifacts").glob("grpo/[!.]*"))  # nothing stored for the interrupted run
    lines: list[str] = []
    art, res = run(crashed, lines.append)
    assert "resumed from checkpoint step-00000002 (step 2/4)" in lines
    ref, ref_res = run(tmp_path / "clean", lambda s: None)
    assert art.version == ref.version
    assert (art.path / "model.safetensors").read_bytes() == (ref.path / "model.safetensors").read_bytes()
    assert pq.read_table(art.path / "rollouts.parquet").equals(pq.read_table(ref.path / "rollouts.parquet"))
    timing = {"step_s", "gen_share"}
    assert {k: v for k, v in res.metrics.items() if k not in timing} == {
        k: v for k, v in ref_res.metrics.items() if k not in timing
    }
    assert (art.path / "training_state" / "state.json").is_file()
