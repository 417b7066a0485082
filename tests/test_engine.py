"""Engine and protocols: resume, FLOPs ledger, budget matching, recipes."""

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import rbdc
import rbdc.runs.train as train
from rbdc import recipe as recipes
from rbdc.runs import rundir
from rbdc.errors import UserError
from rbdc.growth import inner_widths
from rbdc.runs.rundir import load_state

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "recipes"
CI = RECIPES / "ci"
QUICKSTART = RECIPES.parents[1] / "rbdc" / "quickstart_recipes"  # package data: rbdc quickstart reads them
QUIET = dict(log=lambda *a, **k: None)


def run(recipe, out, **kw):
    return train.run_recipe(str(recipe), str(out), **QUIET, **kw)


@pytest.fixture
def rbdc_run(ci_reference):
    return ci_reference("rbdc")


def test_a_cpu_run_records_the_machines_gemm_rate_after_every_epoch_without_touching_its_randomness(rbdc_run):
    """gemm_gflops tells a slow-state epoch's wall apart (issue 35); it is a timing column (a resumed run may differ)
    and its probe draws no random numbers, so the run's data order and weights are those of a run without it."""
    from rbdc.cost.perf import gemm_probe_gflops

    run_dir, _ = rbdc_run
    _, rows = rundir.read_summary(run_dir / rundir.SUMMARY)
    trained = [r for r in rows if int(r["epoch"]) >= 0]  # epoch -1: the coupled model's evaluation before training
    assert trained and all(float(r["gemm_gflops"]) > 0 for r in trained)
    assert "gemm_gflops" in rundir.TIMING_COLUMNS and "gemm_gflops" in rundir.SUMMARY_OPTIONAL
    before = torch.get_rng_state()
    assert gemm_probe_gflops(n=64, reps=2) > 0
    assert torch.equal(torch.get_rng_state(), before)


def test_a_cpu_run_records_each_epochs_process_cpu_seconds_beside_its_wall(rbdc_run):
    """cpu_s puts a wall on the busy clock the cost model is fitted on (issue 35): the process's CPU seconds over the
    epoch's training steps, positive and at most the epoch's wall times its threads (plus the clocks' granularity)."""
    run_dir, _ = rbdc_run
    _, rows = rundir.read_summary(run_dir / rundir.SUMMARY)
    assert "cpu_s" in rundir.TIMING_COLUMNS and "cpu_s" in rundir.SUMMARY_OPTIONAL
    threads = torch.get_num_threads()
    trained = [r for r in rows if int(r["epoch"]) >= 0]
    assert trained
    walls = {}
    for r in trained:  # wall_s is cumulative over a stage: an epoch's wall is its difference to the stage's previous
        epoch_wall = float(r["wall_s"]) - walls.get(r["stage"], 0.0)
        walls[r["stage"]] = float(r["wall_s"])
        assert 0 < float(r["cpu_s"]) <= epoch_wall * threads + 0.05, r


def test_rbdc_run_writes_the_run_directory_contract(rbdc_run):
    run_dir, results = rbdc_run
    assert recipes.resolve(run_dir / rundir.RECIPE) == recipes.resolve(CI / "rbdc.yaml")
    assert '"code"' in (run_dir / rundir.COMMAND).read_text()  # the environment of the invocation
    assert json.loads((run_dir / rundir.RESULTS).read_text()) == results
    header, rows = rundir.read_summary(run_dir / rundir.SUMMARY)
    always = [c for c in rundir.SUMMARY_COLUMNS if c not in rundir.SUMMARY_OPTIONAL]
    assert [c for c in header if c in always] == always  # in rundir's order; the optional ones only when written
    assert float(rows[-1]["cum_train_flops"]) == pytest.approx(results["total_train_flops"], rel=1e-5)
    man = json.loads((run_dir / rundir.MANIFEST).read_text())
    assert sorted(man["stages"]) == ["L0.0", "L0.1", "L1"]
    for sid, entry in man["stages"].items():
        assert rundir.sha256(run_dir / entry["final"]) == entry["sha256"], sid
    assert (run_dir / rundir.FINAL).read_bytes() == (run_dir / man["stages"]["L1"]["final"]).read_bytes()
    assert [p["stage"] for p in man["stages"]["L1"]["parents"]] == ["L0.0", "L0.1"]
    assert man["stages"]["L1"]["parents"][0]["sha256"] == man["stages"]["L0.0"]["sha256"]
    assert "L1" in results["coupled_top1_before_training"]


