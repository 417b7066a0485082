"""rbdc.cost.work (a run's stages in images trained and evaluated: what the estimate and the cost model's check both
price) and the check's handling of the runs' per-epoch GEMM rate (benchmarks/costmodel_check.py)."""

import csv
import json
from fractions import Fraction

import pytest

from benchmarks import costmodel_check
from rbdc import recipe as recipes
from rbdc.cli import main
from rbdc.cost import costmodel, estimate, machine
from rbdc.cost.work import evaluations, predict_stage, recipe_work, stage_work
from rbdc.data.for_recipe import eval_size, plan_size
from rbdc.protocols import plan_stages

SCRATCH = "configs/recipes/imagenette32/vit-nano-scratch.yaml"
RBDC_D1 = "configs/recipes/imagenette32/vit-nano-rbdc-d1.yaml"
TRAIN_S, EVAL_S = 1e-3, 4e-4  # the model below: seconds per training image and per evaluation image (constants)


def _model(kind=None, slow=None) -> costmodel.CostModel:
    zero = dict.fromkeys(costmodel.TERMS, 0.0)
    coefs = {f"{amp}/{fam}": {**zero, "constant": TRAIN_S} for amp in ("fp32", "bf16") for fam in ("vit", "resnet")}
    evals = {k: {"train_flops": 0.0, "activation_elements": 0.0, "constant": EVAL_S} for k in coefs}
    return costmodel.CostModel(kind or machine.cpu_kind(), coefs, {}, [], evals, slow)


def _plan(path: str, *overrides: str):
    rec = recipes.resolve(path, list(overrides))
    size = plan_size(rec)
    return rec, plan_stages(rec, size.train_size, size.num_classes), size.train_size


def test_evaluations_follow_the_engines_rule():
    assert evaluations(8, 2, ema=False, grown=False) == 4
    assert evaluations(7, 2, ema=False, grown=False) == 4  # epochs 2, 4, 6 and the last
    assert evaluations(7, 2, ema=True, grown=False) == 8  # the EMA model is evaluated beside the model
    assert evaluations(3, 1, ema=False, grown=True) == 4  # a grown model is evaluated before it trains
    with pytest.raises(ValueError, match="eval_every >= 1"):
        evaluations(3, 0, ema=False, grown=False)


def test_an_eval_split_of_n_images_costs_n_forwards_per_pass():
    rec, stages, train = _plan(SCRATCH, "budget_epochs=4")
    with_val, without = stage_work(rec, stages, train, 3925)[0], stage_work(rec, stages, train, 0)[0]
    assert with_val.train_images == without.train_images == stages[0].steps * rec.batch_size
    a, b = (predict_stage(_model(), w, rec.model, rec, num_classes=10) for w in (with_val, without))
    assert a["train_s"] == b["train_s"]
    assert a["eval_s"] - b["eval_s"] == pytest.approx(with_val.evaluations * 3925 * EVAL_S)


def test_a_run_with_a_tuning_split_evaluates_the_holdout_each_pass_and_the_ema_model_too():
    rec, stages, train = _plan(RBDC_D1, "data.holdout=0.1", "ema=true", "budget_epochs=4")
    held = eval_size(rec)
    assert held == pytest.approx(0.1 * 9469, abs=10)  # the tuning split, not val's 3,925
    work = recipe_work(rec, stages, train)
    assert [w.stage for w in work] == ["L0.0", "L0.1", "L1"]
    for w in work:  # model and EMA model at every evaluated epoch end; the coupled L1 once more before training
        ends = w.epochs // rec.eval_every + (1 if w.epochs % rec.eval_every else 0)
        assert w.evaluations == 2 * ends + (w.stage == "L1")
        assert w.eval_images == w.evaluations * held
    assert work[0].factor == Fraction(1, 2) and work[2].factor == 1


