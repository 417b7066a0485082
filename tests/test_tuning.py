"""Equal tuning on a held-out split: ``data.holdout`` cuts a seeded, class-balanced part of train that a run evaluates
on instead of val; a study's ``tuning:`` section gives every listed point the same trials, scored on that split, and
runs each point at its best trial; RBDC's per-level lr and coupled warm-up keys."""

import json

import pytest
import yaml
from conftest import CI  # tests/conftest.py

from rbdc import recipe as recipes
from rbdc.runs import rundir
from rbdc.cli import main
from rbdc.data import build_dataset, holdout_split
from rbdc.data.datasets import DataError, holdout_positions
from rbdc.errors import UserError
from rbdc.protocols.planning import plan_stages
from rbdc.studies.spec import load_study
from rbdc.data import recipe_datasets


def test_the_holdout_is_a_class_balanced_seeded_part_of_train_disjoint_from_what_trains():
    targets = [i % 3 for i in range(90)] + [0] * 10  # 40 / 30 / 30 images per class
    fit, held = holdout_positions(targets, 0.1, seed=0)
    assert sorted(fit + held) == list(range(100)) and not set(fit) & set(held)
    assert [sum(targets[i] == c for i in held) for c in range(3)] == [4, 3, 3]
    assert holdout_positions(targets, 0.1, seed=0) == (fit, held)  # fixed by its seed ...
    assert holdout_positions(targets, 0.1, seed=1)[1] != held  # ... which chooses the images


@pytest.mark.parametrize("fraction", [0.0, 1.0, 0.001, 0.999])
def test_a_holdout_that_leaves_a_side_empty_is_refused_naming_the_fraction(fraction):
    with pytest.raises(DataError, match="data.holdout"):
        holdout_positions([0] * 20 + [1] * 20, fraction, seed=0)


def test_a_run_with_a_holdout_trains_on_the_rest_and_evaluates_on_it_never_on_val():
    rec = recipes.resolve(str(CI / "scratch.yaml"), ["data.holdout=0.25"])
    train, val = recipe_datasets(rec)
    full = build_dataset("synthetic", None, "train", img_size=32, num_classes=rec.num_classes)
    assert val.split == "holdout" and len(train) + len(val) == len(full) and len(val) == round(0.25 * len(full))
    with pytest.raises(DataError, match="cut from the train split"):
        holdout_split(build_dataset("synthetic", None, "val", img_size=32), 0.1)


def test_the_rbdc_level_keys_scale_each_levels_lr_and_the_coupled_warmup_and_default_to_the_old_plan():
    over = ["rbdc.epochs=[4, 2]", "warmup_epochs=1"]
    old = plan_stages(recipes.resolve(str(CI / "rbdc.yaml"), over), 640, 10)
    new = plan_stages(
        recipes.resolve(
            str(CI / "rbdc.yaml"),
            [*over, "rbdc.narrow_lr_scale=2", "rbdc.coupled_lr_scale=0.5", "rbdc.coupled_warmup_epochs=0.25"],
        ),
        640,
        10,
    )
    assert [(s.lr, s.warmup_steps) for s in old] == [(old[0].lr, 40)] * 3  # 40 steps per epoch
    assert [(s.id, s.lr, s.warmup_steps) for s in new] == [
        ("L0.0", 2 * old[0].lr, 40),
        ("L0.1", 2 * old[0].lr, 40),
        ("L1", 0.5 * old[0].lr, 10),
    ]


SCRATCH, RBDC = str(CI / "scratch.yaml"), str(CI / "rbdc.yaml")
TRIALS = {"s": [{"lr_base": 1e-3}, {"lr_base": 2e-3}], "r": [{"lr_base": 1e-3}, {"rbdc.narrow_lr_scale": 2.0}]}


