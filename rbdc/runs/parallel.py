"""``rbdc.jobs`` > 1: a level's pending independent stages trained in parallel child processes, up to ``jobs`` at a
time (one GPU each when there are GPUs). Each child runs ``python -m rbdc.runs.train RUN_DIR STAGE``
(:func:`rbdc.runs.train.train_child`), writes its stage's result to ``stages/<id>/stage.json`` and its output to
``stages/<id>.log``; the parent merges the results into the run in stage order (:mod:`rbdc.runs.manifest`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from . import rundir
from ..errors import RunFailed, UserError
from .rundir import RunDir

__all__ = ["train_in_parallel", "child_command"]


def child_command(run_dir: RunDir | Path, stage: str) -> list[str]:
    """The command of the child process that trains ``stage`` of the run in ``run_dir``."""
    return [sys.executable, "-m", "rbdc.runs.train", str(run_dir), stage]


def train_in_parallel(run_dir: RunDir | Path, stages: list, jobs: int, log=print) -> None:
    """Train ``stages`` (independent: none is another's parent) in child processes, ``jobs`` at a time; the first
    failure stops the others and is raised (:class:`rbdc.errors.RunFailed` with the child's ``failed.json``)."""
    run_dir = RunDir(run_dir)
    ngpu = torch.cuda.device_count()
    log(
        f"level {stages[0].level}: training {', '.join(s.id for s in stages)} in {min(jobs, len(stages))} "
        f"parallel processes"
    )
    running: list = []
    try:
        for i, st in enumerate(stages):
            while len(running) >= jobs:
                _wait(run_dir, *running[0])
                running.pop(0)
            env = dict(os.environ, OMP_NUM_THREADS=str(max(1, torch.get_num_threads() // jobs)))
            if ngpu:
                env["CUDA_VISIBLE_DEVICES"] = str(i % ngpu)
            (run_dir / rundir.STAGES).mkdir(parents=True, exist_ok=True)
            with open(run_dir.stage_log(st.id), "a") as out:  # the child holds its own descriptor
                proc = subprocess.Popen(child_command(run_dir, st.id), env=env, stdout=out, stderr=subprocess.STDOUT)
            running.append((st.id, proc))
        while running:
            _wait(run_dir, *running[0])
            running.pop(0)
    finally:  # a failed (or interrupted) stage stops its siblings: no trainer outlives the run that started it
        for _, proc in running:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()


def _wait(run_dir: RunDir, stage: str, proc: subprocess.Popen) -> None:
    if proc.wait():
        child = run_dir.failed(stage)
        if child:
            raise RunFailed(child["reason"], stage=stage, step=child["step"], diverged=child["diverged"])
        raise UserError(
            f"stage {stage} failed (exit {proc.returncode}); see {run_dir.stage_log(stage)}; rerun the "
            f"same command to resume"
        )
