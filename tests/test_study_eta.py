"""``rbdc study --list``'s hours left: the unfinished runs' FLOPs at the speed their recipe's finished runs reached on
this CPU kind and thread count (rbdc.studies.eta)."""

import json

import pytest

from rbdc.runs import rundir
from rbdc.studies import eta
from rbdc.studies.spec import StudyRun

HERE = {"capability": "AVX2", "bf16_fast": False}


def _finish(output, run, flops, wall, cpu=HERE, threads=1):
    d = run.run_dir(output)
    d.mkdir(parents=True)
    rundir.append_command(d, "rbdc train ...", {"cpu": cpu, "threads": threads})
    (d / rundir.RESULTS).write_text(json.dumps({"total_train_flops": flops, "wall_s": wall}))


def _run(recipe, seed, point="p"):
    return StudyRun(f"s/{point}/b8", f"/r/{recipe}.yaml", (), seed, 8, point)


@pytest.fixture
def here(monkeypatch):
    monkeypatch.setattr(eta, "this_cpu", lambda: dict(HERE))


def test_each_recipe_at_its_own_speed_and_slots_share_the_total(tmp_path, here):
    a0, a1, b0 = _run("a", 0), _run("a", 1), _run("b", 0, point="q")
    _finish(tmp_path, a0, flops=100.0, wall=10.0)  # recipe a: 10 FLOP/s
    _finish(tmp_path, b0, flops=100.0, wall=50.0)  # recipe b: 2 FLOP/s
    speed = eta.speeds([a0, a1, b0], tmp_path, HERE, threads=1)
    assert {k: v[0] / v[1] for k, v in speed.items()} == {"a": 10.0, "b": 2.0}
    assert eta.wall_left([(a1, 200.0)], speed, jobs=1) == pytest.approx(20.0)
    assert eta.wall_left([(a1, 200.0), (_run("b", 1, "q"), 20.0)], speed, jobs=2) == pytest.approx((20 + 10) / 2)


def test_a_recipe_without_a_run_here_counts_at_the_pooled_speed_and_says_so(tmp_path, here):
    a0, c0 = _run("a", 0), _run("c", 0, point="r")
    _finish(tmp_path, a0, flops=100.0, wall=10.0)
    speed = eta.speeds([a0, c0], tmp_path, HERE, threads=1)
    assert eta.wall_left([(c0, 100.0)], speed, jobs=1) == pytest.approx(10.0)
    text = eta.eta_text([a0, c0], [(c0, 54000.0)], tmp_path, jobs=1, threads=1)
    assert text.startswith("about 1.5 h at 1 run(s)") and "1 finished runs" in text and "c at the average speed" in text


def test_runs_of_another_cpu_kind_or_thread_count_or_mixed_kinds_do_not_count(tmp_path, here):
    other = {"capability": "AVX512", "bf16_fast": True}
    runs = [_run("a", s) for s in range(4)]
    _finish(tmp_path, runs[0], 100.0, 1.0, cpu=other)
    _finish(tmp_path, runs[1], 100.0, 1.0, threads=2)
    _finish(tmp_path, runs[2], 100.0, 1.0)
    rundir.append_command(runs[2].run_dir(tmp_path), "rbdc train ...", {"cpu": other, "threads": 1})  # resumed there
    assert eta.speeds(runs, tmp_path, HERE, threads=1) == {}
    text = eta.eta_text(runs, [(runs[3], 1.0)], tmp_path, jobs=2, threads=1)
    assert "no finished run of this study on this CPU kind (AVX2, 1 thread(s) per run)" in text and "--estimate" in text


def test_a_run_that_recorded_another_cpu_model_does_not_count_one_without_a_model_does(tmp_path):
    """One capability spans machines up to 3x apart: where a run named its CPU model, only that model counts here;
    an older run that recorded the capability alone counts on a machine of that capability (the best guess)."""
    here = {**HERE, "model": "AMD EPYC (26-2)"}
    runs = [_run("a", s) for s in range(3)]
    _finish(tmp_path, runs[0], 100.0, 1.0, cpu={**HERE, "model": "Intel Xeon (6-207)"})
    assert eta.speeds(runs, tmp_path, here, threads=1) == {}
    _finish(tmp_path, runs[1], 100.0, 10.0, cpu=HERE)
    _finish(tmp_path, runs[2], 100.0, 10.0, cpu=here)
    assert eta.speeds(runs, tmp_path, here, threads=1) == {"a": [200.0, 20.0, 2]}


def test_rough_time():
    assert [eta.rough_time(s) for s in (5, 600, 5400, 93600)] == ["1 min", "10 min", "1.5 h", "26.0 h"]


def test_nothing_left(tmp_path, here):
    assert eta.eta_text([_run("a", 0)], [], tmp_path, jobs=2, threads=1) == "nothing left to train"
