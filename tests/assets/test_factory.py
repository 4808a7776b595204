"""The asset factory and artifact store through Dagster: materialize, cache hits, atomicity, catalog,
staleness, automation (schedules, eager conditions with blocking checks, the input-folder sensor)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

import tests.pipelines.toy_kinds  # noqa: F401
from pipelines.factory import build_spec_definitions
from pipelines.spec import load_spec
from resources.catalog import Catalog
from resources.lmforge import LmforgeResource
from resources.store import ArtifactStore

SPECS = Path(__file__).resolve().parents[1] / "pipelines" / "specs"
pytestmark = pytest.mark.integration


def _materialize(spec, home, instance, selection=None):
    defs = build_spec_definitions(spec)
    keys = [dg.AssetKey([spec.name, s]) for s in (selection or spec.stages)]
    return dg.materialize(
        list(defs.assets),
        selection=keys,
        instance=instance,
        resources={"lmforge": LmforgeResource(home=str(home))},
        raise_on_error=False,
    )


def test_materialize_reads_back_and_registers(lmforge_home):
    spec = load_spec(SPECS / "toy.yaml")
    with dg.instance_for_test() as inst:
        res = _materialize(spec, lmforge_home, inst)
        assert res.success
        store = ArtifactStore(lmforge_home)
        joined = store.get("toy_join", spec.stages["joined"].version)
        rows = pq.read_table(joined.path / "documents.parquet").to_pylist()
        assert sorted(r["text"] for r in rows) == ["ALPHA", "BETA", "GAMMA", "delta", "delta"]
        m = joined.manifest
        for k in (
            "kind",
            "version",
            "pipeline",
            "stage",
            "config",
            "inputs",
            "code_version",
            "metrics",
            "git",
            "host",
            "wall_time_s",
            "data_version",
        ):
            assert k in m
        assert [i["stage"] for i in m["inputs"]["parts"]] == ["upper", "more"]
        mats = res.asset_materializations_for_node("toy__joined")
        assert mats[0].metadata["lmforge/cache_hit"].value is False
        evs = {e.check_name: e.passed for e in res.get_asset_check_evaluations()}
        assert evs == {"non_empty": True} or all(evs.values())
        # the catalog answers SQL across versions, with lineage
        cat = Catalog(lmforge_home)
        _, rows = cat.query("SELECT count(*) FROM toy__joined__documents")
        assert rows[0][0] == 5
        _, lin = cat.query(f"SELECT input_stage FROM lineage WHERE version = '{joined.version}' ORDER BY 1")
        assert [r[0] for r in lin] == ["more", "upper"]
        _, allv = cat.query("SELECT count(DISTINCT artifact_version) FROM all_documents")
        assert allv[0][0] == 4


def test_second_materialization_is_a_cache_hit(lmforge_home):
    spec = load_spec(SPECS / "toy.yaml")
    with dg.instance_for_test() as inst:
        assert _materialize(spec, lmforge_home, inst).success
        res = _materialize(spec, lmforge_home, inst)
        assert res.success
        for s in spec.stages:
            md = res.asset_materializations_for_node(f"toy__{s}")[0].metadata
            assert md["lmforge/cache_hit"].value is True


def test_variant_recomputes_only_changed_stage(lmforge_home):
    base, var = load_spec(SPECS / "toy.yaml"), load_spec(SPECS / "toy_variant.yaml")
    with dg.instance_for_test() as inst:
        assert _materialize(base, lmforge_home, inst).success
        res = _materialize(var, lmforge_home, inst)
        hits = {
            s: res.asset_materializations_for_node(f"toy_variant__{s}")[0].metadata["lmforge/cache_hit"].value
            for s in var.stages
        }
        assert hits == {"words": True, "more": True, "upper": True, "joined": False}


def test_crash_mid_write_leaves_nothing_visible(lmforge_home, tmp_path):
    spec_path = tmp_path / "crash.yaml"
    spec_path.write_text("pipeline: crash\nstages:\n  w: {kind: toy_text, words: [x], crash_after_rows: 0}\n")
    spec = load_spec(spec_path)
    store = ArtifactStore(lmforge_home)
    with dg.instance_for_test() as inst:
        res = _materialize(spec, lmforge_home, inst)
        assert not res.success
    assert not store.exists("toy_text", spec.stages["w"].version)
    assert list(store.all()) == []
    # a hard kill (no cleanup code runs) leaves only an invisible .tmp- directory
    code = (
        "import tests.pipelines.toy_kinds; from pipelines.execute import run_kind; "
        f"run_kind('toy_text', {{'words': ['x'], 'crash_after_rows': 0}}, {str(lmforge_home)!r})"
    )
    env = {"LMFORGE_TEST_HARD_CRASH": "1", "PATH": ""}
    p = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], env=env)
    assert p.returncode == 3
    assert list(store.all()) == []
    assert list((lmforge_home / "artifacts" / "toy_text").glob(".tmp-*"))
    assert store.sweep() == 1
    # the next (fixed) materialization succeeds
    spec_path.write_text("pipeline: crash\nstages:\n  w: {kind: toy_text, words: [x]}\n")
    with dg.instance_for_test() as inst:
        assert _materialize(load_spec(spec_path), lmforge_home, inst).success


def test_staleness_after_config_change_and_data_versions(lmforge_home, tmp_path):
    from dagster._utils.test.data_versions import get_stale_status_resolver

    spec_path = tmp_path / "s.yaml"
    spec_path.write_text((SPECS / "toy.yaml").read_text())
    with dg.instance_for_test() as inst:
        spec = load_spec(spec_path)
        assert _materialize(spec, lmforge_home, inst).success
        rec = inst.get_latest_materialization_event(dg.AssetKey(["toy", "upper"]))
        art = ArtifactStore(lmforge_home).get("toy_upper", spec.stages["upper"].version)
        assert rec.asset_materialization.tags["dagster/data_version"] == art.manifest["data_version"]
        spec_path.write_text(spec_path.read_text().replace("repeat: 2", "repeat: 3"))
        spec2 = load_spec(spec_path)
        resolver = get_stale_status_resolver(inst, list(build_spec_definitions(spec2).assets))
        status = {s: resolver.get_status(dg.AssetKey(["toy", s])).value for s in spec2.stages}
        assert status["more"] == "STALE" and status["words"] == "FRESH" and status["upper"] == "FRESH"
        causes = [c.reason for c in resolver.get_stale_causes(dg.AssetKey(["toy", "more"]))]
        assert any("code version" in c for c in causes)


def test_blocking_check_stops_downstream(lmforge_home, tmp_path):
    spec_path = tmp_path / "empty.yaml"
    spec_path.write_text(
        "pipeline: empty\nstages:\n  w: {kind: toy_text, words: []}\n  u: {kind: toy_upper, from: w}\n"
    )
    spec = load_spec(spec_path)
    with dg.instance_for_test() as inst:
        res = _materialize(spec, lmforge_home, inst)
        evs = res.get_asset_check_evaluations()
        assert [e.passed for e in evs if e.asset_key.path[-1] == "w"] == [False]
        # the UI shows what the check asserts on the evaluation itself
        assert [e.description for e in evs] == ["at least one row"]
        assert [e.metadata["rows"].value for e in evs] == [0]  # a number, plotted across evaluations
        assert not res.asset_materializations_for_node("empty__u")


def test_automation_schedule_eager_and_sensor(lmforge_home, tmp_path):
    spec = load_spec(SPECS / "toy.yaml")
    defs = dg.Definitions.merge(
        build_spec_definitions(spec),
        dg.Definitions(resources={"lmforge": LmforgeResource(home=str(lmforge_home))}),
    )
    sched = defs.resolve_schedule_def("toy__words__cron")
    assert sched.cron_schedule == "0 3 * * 0" and sched.default_status == dg.DefaultScheduleStatus.RUNNING
    with dg.instance_for_test() as inst:
        tick = sched.evaluate_tick(
            dg.build_schedule_context(instance=inst, repository_def=defs.get_repository_def())
        )
        assert len(tick.run_requests) == 1
        job = defs.resolve_job_def(sched.job_name)
        assert job.asset_layer.selected_asset_keys == {dg.AssetKey(["toy", "words"])}
        # eager: after `words` is materialized, `upper` is requested; `more`/`joined` wait
        r0 = dg.evaluate_automation_conditions(defs=defs, instance=inst)
        assert _materialize(spec, lmforge_home, inst, ["words"]).success
        r1 = dg.evaluate_automation_conditions(defs=defs, instance=inst, cursor=r0.cursor)
        requested = {s for s in spec.stages if r1.get_num_requested(dg.AssetKey(["toy", s]))}
        assert requested == {"upper"}
    assert defs.resolve_sensor_def("toy__automation").default_status == dg.DefaultSensorStatus.RUNNING


def test_blocking_check_holds_back_eager_downstream(lmforge_home, tmp_path):
    spec_path = tmp_path / "b.yaml"
    spec_path.write_text(
        "pipeline: b\nstages:\n  w: {kind: toy_text, words: []}\n"
        "  u: {kind: toy_upper, from: w}\nautomation:\n  u: {eager: true}\n"
    )
    spec = load_spec(spec_path)
    defs = dg.Definitions.merge(
        build_spec_definitions(spec),
        dg.Definitions(resources={"lmforge": LmforgeResource(home=str(lmforge_home))}),
    )
    with dg.instance_for_test() as inst:
        r0 = dg.evaluate_automation_conditions(defs=defs, instance=inst)
        _materialize(spec, lmforge_home, inst, ["w"])  # its blocking check fails
        assert inst.get_latest_materialization_event(dg.AssetKey(["b", "w"])) is not None
        r1 = dg.evaluate_automation_conditions(defs=defs, instance=inst, cursor=r0.cursor)
        assert r1.total_requested == 0


def test_watch_sensor_notices_new_files(lmforge_home, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    spec_path = tmp_path / "w.yaml"
    spec_path.write_text(
        "pipeline: w\nstages:\n  a: {kind: toy_text, words: [x]}\n"
        f"automation:\n  a: {{watch: {{path: {json.dumps(str(inbox))}, pattern: '*.txt'}}}}\n"
    )
    defs = dg.Definitions.merge(
        build_spec_definitions(load_spec(spec_path)),
        dg.Definitions(resources={"lmforge": LmforgeResource(home=str(lmforge_home))}),
    )
    sensor = defs.resolve_sensor_def("w__a__watch")
    with dg.instance_for_test() as inst:
        ctx = dg.build_sensor_context(instance=inst)
        assert isinstance(sensor(ctx), dg.SkipReason)
        (inbox / "new.txt").write_text("hello")
        (inbox / "ignored.bin").write_text("x")
        req = sensor(ctx)
        assert isinstance(req, dg.RunRequest) and req.asset_selection == [dg.AssetKey(["w", "a"])]
        ctx2 = dg.build_sensor_context(instance=inst, cursor=ctx.cursor)
        assert isinstance(sensor(ctx2), dg.SkipReason)  # nothing new
        (inbox / "second.txt").write_text("again")
        assert isinstance(sensor(ctx2), dg.RunRequest)


def test_adding_a_partition_computes_only_it(lmforge_home, tmp_path):
    p = tmp_path / "parts.yaml"
    p.write_text(
        "pipeline: parts\nstages:\n  a: {kind: toy_text, words: [x]}\n  b: {kind: toy_text, words: [y, z]}\n"
        "  count: {kind: toy_count, docs: [a]}\n"
    )
    with dg.instance_for_test() as inst:
        spec = load_spec(p)
        defs = build_spec_definitions(spec)
        res = dg.materialize(
            list(defs.assets),
            selection=[dg.AssetKey(["parts", s]) for s in ("a", "b")],
            instance=inst,
            resources={"lmforge": LmforgeResource(home=str(lmforge_home))},
        )
        assert res.success
        res = dg.materialize(
            list(defs.assets),
            selection=[dg.AssetKey(["parts", "count"])],
            partition_key="a",
            instance=inst,
            resources={"lmforge": LmforgeResource(home=str(lmforge_home))},
        )
        assert res.success
        p.write_text(p.read_text().replace("docs: [a]", "docs: [a, b]"))
        spec2 = load_spec(p)
        assert spec2.stages["count"].partition_versions["a"] == spec.stages["count"].partition_versions["a"]
        store = ArtifactStore(lmforge_home)
        from pipelines.spec import plan

        rows = {r["partition"]: r["stored"] for r in plan(spec2, store) if r["stage"] == "count"}
        assert rows == {"a": True, "b": False}
        defs2 = build_spec_definitions(spec2)
        hits = {}
        for part in ("a", "b"):
            r = dg.materialize(
                list(defs2.assets),
                selection=[dg.AssetKey(["parts", "count"])],
                partition_key=part,
                instance=inst,
                resources={"lmforge": LmforgeResource(home=str(lmforge_home))},
            )
            hits[part] = (
                r.asset_materializations_for_node("parts__count")[0].metadata["lmforge/cache_hit"].value
            )
        assert hits == {"a": True, "b": False}


def test_partition_whose_input_changed_is_stale_like_plan_says(lmforge_home, tmp_path):
    """Dagster keeps one code version per asset: a partition whose upstream stage has a new version must not
    show FRESH while `lmforge plan` says it is to be computed."""
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from pipelines.spec import plan

    p = tmp_path / "parts.yaml"
    p.write_text(
        "pipeline: parts\nstages:\n  a: {kind: toy_text, words: [x]}\n  b: {kind: toy_text, words: [y, z]}\n"
        "  count: {kind: toy_count, docs: [a, b]}\n"
    )
    res = {"lmforge": LmforgeResource(home=str(lmforge_home))}
    count = dg.AssetKey(["parts", "count"])
    with dg.instance_for_test() as inst:
        assets = list(build_spec_definitions(load_spec(p)).assets)
        assert dg.materialize(assets, selection=[dg.AssetKey(["parts", s]) for s in "ab"], instance=inst,
                              resources=res).success
        for part in "ab":
            assert dg.materialize(assets, selection=[count], partition_key=part, instance=inst,
                                  resources=res).success
        p.write_text(p.read_text().replace("words: [x]", "words: [x, w]"))
        spec2 = load_spec(p)
        todo = {r["partition"] for r in plan(spec2, ArtifactStore(lmforge_home))
                if r["stage"] == "count" and not r["stored"]}
        assert todo == {"a"}
        resolver = get_stale_status_resolver(inst, list(build_spec_definitions(spec2).assets))
        assert resolver.get_status(count, "a").value == "STALE"
        assert any("code version" in c.reason for c in resolver.get_stale_causes(count, "a"))


def test_stages_a_run_wrote_from_new_input_files_stay_fresh_for_a_code_server_loaded_before(lmforge_home, tmp_path):
    """A watched folder gets a file: the run (its worker loads the code location afresh) stores a new version,
    and the UI, whose code server loaded the spec before, shows the stage fresh and its child stale by data
    -- not every stage the run wrote as "has a new code version"."""
    from dagster._utils.test.data_versions import get_stale_status_resolver

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.jsonl").write_text(json.dumps({"id": "1", "text": "hello world"}) + "\n")
    p = tmp_path / "w.yaml"
    p.write_text(
        f'pipeline: w\nstages:\n  docs: {{kind: load_documents, paths: ["{inbox}/*.jsonl"]}}\n'
        f'  upper: {{kind: toy_upper, from: docs}}\nautomation:\n  docs: {{watch: "{inbox}"}}\n'
    )
    res = {"lmforge": LmforgeResource(home=str(lmforge_home))}
    keys = {s: dg.AssetKey(["w", s]) for s in ("docs", "upper")}
    with dg.instance_for_test() as inst:

        def run(selection):
            worker = list(build_spec_definitions(load_spec(p)).assets)
            assert dg.materialize(worker, selection=[keys[s] for s in selection], instance=inst,
                                  resources=res).success

        def status():
            resolver = get_stale_status_resolver(inst, server)
            return {s: resolver.get_status(k).value for s, k in keys.items()}

        run(["docs", "upper"])
        server = list(build_spec_definitions(load_spec(p)).assets)
        (inbox / "b.jsonl").write_text(json.dumps({"id": "2", "text": "second file"}) + "\n")
        run(["docs"])
        assert status() == {"docs": "FRESH", "upper": "STALE"}
        resolver = get_stale_status_resolver(inst, server)
        assert [c.reason for c in resolver.get_stale_causes(keys["upper"])] == ["has a new dependency data version"]
        run(["upper"])
        assert status() == {"docs": "FRESH", "upper": "FRESH"}


def test_eager_stage_waits_while_a_dependency_has_a_new_version_not_materialized(lmforge_home, tmp_path):
    """`words` gets a new config: `joined` (eager) is not launched when `more` updates -- its run would fail
    for lack of `upper`'s new version -- but once `words` and then `upper` are materialized."""
    p = tmp_path / "toy.yaml"
    p.write_text((SPECS / "toy.yaml").read_text())
    res = LmforgeResource(home=str(lmforge_home))

    def defs():
        return dg.Definitions.merge(build_spec_definitions(load_spec(p)), dg.Definitions(resources={"lmforge": res}))

    with dg.instance_for_test() as inst:
        d = defs()
        r = dg.evaluate_automation_conditions(defs=d, instance=inst)

        def tick(selection=()):
            nonlocal r
            if selection:
                assert _materialize(load_spec(p), lmforge_home, inst, list(selection)).success
            r = dg.evaluate_automation_conditions(defs=d, instance=inst, cursor=r.cursor)
            return {k.path[-1] for k in d.resolve_asset_graph().get_all_asset_keys() if r.get_num_requested(k)}

        assert tick(["words", "more", "upper", "joined"]) == set()
        p.write_text(p.read_text().replace("[alpha, beta, gamma]", "[alpha]"))
        d = defs()
        assert tick() == set()
        assert tick(["more"]) == set()
        assert tick(["words"]) == {"upper"}
        assert tick(["upper"]) == {"joined"}