def _study(tmp_path, tuning=None, **extra):
    tuning = tuning or {"set": {"data.holdout": 0.2}, "seeds": [0, 1], "budgets": [1, 2], "trials": TRIALS}
    path = tmp_path / "study.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "seeds": [0],
                "points": [
                    {"id": "s", "recipe": SCRATCH, "budgets": [3]},
                    {"id": "r", "recipe": RBDC, "budgets": [3], "set": {"rbdc.epochs": None}},
                ],
                "tuning": tuning,
                **extra,
            }
        )
    )
    return path


def test_trials_run_first_cheapest_budget_first_on_the_holdout_and_tuned_points_wait(tmp_path):
    study = load_study(_study(tmp_path), tmp_path / "runs")
    trials = [r for r in study.runs if "/tune/" in r.name]
    assert len(trials) == 2 * 2 * 2 * 2 and study.runs[: len(trials)] == trials
    assert [r.budget_epochs for r in trials] == [1] * 8 + [2] * 8
    assert all("data.holdout=0.2" in r.overrides for r in trials)
    assert trials[0].name == "t/tune/s/t1/b1" and trials[0].point == "tune/s/t1"
    headline = study.runs[len(trials) :]
    assert all(r.status(tmp_path / "runs") == "waiting" and "awaiting tuning" in r.waiting for r in headline)
    assert not any("data.holdout" in o for r in headline for o in r.overrides)  # reported on val


def _finish(out, run, top1=None, failed=False):
    d = run.run_dir(out)
    d.mkdir(parents=True, exist_ok=True)
    if failed:
        (d / rundir.FAILED).write_text(json.dumps({"reason": "diverged"}))
    else:
        (d / rundir.RESULTS).write_text(json.dumps({"eval_top1": top1, "total_train_flops": 1e12, "wall_s": 1.0}))


def test_each_point_runs_at_its_best_trial_by_mean_holdout_top1_over_seeds_and_budgets(tmp_path):
    path, out = _study(tmp_path), tmp_path / "runs"
    scores = {("s", 1): 50.0, ("s", 2): 52.0, ("r", 1): 55.0}  # r's trial 2 diverges once: it scores 0 there
    for r in load_study(path, out).runs:
        if "/tune/" in r.name:
            point, trial = r.point.split("/")[1], int(r.point[-1])
            if (point, trial) == ("r", 2) and r.seed == 1 and r.budget_epochs == 2:
                _finish(out, r, failed=True)
            else:
                _finish(out, r, scores.get((point, trial), 56.0) + r.seed)
    study = load_study(path, out)
    chosen = {r.point: r.overrides for r in study.runs if "/tune/" not in r.name}
    assert "lr_base=0.002" in chosen["s"] and "rbdc.narrow_lr_scale" not in " ".join(chosen["r"])
    assert study.choices["s"].startswith("tuned: trial 2") and study.choices["r"].startswith("tuned: trial 1")
    assert all(r.status(out) == "pending" for r in study.runs if "/tune/" not in r.name)


def test_tied_trials_go_to_the_earlier_one(tmp_path):
    path, out = _study(tmp_path), tmp_path / "runs"
    for r in load_study(path, out).runs:
        if "/tune/" in r.name:
            _finish(out, r, 60.0)
    assert all(why.startswith("tuned: trial 1") for why in load_study(path, out).choices.values())


def test_a_trial_key_that_belongs_to_another_protocol_is_refused_naming_it(tmp_path):
    tuning = {
        "set": {"data.holdout": 0.2},
        "budgets": [1],
        "trials": {"s": [{"lr_base": 1e-3}], "g": [{"growth.scale": 0.3}]},
    }  # gradmax's, not net2net's
    path = tmp_path / "study.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "seeds": [0],
                "tuning": tuning,
                "points": [
                    {"id": "s", "recipe": SCRATCH, "budgets": [3]},
                    {"id": "g", "recipe": RBDC, "budgets": [3], "set": {"protocol": "net2net", "rbdc.epochs": None}},
                ],
            }
        )
    )
    with pytest.raises(
        UserError,
        match=r"^\S+: tuning.trials.g trial 1: recipe key 'growth.scale' is not a key of "
        r"this point's protocol \(`rbdc keys` lists them[^\n]*\)$",
    ):
        load_study(path)


