"""What a training process is besides its model: its place in a process group (:class:`Dist`), its random
streams (saved in and restored from checkpoints) and its peak memory."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["Dist", "peak_mem_mb", "reset_peak_mem", "rng_states", "set_rng_state", "seed_everything"]


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def init(cls) -> "Dist":
        """Join the process group that torchrun describes (RANK/WORLD_SIZE/LOCAL_RANK); single process otherwise."""
        world = int(os.environ.get("WORLD_SIZE", 1))
        if world == 1:
            return cls()
        _die_with_launcher()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        local = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        return cls(dist.get_rank(), dist.get_world_size(), local)

    @contextlib.contextmanager
    def closed_after(self, every_rank_raises: tuple[type[BaseException], ...] = ()):
        """Destroy the process group when the block ends on every rank alike: it returned, or raised one of
        ``every_rank_raises`` (an outcome every rank shares: broadcast or all-reduced). Without it gloo's worker
        threads die in interpreter teardown, and a rank can abort (SIGABRT, "terminate called without an active
        exception") instead of exiting with its code. Another error is left alone: the other ranks may wait in a
        collective, where destroying would hang (torchtitan does the same)."""
        try:
            yield
        except every_rank_raises:
            self._destroy()
            raise
        self._destroy()

    def _destroy(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_mem(device: torch.device) -> None:
    """Start a new high-water mark, so peak memory is per stage and not the whole process's history."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 to clear_refs resets the peak RSS that getrusage reports
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _die_with_launcher() -> None:
    """Under torchrun every trainer runs in a session of its own (torch.distributed.elastic starts it with
    start_new_session=True): have the kernel SIGKILL it when its launcher dies, so that kill -9 of the launcher's
    process group (a study's, a shell job's) cannot leave trainers writing into the run directory (Linux only)."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import ctypes
    import signal

    if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
        return
    if os.getppid() == 1:  # the launcher died before the request took effect
        os._exit(1)


def rng_states(d: Dist) -> dict:
    """The checkpoint's RNG fields: this rank's states ("rng", what a 1-process run reads) and, when distributed,
    every rank's ("rng_by_rank"), so that each rank resumes its own streams (drop-path, Mixup/CutMix)."""
    mine = _rng_state()
    if d.world == 1:
        return {"rng": mine}
    every = [None] * d.world
    dist.all_gather_object(every, mine)
    return {"rng": mine, "rng_by_rank": every}


def _rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