def test_the_dry_run_estimate_adds_the_runs_evaluations_and_the_slow_state_range(tmp_path, monkeypatch, capsys):
    _model(slow=2.5).save(costmodel.costmodel_path(machine.cpu_kind(), tmp_path))
    monkeypatch.setattr(estimate, "FITTED", tmp_path)
    argv = ["train", "-c", RBDC_D1, "--dry-run", "--estimate", "--set", "data.holdout=0.1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "stage L1 (rbdc_vit_nano_patch4_32, " in out and "evaluation(s) of " in out
    line = next(x for x in out.splitlines() if x.startswith("with the run's evaluations"))
    assert "up to" in line and "if the machine is in its slow state" in line


def test_plan_prints_the_slow_state_range_only_where_the_model_holds_the_factor(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(estimate, "FITTED", tmp_path)
    path = costmodel.costmodel_path(machine.cpu_kind(), tmp_path)
    argv = ["plan", "rbdc_vit_nano_patch4_32", "--dataset-size", "9469", "--estimate", "--amp", "bf16"]
    for slow, shown in ((None, False), (2.0, True)):
        _model(slow=slow).save(path)
        assert main(argv) == 0
        last = capsys.readouterr().out.splitlines()[-1]
        assert ("if the machine is in its slow state" in last) == shown, last


def _fake_run(root, name: str, walls: list[float], rates: list[float] | None, cpu: list[float] | None = None):
    """A committed-looking run: the scratch recipe at 4 epochs, and a summary.csv of ``walls`` seconds per epoch
    (with ``gemm_gflops`` where ``rates``, ``cpu_s`` per epoch where ``cpu``), evaluations every second epoch as the
    recipe says."""
    run = root / name
    run.mkdir(parents=True)
    rec = recipes.resolve(SCRATCH, ["data.holdout=0.1", "budget_epochs=4", "eval_every=2"])
    (run / "recipe.yaml").write_text(recipes.dump(rec))
    per_epoch = plan_size(rec).train_size // rec.batch_size * rec.batch_size
    fields = ["stage", "model", "epoch", "images_seen", "wall_s", "eval_top1"] + (["gemm_gflops"] if rates else [])
    fields += ["cpu_s"] if cpu else []
    with (run / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        for e, _ in enumerate(walls):
            row = {"stage": "scratch", "model": rec.model, "epoch": e, "images_seen": per_epoch * (e + 1)}
            row.update(wall_s=sum(walls[: e + 1]), eval_top1=50.0 if e % 2 else "")
            w.writerow({**row, **({"gemm_gflops": rates[e]} if rates else {}), **({"cpu_s": cpu[e]} if cpu else {})})
    return per_epoch


def test_the_check_splits_probed_epochs_into_fast_and_slow_states(tmp_path):
    per_epoch = _fake_run(tmp_path, "probed", [10.0, 30.0, 10.0, 30.0], [1100.0, 400.0, 1090.0, 410.0])
    _fake_run(tmp_path, "unprobed", [10.0, 10.0, 10.0, 10.0], None)
    result = costmodel_check.validate(_model(), [tmp_path])
    by_run = {s["run"]: s for s in result["stages"]}
    assert all(s["work_matches"] for s in by_run.values())  # images and evaluations as the recipe's work says
    fast = 10.0 / per_epoch
    assert by_run["probed"]["fast_state_error"] == pytest.approx(TRAIN_S / fast - 1)
    assert by_run["probed"]["error"] == pytest.approx(4 * per_epoch * TRAIN_S / 80.0 - 1)
    assert by_run["unprobed"]["fast_state_error"] is None
    assert result["slow_state_factor"] == pytest.approx(3.0) and result["slow_state_stages"] == 1
    (group,) = result["groups"].values()
    assert group["fast_state_stages"] == 1 and group["work_mismatches"] == 0
    assert group["eval_share_median"] == pytest.approx(2 * 947 * EVAL_S / (4 * per_epoch * TRAIN_S), rel=0.02)


def test_the_check_writes_the_slow_state_factor_for_the_estimate(tmp_path):
    _fake_run(tmp_path / "runs", "probed", [10.0, 25.0, 10.0, 25.0], [1100.0, 400.0, 1090.0, 410.0])
    path = _model().save(tmp_path / "costmodel-x.json")
    assert costmodel_check.main(["--runs", str(tmp_path / "runs"), "--model", str(path)]) == 0
    model = costmodel.CostModel.from_dict(json.loads(path.read_text()))
    assert model.slow_state_factor == pytest.approx(2.5)
    assert estimate.slow_range(3600.0, model.slow_state_factor).endswith("if the machine is in its slow state")


def _gap(bench_us: float, fit_s: float, amp: str = "bf16", model: str = "rbdc_vit_nano_patch4_32") -> dict:
    """One case of ``benchmarks.engine_gap``'s JSON: its benchmark step's CPU us/img there and its fitted row's."""
    return {
        "case": model,
        "model": model,
        "amp": amp,
        "us_per_image_busy": {"bench": bench_us},
        "fit": {"s_per_image": fit_s, "fit_s_per_image": fit_s},
    }


def test_the_shared_machine_factor_is_the_median_bench_step_over_its_fitted_row_per_precision_and_family():
    gap = {
        "cases": [
            _gap(1300.0, 1e-3),
            _gap(1500.0, 1e-3),
            _gap(1400.0, 1e-3),
            _gap(2000.0, 1e-3, "fp32", "resnet18"),
            {**_gap(9e9, 1e-3), "fit": None},  # no fitted row for it: left out
        ]
    }
    assert costmodel_check.shared_factors(gap) == {"bf16/vit": pytest.approx(1.4), "fp32/resnet": pytest.approx(2.0)}
    assert costmodel_check.shared_factors(None) == {}


def test_the_check_prices_each_stage_at_the_shared_machine_factor_too(tmp_path):
    per_epoch = _fake_run(tmp_path, "slow", [10.0] * 4, None)
    predicted = 4 * per_epoch * TRAIN_S  # the model's seconds for the stage; its wall: 40 s
    factor = 1.2 * 40.0 / predicted  # the loaded machine's prediction lands 20% above the wall
    result = costmodel_check.validate(_model(), [tmp_path], {"cases": [_gap(1e6 * factor, 1.0)], "_path": "x.json"})
    (stage,) = result["stages"]
    assert stage["family"] == "vit"
    assert stage["error"] == pytest.approx(predicted / 40.0 - 1) and stage["error"] < 0
    assert stage["shared_error"] == pytest.approx(0.2)
    (group,) = result["groups"].values()
    assert group["between"] == 1 and group["shared_median_error"] == pytest.approx(0.2)
    assert result["shared_factors"] == {"bf16/vit": pytest.approx(factor)} and result["shared_source"] == "x.json"
    without = costmodel_check.validate(_model(), [tmp_path])
    (plain,) = without["groups"].values()
    assert without["stages"][0]["shared_error"] is None and plain["between"] == 0


def test_the_check_reads_a_stage_on_its_cpu_clock_where_the_run_recorded_cpu_s(tmp_path):
    per_epoch = _fake_run(tmp_path, "timed", [10.0] * 4, None, cpu=[7.0, 8.0, 7.0, 8.0])  # 30 of 40 s on its core
    _fake_run(tmp_path, "untimed", [10.0] * 4, None)
    result = costmodel_check.validate(_model(), [tmp_path])
    by_run = {s["run"]: s for s in result["stages"]}
    predicted = 4 * per_epoch * TRAIN_S
    assert by_run["timed"]["cpu_error"] == pytest.approx(predicted / 30.0 - 1)
    assert by_run["timed"]["core_share"] == pytest.approx(0.75)
    assert by_run["untimed"]["cpu_error"] is None and by_run["untimed"]["core_share"] is None
    (group,) = result["groups"].values()
    assert group["cpu_stages"] == 1 and group["core_share_median"] == pytest.approx(0.75)
    assert group["cpu_median_error"] == pytest.approx(predicted / 30.0 - 1)
