"""Reliability: one writer per run directory (an OS lock), studies that notice an edited study file, resumes that
refuse to mix code/torch/bf16 paths, and plans that cannot be built refused in one line before anything is written."""

import contextlib
import errno
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml
from conftest import CI, QUIET, interrupt_after, preempt_after  # tests/conftest.py

from rbdc.runs import rundir, runlock, train
from rbdc.cli import main
from rbdc.errors import UserError
from rbdc.studies.study import run_local
from rbdc.studies.spec import load_study

SCRATCH = str(CI / "scratch.yaml")
ONE_EPOCH = ["epochs=1"]


def _run_dir(tmp_path):
    return tmp_path / "ci" / "scratch" / "seed0"


# --- one writer per run ---------------------------------------------------------------------------------------


def test_a_held_run_is_skipped_naming_its_holder_and_nothing_is_written(tmp_path):
    d = _run_dir(tmp_path)
    with runlock.hold(d):
        with pytest.raises(runlock.RunHeld, match=f"pid {os.getpid()} on .* since .*flock lock.*--wait") as e:
            train.run_recipe(SCRATCH, str(tmp_path), ONE_EPOCH, **QUIET)
        assert e.value.exit_code == runlock.HELD_EXIT == 75
        assert not (d / rundir.RECIPE).exists() and not (d / rundir.COMMAND).exists()
    assert train.run_recipe(SCRATCH, str(tmp_path), ONE_EPOCH, **QUIET)["eval_top1"] >= 0  # free again


def test_the_cli_exits_75_for_a_held_run(tmp_path, capsys):
    with runlock.hold(_run_dir(tmp_path)):
        assert main(["train", "-c", SCRATCH, "-o", str(tmp_path), "--set", "epochs=1"]) == 75
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is being trained by pid" in err[0]


@pytest.fixture
def gloo_group(tmp_path):
    """A real gloo process group of one process, destroyed after the test if the code under test left it."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield dist
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.parametrize("error, destroyed", [(None, True), (runlock.RunHeld, True), (RuntimeError, False)])
def test_a_rank_destroys_its_process_group_when_every_rank_ends_alike(tmp_path, gloo_group, error, destroyed):
    """A run that returned, or that every rank found held (rank 0 broadcast it), destroys its process group before
    the interpreter exits: left to teardown, gloo's threads can abort a rank (SIGABRT) instead of its exit code 75.
    Another error leaves the group alone: the other ranks may wait in a collective, where destroying would hang."""
    from rbdc.training.runtime import Dist

    d = Dist(rank=0, world=2)  # what a rank of a 2-process run holds; one process is enough to see its group go
    with pytest.raises(error) if error else contextlib.nullcontext():
        with d.closed_after(every_rank_raises=(runlock.RunHeld,)):
            if error is runlock.RunHeld:
                raise runlock.RunHeld(tmp_path, {"pid": 1})
            if error:
                raise error("a rank failed alone")
    assert gloo_group.is_initialized() is not destroyed


@pytest.mark.parametrize("outcome", ["held", "preempted"])
def test_a_rank_that_stops_like_every_other_leaves_with_its_process_group_destroyed(
    tmp_path, gloo_group, monkeypatch, outcome
):
    """`rbdc train` under torchrun: a held run (rank 0 broadcasts it) or a preemption (its flag is all-reduced) stops
    every rank alike, and each destroys its group before its exit code (75, 144). The CI failure this fixes: one rank
    aborted in gloo's teardown instead, 1 time in 12 on a 2-core machine."""
    from rbdc.training import preempt
    from rbdc.training.runtime import Dist

    monkeypatch.setattr(train.Dist, "init", classmethod(lambda cls: Dist(rank=0, world=2)))
    if outcome == "held":
        with runlock.hold(_run_dir(tmp_path)), pytest.raises(runlock.RunHeld):
            train.run_recipe(SCRATCH, str(tmp_path), ONE_EPOCH, **QUIET)
    else:
        preempt_after(monkeypatch, 1)
        with pytest.raises(preempt.Preempted):
            train.run_recipe(SCRATCH, str(tmp_path), ONE_EPOCH, **QUIET)
    assert not gloo_group.is_initialized()