def test_ledger_total_is_the_sum_of_the_stages(rbdc_run):
    run_dir, results = rbdc_run
    ledger = json.loads((run_dir / "ledger.json").read_text())
    stage_sum = sum(s["train_flops"] for s in results["stages"])
    assert results["total_train_flops"] == ledger["total_train_flops"] == stage_sum
    # every narrow model counts: two level-0 stages of equal cost
    by = {s["stage"]: s["train_flops"] for s in results["stages"]}
    assert by["L0.0"] == by["L0.1"] > 0 and by["L1"] > 0


def test_every_stage_anneals_to_min_lr_on_its_last_step(rbdc_run):
    run_dir, _ = rbdc_run
    rows = [r.split(",") for r in (run_dir / "summary.csv").read_text().splitlines()]
    col = {c: i for i, c in enumerate(rows[0])}
    last = {r[col["stage"]]: float(r[col["lr"]]) for r in rows[1:] if r[col["lr"]]}
    assert set(last) == {"L0.0", "L0.1", "L1"}
    assert all(lr == pytest.approx(1e-5, rel=0.1) for lr in last.values()), last  # recipe DEFAULTS min_lr


def test_scratch_matched_to_an_rbdc_run_lands_within_one_percent(rbdc_run, tmp_path):
    run_dir, results = rbdc_run
    scratch = run(CI / "scratch.yaml", tmp_path, match=str(run_dir))
    assert abs(scratch["total_train_flops"] / results["total_train_flops"] - 1) < 0.01


def test_a_run_dir_of_another_recipe_is_refused(rbdc_run, tmp_path):
    run_dir, _ = rbdc_run
    with pytest.raises(UserError, match="different recipe"):
        train.run_recipe(str(CI / "rbdc.yaml"), str(run_dir.parents[2]), ["rbdc.head=sum"], **QUIET)


def test_a_run_written_before_a_recipe_key_existed_still_resumes(rbdc_run, tmp_path):
    import shutil
    import yaml

    run_dir, results = rbdc_run
    old = tmp_path / "ci" / "rbdc-d1" / "seed0"
    shutil.copytree(run_dir, old)
    rec = yaml.safe_load((old / "recipe.yaml").read_text())
    del rec["growth"]["scale"]  # as an older version wrote it: the key did not exist, its default applies
    (old / "recipe.yaml").write_text(yaml.safe_dump(rec))
    assert run(CI / "rbdc.yaml", tmp_path)["eval_top1"] == results["eval_top1"]


@pytest.mark.parametrize(
    "path",
    sorted(p for p in [*RECIPES.rglob("*.yaml"), *QUICKSTART.glob("*.yaml")] if "base" not in p.name),
    ids=lambda p: str(p.relative_to(RECIPES.parents[1])),
)
def test_every_recipe_parses_and_dry_runs(path, capsys):
    train.run_recipe(str(path), "unused", dry_run=True)
    out = capsys.readouterr().out
    assert "total training FLOPs" in out


@pytest.mark.parametrize(
    "override, message",
    [
        ("nope=1", "unknown recipe key"),
        ("rbdc.nope=1", "unknown recipe key"),
        ("protocol=magic", "unknown protocol"),
        ("rbdc.epochs=[1]", "2 entries"),
        ("batch_size=100000", "exceeds"),
    ],
)
def test_bad_recipes_fail_with_a_clear_error(override, message):
    with pytest.raises(UserError, match=message):
        train.run_recipe(str(CI / "rbdc.yaml"), "unused", [override], dry_run=True, **QUIET)


@pytest.mark.parametrize("protocol", ["net2net", "mixturegrowth", "gradmax"])
def test_growth_protocol_matched_to_an_rbdc_run_lands_within_one_percent(protocol, rbdc_run, ci_reference):
    rbdc_dir, rbdc_results = rbdc_run
    _, results = ci_reference(protocol, ["rbdc.epochs=null", f"match={rbdc_dir}"])  # as tests/test_resume.py trains it
    assert abs(results["total_train_flops"] / rbdc_results["total_train_flops"] - 1) < 0.01


