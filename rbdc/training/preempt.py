"""Preemption: a signal asks the run to checkpoint at the next optimizer step and exit, to resume where it stopped.

SIGTERM (what a scheduler or ``kill`` sends first), SIGUSR1 (Slurm's warning: ``sbatch --signal=USR1@120``) and, in
a submitit job, submitit's own preemption signal (``SUBMITIT_PREEMPT_SIGNAL``, USR2 by default) set a flag; the
engine checks it after every optimizer step, writes ``last.pt`` with the position inside the epoch, and raises
:class:`Preempted`. ``rbdc train`` then exits with :data:`PREEMPTED_EXIT` (144: submitit's requeue code, so
submitit's local executor runs the job again) and a submitit job requeues itself (``rbdc.runs.launch.SlurmTrain``).
Rerunning the same command resumes to the weights an uninterrupted run ends with.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterator

PREEMPTED_EXIT = 144  # submitit's LOCAL_REQUEUE_RETURN_CODE
_state = {"armed": False, "requested": None}


class Preempted(BaseException):
    """The run wrote its checkpoint and stops: resumable, not failed (a BaseException, like KeyboardInterrupt)."""

    def __init__(self, stage: str, step: int, signame: str):
        super().__init__(
            f"preempted by {signame} in stage {stage} at step {step}: checkpoint written; rerun the "
            "same command to resume"
        )


def signals() -> list[signal.Signals]:
    sigs = [signal.SIGTERM, signal.SIGUSR1]
    if os.environ.get("SUBMITIT_EXECUTOR"):
        sigs.append(getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")))
    return sigs


def _handler(signum, frame) -> None:
    _state["requested"] = signal.Signals(signum).name


@contextlib.contextmanager
def armed() -> Iterator[None]:
    """Catch the preemption signals for the block (the main thread only, as Python's signal module requires)."""
    previous = {s: signal.signal(s, _handler) for s in signals()}
    _state.update(armed=True, requested=None)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state.update(armed=False, requested=None)


def request(name: str = "SIGTERM") -> None:
    """Ask for a stop as a signal would (tests, or code that knows the job is about to end)."""
    _state["requested"] = name


def requested(d=None, device=None) -> str | None:
    """The signal's name once one asked for a stop, on every rank alike (a flag all-reduced when distributed)."""
    name = _state["requested"]
    if d is not None and d.world > 1 and _state["armed"]:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1.0 if name else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        name = name or ("SIGTERM (another rank)" if flag.item() else None)
    return name