def test_wait_waits_for_the_holder(tmp_path, monkeypatch):
    d = _run_dir(tmp_path)
    release = threading.Event()
    got = threading.Event()

    def holder():
        with runlock.hold(d):
            got.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    assert got.wait(60), "the holder thread never took the lock"
    threading.Timer(0.5, release.set).start()
    t0 = time.time()
    assert train.run_recipe(SCRATCH, str(tmp_path), ONE_EPOCH, wait=True, log=lambda *a, **k: None)
    assert time.time() - t0 >= 0.5
    t.join()


def test_kill_9_leaves_no_stale_lock(tmp_path):
    d = _run_dir(tmp_path)
    code = (
        "import sys, time; from pathlib import Path; from rbdc.runs import runlock\n"
        "with runlock.hold(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(d)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    assert runlock.holder(d)["pid"] == p.pid
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert runlock.holder(d) is None


def test_without_flock_an_atomic_lock_file_holds_the_run_and_a_dead_holder_is_stale(tmp_path, monkeypatch):
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    d = _run_dir(tmp_path)
    release = runlock.try_acquire(d)
    assert callable(release) and (d / runlock.HELD).is_file()
    other = runlock.try_acquire(d)
    assert other["pid"] == os.getpid() and "lock file" in other["method"]
    release()
    assert not (d / runlock.HELD).exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (d / runlock.HELD).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    assert callable(runlock.try_acquire(d))  # its holder is gone: taken over
    (d / runlock.HELD).write_text(json.dumps({"pid": 1, "host": "another-host"}))
    assert "delete it if that process is gone" in runlock.holder(d)["method"]  # cannot be checked from here


def _tiny_study(tmp_path, **point_set):
    path = tmp_path / "study.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "seeds": [0, 1],
                "jobs": 1,
                "threads": 1,
                "points": [{"id": "scratch", "recipe": SCRATCH, "set": {"epochs": 1, **point_set}}],
            }
        )
    )
    return path


def test_a_study_skips_a_run_another_launcher_holds_and_goes_on(tmp_path):
    study = load_study(_tiny_study(tmp_path))
    out = tmp_path / "runs"
    held, free = study.runs
    (held.run_dir(out)).mkdir(parents=True)
    (held.run_dir(out) / rundir.RECIPE).write_text("started elsewhere")  # a run another launcher has begun
    lines = []
    with runlock.hold(held.run_dir(out)):
        failed = run_local(study, out, study.runs, 1, 1, log=lambda *a, **k: lines.append(a[0]))
    assert failed == []
    assert any(
        line.startswith("skipping tiny/scratch/b seed 0") or ("seed 0" in line and "pid" in line) for line in lines
    ), lines
    assert free.status(out) == "done" and held.status(out) == "started"


# --- studies notice change ----------------------------------------------------------------------------------


