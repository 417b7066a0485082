"""Seeds of the data pipeline: one 64-bit mix of integers, and an RNG scope seeded from it."""
from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch


_MASK64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """Hash integers into one 63-bit seed (splitmix64 steps), so nearby (seed, epoch) pairs give unrelated streams."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


@contextlib.contextmanager
def _seeded_rng(seed: int, restore: bool) -> Iterator[None]:
    """Seed python, numpy and torch CPU generators (what timm's transforms draw from); optionally restore them after.

    Restoring matters in the main process (num_workers=0), where the training loop owns those generators.
    """
    saved = (random.getstate(), np.random.get_state(), torch.default_generator.get_state()) if restore else None
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.default_generator.set_state(saved[2])
