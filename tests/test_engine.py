"""Engine and protocols: resume, FLOPs ledger, budget matching, recipes."""
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import rbdc
import rbdc.train as train
from rbdc.errors import UserError
from rbdc.growth import inner_widths
from rbdc.rundir import load_state
from conftest import interrupt_after  # tests/conftest.py

RECIPES = Path(__file__).resolve().parents[1] / "benchmarks" / "recipes"
CI = RECIPES / "ci"
QUIET = dict(log=lambda *a, **k: None)


def run(recipe, out, **kw):
    return train.run_recipe(str(recipe), str(out), **QUIET, **kw)


@pytest.fixture(scope="module")
def rbdc_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    results = run(CI / "rbdc.yaml", out)
    return out / "ci" / "rbdc-d1" / "seed0", results


def test_rbdc_run_writes_the_run_directory_contract(rbdc_run):
    run_dir, results = rbdc_run
    for name in ("recipe.yaml", "command.txt", "summary.csv", "ledger.json", "manifest.json", "results.json",
                 "final.safetensors", "stages/L0.0/final.safetensors", "stages/L1/final.safetensors"):
        assert (run_dir / name).is_file(), name
    header = (run_dir / "summary.csv").read_text().splitlines()[0].split(",")
    for col in ("stage", "model", "epoch", "train_loss", "eval_top1", "eval_top5", "lr", "images_seen",
                "train_flops", "cum_train_flops", "wall_s", "img_per_s", "peak_mem_mb"):
        assert col in header
    man = json.loads((run_dir / "manifest.json").read_text())
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


@pytest.mark.parametrize("stop_at", [1, 3, 5])  # inside L0.0, inside L0.1, inside L1 (after its pre-train eval)
def test_resume_after_interruption_gives_the_same_final_weights(rbdc_run, tmp_path, monkeypatch, stop_at):
    reference, _ = rbdc_run
    interrupt_after(monkeypatch, stop_at)
    with pytest.raises(KeyboardInterrupt):
        run(CI / "rbdc.yaml", tmp_path)
    monkeypatch.undo()
    run(CI / "rbdc.yaml", tmp_path)  # the same command again: resumes
    a = load_file(str(reference / "final.safetensors"))
    b = load_file(str(tmp_path / "ci" / "rbdc-d1" / "seed0" / "final.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref_rows = (reference / "summary.csv").read_text().splitlines()
    rows = (tmp_path / "ci" / "rbdc-d1" / "seed0" / "summary.csv").read_text().splitlines()
    assert len(rows) == len(ref_rows)


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


@pytest.mark.parametrize("path", sorted(p for p in RECIPES.rglob("*.yaml") if "base" not in p.name),
                         ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_recipe_parses_and_dry_runs(path, capsys):
    train.run_recipe(str(path), "unused", dry_run=True)
    out = capsys.readouterr().out
    assert "total training FLOPs" in out


@pytest.mark.parametrize("override, message", [("nope=1", "unknown recipe key"), ("rbdc.nope=1", "unknown recipe key"),
                                               ("protocol=magic", "unknown protocol"), ("rbdc.epochs=[1]", "2 entries"),
                                               ("batch_size=100000", "exceeds")])
def test_bad_recipes_fail_with_a_clear_error(override, message):
    with pytest.raises(UserError, match=message):
        train.run_recipe(str(CI / "rbdc.yaml"), "unused", [override], dry_run=True, **QUIET)


@pytest.mark.parametrize("protocol", ["net2net", "mixturegrowth", "gradmax"])
def test_growth_protocol_runs_resumes_and_matches_the_rbdc_budget(protocol, rbdc_run, tmp_path, monkeypatch):
    rbdc_dir, rbdc_results = rbdc_run
    over = ["rbdc.epochs=null", f"match={rbdc_dir}"]
    reference = run(CI / f"{protocol}.yaml", tmp_path / "a", overrides=over)
    assert abs(reference["total_train_flops"] / rbdc_results["total_train_flops"] - 1) < 0.01
    interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run(CI / f"{protocol}.yaml", tmp_path / "b", overrides=over)
    monkeypatch.undo()
    resumed = run(CI / f"{protocol}.yaml", tmp_path / "b", overrides=over)
    assert resumed["eval_top1"] == reference["eval_top1"]
    a = load_file(str(tmp_path / "a" / "ci" / protocol / "seed0" / "final.safetensors"))
    b = load_file(str(tmp_path / "b" / "ci" / protocol / "seed0" / "final.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_parallel_jobs_train_the_narrow_models_in_processes_with_the_same_result(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-equality needs the children's thread count (threads // jobs) on both sides
    try:
        reference = run(CI / "rbdc.yaml", tmp_path / "seq")
        results = run(CI / "rbdc.yaml", tmp_path / "par", overrides=["rbdc.jobs=2"])
    finally:
        torch.set_num_threads(threads)
    run_dir = tmp_path / "par" / "ci" / "rbdc-d1" / "seed0"
    assert (run_dir / "stages" / "L0.0.log").is_file() and (run_dir / "stages" / "L0.1.log").is_file()
    assert results["total_train_flops"] == reference["total_train_flops"]
    a = load_file(str(tmp_path / "seq" / "ci" / "rbdc-d1" / "seed0" / "final.safetensors"))
    b = load_file(str(run_dir / "final.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    cum = [float(line.split(",")[10]) for line in (run_dir / "summary.csv").read_text().splitlines()[1:]]
    assert cum == sorted(cum)  # the merged rows continue the running FLOPs total


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