def test_an_edited_study_stops_before_training_and_rerun_changed_moves_the_old_runs_aside(tmp_path, capsys):
    out = tmp_path / "runs"
    path = _tiny_study(tmp_path)
    assert main(["study", str(path), "-o", str(out)]) == 0
    before = (load_study(path).runs[0].run_dir(out) / rundir.RESULTS).read_text()
    path = _tiny_study(tmp_path, lr_base=0.5)  # the same point, other settings
    capsys.readouterr()
    assert main(["study", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("changed  tiny/scratch") == 2 and "lr_base" in err and "--rerun-changed" in err
    run = load_study(path).runs[0]
    assert (run.run_dir(out) / rundir.RESULTS).read_text() == before  # nothing trained
    assert main(["study", str(path), "-o", str(out), "--list"]) == 0
    out_text = capsys.readouterr().out
    assert "changed  tiny/scratch seed 0: made with other lr_base" in out_text
    assert not re.search(r"^done", out_text, re.M)  # not "done" beside the settings it was not made with
    assert "2 runs: 2 changed" in out_text and "nothing left to train" in out_text  # --list counts and times the rest
    assert "if the 2 changed run(s) are rerun (--rerun-changed)" in out_text
    from rbdc.report.study import collect

    assert collect(load_study(path), out / "tiny")[("scratch", None)].n == 0  # the report never counts them
    assert main(["study", str(path), "-o", str(out), "--rerun-changed"]) == 0
    assert run.changed(out) == [] and run.status(out) == "done"
    assert len(list((out / "superseded").rglob(rundir.RESULTS))) == 2


# --- resumes refuse to mix ----------------------------------------------------------------------------------


def _interrupted(tmp_path, monkeypatch):
    interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train.run_recipe(SCRATCH, str(tmp_path), [], **QUIET)
    monkeypatch.undo()
    return _run_dir(tmp_path)


@pytest.mark.parametrize("field, value", [("code", {"commit": "0" * 40, "dirty": False}), ("torch", "2.0.0")])
def test_a_resume_under_another_commit_or_torch_is_refused_unless_allowed(tmp_path, monkeypatch, field, value):
    d = _interrupted(tmp_path, monkeypatch)
    text = (d / rundir.COMMAND).read_text()
    env = rundir.recorded_envs(d)[0]
    (d / rundir.COMMAND).write_text(
        text.replace(json.dumps(env, indent=1), json.dumps({**env, field: value}, indent=1))
    )
    with pytest.raises(UserError, match=f"started under {field} .* would resume under {field} .*--allow-mixed"):
        train.run_recipe(SCRATCH, str(tmp_path), [], **QUIET)
    assert train.run_recipe(SCRATCH, str(tmp_path), [], allow_mixed=True, **QUIET)
    assert rundir.recorded_envs(d)[-1]["mixed"][0].startswith(field)
    assert main(["report", str(tmp_path / "ci"), "-o", str(tmp_path / "report")]) == 0
    assert f"seed0 (resumed mixed: {field} " in (tmp_path / "report.md").read_text()  # rbdc report marks the run


def test_a_resume_under_the_same_environment_is_not_mixed(tmp_path, monkeypatch):
    d = _interrupted(tmp_path, monkeypatch)
    assert train.run_recipe(SCRATCH, str(tmp_path), [], **QUIET)
    assert all("mixed" not in env for env in rundir.recorded_envs(d))


def test_the_bf16_matmul_path_is_compared_only_where_both_record_it(tmp_path):
    (tmp_path / rundir.COMMAND).write_text("rbdc train\n" + json.dumps({"torch": "x", "cpu": {"bf16_matmul": "a"}}))
    assert rundir.RunDir(tmp_path).mixed_with({"torch": "x", "cpu": {}}) is None
    assert rundir.RunDir(tmp_path).mixed_with({"torch": "x", "cpu": {"bf16_matmul": "b"}}) == (
        "bf16 matmul a",
        "bf16 matmul b",
    )


# --- plans that cannot be built -----------------------------------------------------------------------------


@pytest.mark.parametrize("dry", [True, False])
def test_a_plan_that_cannot_be_built_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, dry):
    argv = [
        "train",
        "-c",
        str(CI.parents[0] / "imagenet" / "deit-base-rbdc-d2.yaml"),
        "-o",
        str(tmp_path / "o"),
        "--set",
        "model=deit_tiny_patch16_224",
        "--set",
        "data.source=synthetic",
        "--set",
        "batch_size=16",
        *(["--dry-run"] if dry else []),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "num_heads=3 is not divisible by 4" in err[0] and "rbdc.depth" in err[0]
    assert not (tmp_path / "o").exists()