@pytest.mark.parametrize(
    "tuning, message",
    [
        ({"set": {}, "budgets": [1], "trials": TRIALS}, "needs `data.holdout"),
        (
            {"set": {"data.holdout": 0.2}, "budgets": [1], "trials": {"s": [{"rbdc.narrow_lr_scale": 2}]}},
            "trials.s trial 1: recipe key 'rbdc.narrow_lr_scale' is not a key of this point",
        ),
        ({"set": {"data.holdout": 0.2}, "budgets": [1], "trials": {"s": [{"lr_bse": 1e-3}]}}, "'lr_bse' is not a key"),
        (
            {"set": {"data.holdout": 0.2}, "budgets": [1], "trials": {"s": TRIALS["s"], "r": TRIALS["r"][:1]}},
            "different numbers of trials",
        ),
        ({"set": {"data.holdout": 0.2}, "budgets": [1], "trials": {"x": TRIALS["s"]}}, "no point has that id"),
        ({"set": {"data.holdout": 0.2}, "budgets": [0], "trials": TRIALS}, "tuning.budgets must be"),
        ({"set": {"data.holdout": 0.2}, "budgets": [1], "trials": TRIALS, "seed": [1]}, "unknown tuning key"),
    ],
)
def test_a_bad_tuning_section_is_refused_naming_the_field_before_anything_is_written(tmp_path, capsys, tuning, message):
    path = _study(tmp_path, tuning)
    with pytest.raises(UserError, match=message):
        load_study(path)
    assert main(["study", str(path), "-o", str(tmp_path / "runs"), "--list"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_a_tuning_budget_with_no_step_for_a_level_stops_the_study_in_one_line(tmp_path, capsys):
    path = _study(tmp_path, {"set": {"data.holdout": 0.2}, "budgets": [0.001], "trials": TRIALS})
    assert main(["study", str(path), "-o", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "less than one" in err[0] and not (tmp_path / "runs").exists()


def test_the_report_names_every_trial_its_held_out_scores_and_the_one_each_point_uses(tmp_path):
    from rbdc.report.study_tuning import tuning_section as _tuning_section

    path, out = _study(tmp_path), tmp_path / "runs"
    assert "| s | 1 | lr_base=0.001 | – | – | – |  |" in "\n".join(_tuning_section(load_study(path, out), out / "t"))
    for r in load_study(path, out).runs:
        if "/tune/" in r.name:
            _finish(out, r, 50.0 + int(r.point[-1]) + r.seed)  # trial 2 wins by a point everywhere
    md = "\n".join(_tuning_section(load_study(path, out), out / "t"))
    assert "## Tuning on a held-out split" in md and "data.holdout=0.2" in md
    assert "| s | 2 | lr_base=0.002 | 52.50 | 52.50 | 52.50 | **yes** |" in md
    assert "| r | 1 | lr_base=0.001 | 51.50 | 51.50 | 51.50 |  |" in md


def test_the_report_names_each_points_tuned_setting_in_one_line_near_its_top(tmp_path):
    from rbdc.report.study_tuning import tuned_choices, tuned_settings

    path, out = _study(tmp_path), tmp_path / "runs"
    assert tuned_settings(tuned_choices(load_study(path, out), out / "t"))[0].endswith(
        ": r not tuned yet; s not tuned yet."
    )
    for r in load_study(path, out).runs:
        if "/tune/" in r.name:
            _finish(out, r, 50.0 + int(r.point[-1]) + r.seed)  # trial 2 wins by a point everywhere
    line = tuned_settings(tuned_choices(load_study(path, out), out / "t"))[0]
    assert line.startswith("**Tuned settings**")
    # s's winner is the largest lr_base its grid tried, r's sets a key only one trial sets: no grid, no edge
    assert ": r rbdc.narrow_lr_scale=2.0 (trial 2); s lr_base=0.002 (trial 2, the largest lr_base tried)." in line
    assert line.endswith("may be tuned less well than the others.")


@pytest.mark.parametrize(
    "chosen, edges",
    [
        ({"lr_base": 4e-3}, ["largest lr_base tried"]),
        ({"lr_base": 1e-3}, ["smallest lr_base tried"]),
        ({"lr_base": 2e-3}, []),
        ({"lr_base": 2e-3, "amp": False}, []),
        ({"lr_base": 4e-3, "amp": True}, ["largest lr_base tried"]),  # a switch has no edge
        ({"lr_base": 1e-3, "warmup_epochs": 0.5}, ["smallest lr_base tried"]),  # a key one trial sets: no grid
    ],
)
def test_a_tuned_value_at_the_end_of_its_grid_is_named_as_the_edge(chosen, edges):
    from rbdc.studies.tuning import Trial, Tuning, grid_edges

    grid = [{"lr_base": 1e-3}, {"lr_base": 2e-3}, {"lr_base": 4e-3, "amp": True}, {"lr_base": 2e-3, "amp": False}]
    grid.append({"lr_base": 1e-3, "warmup_epochs": 0.5})
    tune = Tuning({}, [0], [8.0], {"p": [Trial("p", i + 1, o) for i, o in enumerate(grid)]})
    assert grid_edges(tune, "p", chosen) == edges


def test_a_new_trial_that_moves_a_points_setting_stops_the_study_before_it_reuses_the_old_runs(
    tmp_path, monkeypatch, capsys
):
    """A trial added to a study whose tuned points already ran: the trials run first; if the new one wins, the
    points' finished runs were made at the old setting and are refused (or moved aside with --rerun-changed), never
    counted as done."""
    from rbdc.studies import study as study_mod

    out = tmp_path / "runs"
    path = _study(tmp_path)
    for r in load_study(path, out).runs:  # trial 1 wins for s, its point has run at lr_base=0.001
        if "/tune/" in r.name:
            _finish(out, r, 60.0 - int(r.point[-1]))
    old = next(r for r in load_study(path, out).runs if r.point == "s")
    assert "lr_base=0.001" in old.overrides
    old.run_dir(out).mkdir(parents=True)
    rec = recipes.resolve(old.recipe, list(old.overrides), seed=old.seed, name=old.name)
    (old.run_dir(out) / rundir.RECIPE).write_text(recipes.dump(rec))
    _finish(out, old, 40.0)
    trials = {"s": [*TRIALS["s"], {"lr_base": 4e-3}], "r": [*TRIALS["r"], {"lr_base": 4e-3}]}
    path = _study(tmp_path, {"set": {"data.holdout": 0.2}, "seeds": [0, 1], "budgets": [1, 2], "trials": trials})
    trained = []

    def fake_run_local(study, output, runs, *a, **k):  # trial 3 wins everywhere; the points' runs are recorded
        for r in runs:
            if r.status(output) not in ("pending", "started"):
                continue
            if "/tune/" in r.name:
                _finish(output, r, 70.0)
            else:
                trained.append(r.name)
        return []

    monkeypatch.setattr(study_mod, "run_local", fake_run_local)
    assert main(["study", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "changed  t/s/b3 seed 0: lr_base" in err and "--rerun-changed" in err and not trained
    assert (old.run_dir(out) / rundir.RESULTS).is_file()  # kept where it was
    assert main(["study", str(path), "-o", str(out), "--rerun-changed"]) == 0
    assert sorted(trained) == ["t/r/b3", "t/s/b3"] and not old.run_dir(out).exists()
    assert len(list((out / "superseded").rglob(rundir.RESULTS))) == 1