def test_parallel_jobs_train_the_narrow_models_in_processes_with_the_same_result(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-equality needs the children's thread count (threads // jobs) on both sides
    try:
        reference = run(CI / "rbdc.yaml", tmp_path / "seq")
        results = run(CI / "rbdc.yaml", tmp_path / "par", overrides=["rbdc.jobs=2"])
    finally:
        torch.set_num_threads(threads)
    run_dir = tmp_path / "par" / "ci" / "rbdc-d1" / "seed0"
    for sid in ("L0.0", "L0.1"):  # each trained by its own child process, which logged its epochs there
        assert f"[{sid}] epoch" in rundir.stage_log(run_dir, sid).read_text()
    assert results["total_train_flops"] == reference["total_train_flops"]
    a = load_file(str(tmp_path / "seq" / "ci" / "rbdc-d1" / "seed0" / "final.safetensors"))
    b = load_file(str(run_dir / "final.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    _, rows = rundir.read_summary(run_dir / rundir.SUMMARY)
    cum = [float(r["cum_train_flops"]) for r in rows]
    assert cum == sorted(cum)  # the merged rows continue the running FLOPs total


def test_a_levels_parallel_children_start_after_the_levels_before_it_are_in_the_manifest(tmp_path, monkeypatch):
    """Each level's children read their parents from manifest.json: a level starts only when every earlier stage
    is recorded there (the children here are stand-ins that train nothing: the parent then trains each stage)."""
    from rbdc.runs import run as run_module
    from rbdc.runs.manifest import Manifest

    calls = []

    def children(run_dir, stages, jobs, log):
        done = Manifest.load(run_dir).stages
        calls.append(([s.id for s in stages], sorted(done)))
        assert all(p in done for s in stages for p in s.parents), (stages, done)

    monkeypatch.setattr(run_module, "train_in_parallel", children)
    run(CI / "rbdc.yaml", tmp_path, overrides=["rbdc.depth=2", "rbdc.epochs=[0.5,0.5,0.5]", "rbdc.jobs=2"])
    assert calls == [(["L0.0", "L0.1", "L0.2", "L0.3"], []), (["L1.0", "L1.1"], ["L0.0", "L0.1", "L0.2", "L0.3"])]


def test_gradmax_grows_through_its_widths_charging_each_gradient_pass(tmp_path):
    results = run(CI / "gradmax.yaml", tmp_path)
    run_dir = tmp_path / "ci" / "gradmax" / "seed0"
    ledger = json.loads((run_dir / "ledger.json").read_text())
    passes = [e for e in ledger["entries"] if "GradMax gradient pass" in e["model"]]
    assert [e["stage"] for e in passes] == ["G1", "G2"] and all(e["images"] == 16 for e in passes)
    stage_sum = sum(s["train_flops"] for s in results["stages"])
    assert results["total_train_flops"] == ledger["total_train_flops"] == stage_sum
    widths = [inner_widths(rbdc.load_model(run_dir / "stages" / s / "final.safetensors")) for s in ("G0", "G1", "G2")]
    assert [w["blocks.0.mlp"] for w in widths] == [64, 96, 128]  # test_rbdc_vit: MLP 128, start 0.5, 2 growths
    target = rbdc.load_model(run_dir / "final.safetensors")
    assert inner_widths(target) == inner_widths(timm.create_model("test_rbdc_vit"))
    # one cosine across the widths: the lr keeps falling from stage to stage, with no second warm-up
    rows = [r.split(",") for r in (run_dir / "summary.csv").read_text().splitlines()]
    lr = [float(r[rows[0].index("lr")]) for r in rows[1:]]
    assert lr == sorted(lr, reverse=True)
    opt = load_state(run_dir / "stages" / "G1" / "optimizer.pt", "")
    assert int(opt["blocks.0.mlp.fc1.weight"]["step"]) == 72  # G0's 36 steps carried on through G1's 36


@pytest.mark.parametrize("recipe", ["rbdc", "net2net", "mixturegrowth", "gradmax"])
def test_runs_of_different_seeds_share_no_stage(recipe):
    from rbdc import recipe as recipes
    from rbdc.protocols import plan_stages

    plans = [plan_stages(recipes.resolve(CI / f"{recipe}.yaml", seed=s), 640, 10) for s in range(3)]
    seeds = [{st.seed for st in plan} for plan in plans]
    assert all(len(s) == len(plans[0]) > 1 for s in seeds)
    assert not (seeds[0] & seeds[1] or seeds[1] & seeds[2] or seeds[0] & seeds[2])


def test_a_failing_parallel_stage_stops_its_siblings(tmp_path, monkeypatch):
    import subprocess
    from types import SimpleNamespace

    from rbdc.runs import parallel

    started = []

    class FakeChild:
        def __init__(self, cmd, **kw):
            self.stage, self.returncode, self.terminated = cmd[-1], None, False
            started.append(self)

        def wait(self):
            if self.stage == "L0.0":
                self.returncode = 1
            elif self.terminated:
                self.returncode = -15
            else:
                raise AssertionError("the parent waited on a sibling it should have stopped")
            return self.returncode

        def poll(self):
            return self.returncode

        def terminate(self):
            self.terminated = True

    monkeypatch.setattr(subprocess, "Popen", FakeChild)
    stages = [SimpleNamespace(id=f"L0.{i}", level=0) for i in range(2)]
    with pytest.raises(UserError, match="stage L0.0 failed"):
        parallel.train_in_parallel(tmp_path, stages, jobs=2, log=lambda *a: None)
    assert [c.stage for c in started] == ["L0.0", "L0.1"] and started[1].terminated
