"""Preemption (rbdc.training.preempt): SIGTERM, SIGUSR1 or submitit's signal make a run checkpoint at the next
optimizer step and exit with submitit's requeue code; rerunning resumes inside the epoch to the uninterrupted run's
weights."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import CI, QUIET, preempt_after  # tests/conftest.py
from safetensors.torch import load_file

from rbdc.training import preempt
from rbdc.runs import rundir, train
from rbdc.cli import main


def _untimed(d):
    res = json.loads((d / rundir.RESULTS).read_text())
    return {k: v for k, v in res.items() if k not in rundir.TIMING_COLUMNS}


def _rows(d):
    _, rows = rundir.read_summary(d / rundir.SUMMARY)
    return [{k: v for k, v in r.items() if k not in rundir.TIMING_COLUMNS} for r in rows]


@pytest.mark.parametrize("protocol, stop_at", [("scratch", 5), ("rbdc", 9)])
def test_a_preempted_run_checkpoints_inside_the_epoch_and_resumes_to_the_uninterrupted_weights(
    protocol, stop_at, ci_reference, tmp_path, monkeypatch
):
    reference, results = ci_reference(protocol)
    recipe = str(CI / f"{protocol}.yaml")
    preempt_after(monkeypatch, stop_at)
    with pytest.raises(preempt.Preempted, match="preempted by SIGUSR1 .* at step"):
        train.run_recipe(recipe, str(tmp_path), [], **QUIET)
    monkeypatch.undo()
    preempt._state["requested"] = None
    run_dir = tmp_path / results["name"]
    ckpts = list(run_dir.rglob(rundir.CHECKPOINT))
    assert len(ckpts) == 1 and not (run_dir / rundir.FAILED).exists()  # resumable, not failed
    state = rundir.RunDir(run_dir).load_checkpoint(ckpts[0].parent.name)
    assert state["in_epoch"]["n_steps"] > 0  # stopped between two steps of an epoch, not at its end
    train.run_recipe(recipe, str(tmp_path), [], **QUIET)
    assert _untimed(run_dir) == _untimed(reference)
    assert _rows(run_dir) == _rows(reference)
    a, b = load_file(run_dir / rundir.FINAL), load_file(reference / rundir.FINAL)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_signals_set_the_flag_only_while_armed():
    with preempt.armed():
        assert preempt.requested() is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert preempt.requested() == "SIGUSR1"
    assert preempt.requested() is None and signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def _launch(tmp_path, *extra):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rbdc.cli",
            "train",
            "-c",
            str(CI / "scratch.yaml"),
            "-o",
            str(tmp_path),
            "--set",
            "epochs=6",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _wait_for_epoch(run_dir, proc, timeout=120):
    t0 = time.time()
    while not (run_dir / rundir.SUMMARY).is_file():
        assert proc.poll() is None and time.time() - t0 < timeout, proc.communicate()
        time.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_rbdc_train_exits_144_on_a_preemption_signal_and_the_rerun_resumes(tmp_path, sig):
    p = _launch(tmp_path)
    run_dir = tmp_path / "ci" / "scratch" / "seed0"
    _wait_for_epoch(run_dir, p)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == preempt.PREEMPTED_EXIT == 144
    assert f"preempted by {sig.name}" in err and "Traceback" not in err
    assert list(run_dir.rglob(rundir.CHECKPOINT)) and not (run_dir / rundir.FAILED).exists()
    assert main(["train", "-c", str(CI / "scratch.yaml"), "-o", str(tmp_path), "--set", "epochs=6"]) == 0


def _children(pid: int) -> list[int]:
    path = f"/proc/{pid}/task/{pid}/children"
    return [int(c) for c in open(path).read().split()] if os.path.exists(path) else []


@pytest.mark.slow
def test_submitit_local_executor_requeues_a_preempted_run_which_then_finishes(tmp_path):
    submitit = pytest.importorskip("submitit")
    from rbdc.runs.launch import SlurmTrain

    out = tmp_path / "runs"
    ex = submitit.LocalExecutor(folder=tmp_path / "submitit")
    ex.update_parameters(timeout_min=10)
    job = ex.submit(SlurmTrain(str(CI / "scratch.yaml"), str(out), ["--set", "epochs=6"]))
    run_dir = out / "ci" / "scratch" / "seed0"
    t0 = time.time()
    while not (run_dir / rundir.SUMMARY).is_file():
        assert not job.done() and time.time() - t0 < 180, job.stderr()
        time.sleep(0.2)
    tasks = _children(job._process.pid)  # the controller's task: the process that trains
    assert len(tasks) == 1
    os.kill(tasks[0], signal.SIGUSR1)  # Slurm's warning signal (sbatch --signal=USR1@120)
    assert job.result() == 0
    log = job.stderr() or ""
    assert "preempted by SIGUSR1" in log, log[-2000:]
    assert json.loads((run_dir / rundir.RESULTS).read_text())["eval_top1"] >= 0
    assert len(rundir.recorded_envs(run_dir)) == 2  # started, then resumed by the requeued task
