"""``rbdc.jobs`` > 1: the pending independent stages of each level trained in parallel child processes
(``rbdc train --resume RUN_DIR --only-stage ID``, one GPU each when there are GPUs), then merged into the run in
stage order; later levels wait for their parents."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from . import rundir
from .errors import UserError
from .flops import Ledger


def run_parallel(run_dir: Path, stages, man: dict, jobs: int, log=print) -> None:
    """Train the pending stages of each level with more than one pending stage in up to ``jobs`` processes at a
    time, and merge them into ``man`` (and the run directory's files)."""
    ngpu = torch.cuda.device_count()
    for level in sorted({s.level for s in stages}):
        pending = [s for s in stages if s.level == level and s.id not in man["stages"]
                   and not (rundir.stage_dir(run_dir, s.id) / rundir.STAGE_DONE).is_file()]
        if len(pending) < 2:
            continue
        log(f"level {level}: training {', '.join(s.id for s in pending)} in {min(jobs, len(pending))} "
            f"parallel processes")
        running: list = []
        try:
            for i, st in enumerate(pending):
                while len(running) >= jobs:
                    _wait(run_dir, *running[0])
                    running.pop(0)
                env = dict(os.environ, OMP_NUM_THREADS=str(max(1, torch.get_num_threads() // jobs)))
                if ngpu:
                    env["CUDA_VISIBLE_DEVICES"] = str(i % ngpu)
                cmd = [sys.executable, "-m", "rbdc.cli", "train", "--resume", str(run_dir), "--only-stage", st.id]
                (run_dir / rundir.STAGES).mkdir(parents=True, exist_ok=True)
                with open(rundir.stage_log(run_dir, st.id), "a") as out:  # the child holds its own descriptor
                    running.append((st.id, subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)))
            while running:
                _wait(run_dir, *running[0])
                running.pop(0)
        finally:  # a failed (or interrupted) stage stops its siblings: no trainer outlives the run that started it
            for _, proc in running:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait()
        for st in pending:
            merge(run_dir, st.id, man)


def _wait(run_dir: Path, stage: str, proc: subprocess.Popen) -> None:
    if proc.wait():
        child = rundir.read_failed(rundir.stage_dir(run_dir, stage))
        if child:
            raise rundir.RunFailed(child["reason"], stage=stage, step=child["step"], diverged=child["diverged"])
        raise UserError(f"stage {stage} failed (exit {proc.returncode}); see {rundir.stage_log(run_dir, stage)}; "
                        f"rerun the same command to resume")


def merge(run_dir: Path, stage: str, man: dict, main: bool = True) -> None:
    """Append a stage trained by a child process to the run: its rows and ledger continue the running totals.
    ``main``: this process writes the run directory's files (rank 0)."""
    payload = rundir.read_json(rundir.stage_dir(run_dir, stage) / rundir.STAGE_DONE,
                               f"delete it to retrain stage {stage}")
    ledger = Ledger.from_dict(man["ledger"])
    offset = ledger.total
    for e in Ledger.from_dict(payload["ledger"]).entries:
        ledger.add(e.stage, e.model, e.images, e.flops_per_image)
    rows = list(man["rows"]) + [{**r, "cum_train_flops": r["cum_train_flops"] + offset} for r in payload["rows"]]
    man["stages"][stage] = payload["entry"]
    man["rows"], man["ledger"] = rows, ledger.to_dict()
    if main:
        rundir.write_manifest(run_dir, man)
        rundir.write_progress(run_dir, rows, ledger)
