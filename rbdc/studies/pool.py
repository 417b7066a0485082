"""A local pool of K child processes of T threads each: the runner under ``rbdc study`` and ``rbdc det-study``.

Each job is a command whose output goes to its own log file; after each one the pool prints a progress line
(done/total, the job's outcome, an ETA from the cost per second measured so far). No scheduler beyond that: on a
cluster, studies submit one Slurm job per run instead (submitit).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable

from ..runs.runlock import HELD_EXIT
from ..units import human_time

# The directory that holds the imported rbdc package (its sys.path entry): the children import the same code as this
# process, whether that is a checkout (editable install, PYTHONPATH) or site-packages. Not a read of the checkout.
IMPORT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Job:
    """One command of the pool. ``key`` identifies it to the caller; ``cost`` (FLOPs, iterations...) drives the ETA;
    ``outcome`` reads its result once it exited 0 and returns (finished?, text for the progress line)."""

    key: Hashable
    label: str
    argv: tuple[str, ...]  # after ``python -m``
    log: Path
    cost: float
    outcome: Callable[[], tuple[bool, str]]
    title: str = ""  # the log gets "=== TITLE <start time> ===" before the command's output
    env: tuple[tuple[str, str], ...] = ()  # extra environment of the command


def child_env(threads: int, slot: int, jobs: int, nproc: int = 1, extra: dict | None = None) -> dict:
    """The environment of the job in pool slot ``slot``: its threads, this process's rbdc code, and where there are
    several GPUs, its own share of them (jobs share one GPU when there are more jobs than GPUs)."""
    env = dict(os.environ, **(extra or {}), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join(
        [str(IMPORT_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    import torch

    visible = env.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    if len(gpus) > 1:
        per = max(nproc, len(gpus) // jobs)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[(slot * per + i) % len(gpus)] for i in range(per))
    return env


def run(
    todo: list[Job], *, jobs: int, threads: int, total: int, done_before: int = 0, nproc: int = 1, log=print
) -> list[Job]:
    """Run ``todo`` ``jobs`` at a time; returns the jobs that failed (non-zero exit or no result)."""
    finished: list[Job] = []
    failed: list[Job] = []
    rate: list[tuple[float, float]] = []  # (cost, seconds) of the jobs finished here: the ETA's speed per slot
    slots: queue.Queue = queue.Queue()
    for i in range(jobs):
        slots.put(i)

    def one(job: Job) -> tuple[Job, int, float]:
        slot = slots.get()
        try:
            return (job, *_call(job, slot, threads=threads, jobs=jobs, nproc=nproc))
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        pending = {pool.submit(one, job) for job in todo}
        while pending:
            complete, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in complete:
                job, rc, dt = fut.result()
                n_done = done_before + len(finished) + len(failed) + 1
                left = [x for x in todo if x not in finished and x not in failed and x is not job]
                if rc == HELD_EXIT:  # another launcher holds the run: neither finished nor failed here
                    log(f"[{n_done}/{total}] {job.label}: skipped: {_last_line(job.log)}", flush=True)
                    finished.append(job)
                    continue
                ok, what = _outcome(job, rc)
                if ok:
                    finished.append(job)
                    rate.append((job.cost, dt))
                else:
                    failed.append(job)
                log(f"[{n_done}/{total}] {job.label}: {what} in {human_time(dt)}{_eta(rate, left, jobs)}", flush=True)
    return failed


def _launcher(nproc: int) -> list[str]:
    """The command before a job's module: ``python -m``, or torchrun's ``--standalone`` launcher of ``nproc``
    processes."""
    if nproc == 1:
        return [sys.executable, "-m"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m"]


def _call(job: Job, slot: int, *, threads: int, jobs: int, nproc: int) -> tuple[int, float]:
    """Run ``job`` in pool slot ``slot``, its output appended to its log under a title line; (exit code, seconds)."""
    job.log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(job.log, "a") as f:
        f.write(f"\n=== {job.title} {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
        f.flush()
        rc = subprocess.call(  # in this process's working directory (the jobs' paths are absolute)
            [*_launcher(nproc), *job.argv],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=child_env(threads, slot, jobs, nproc, dict(job.env)),
        )
    return rc, time.time() - t0


def _outcome(job: Job, rc: int) -> tuple[bool, str]:
    """(finished?, text for the progress line) of a job that exited with ``rc``; a failure names its log."""
    try:
        ok, what = job.outcome() if rc == 0 else (False, "")
    except Exception as e:  # a result that cannot be read fails this job, not the pool
        ok, what = False, f"{type(e).__name__}: {e}"
    if not ok:
        what = f"FAILED (exit {rc}): {what or _last_line(job.log)}; log {job.log}"
    return ok, what


def _last_line(log: Path) -> str:
    return (log.read_text(errors="replace").strip().splitlines() or [""])[-1]


def _eta(rate: list[tuple[float, float]], left: list[Job], jobs: int) -> str:
    """`` | ETA ...`` of the jobs ``left`` at the speed measured so far (``rate``), ``jobs`` at a time; "" before any
    speed is known."""
    if not rate:
        return ""
    speed = sum(c for c, _ in rate) / sum(t for _, t in rate)  # cost per second of one slot
    return f" | ETA {human_time(sum(x.cost for x in left) / (speed * jobs))}"
