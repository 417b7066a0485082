"""Seeds of the data pipeline: how integers (seed, epoch, rank, position, class...) become random streams.

Two mixes, each the one way of its kind, because both define recorded data:

* :func:`mix_seed`, a splitmix64 hash to one integer, seeds the torch generators and global RNG scopes (epoch orders,
  per-sample and per-batch augmentation);
* :func:`numpy_rng`, numpy's ``SeedSequence`` of the integers, draws the numpy streams (which images a ``subset``
  keeps, the synthetic images).
"""

from __future__ import annotations

import contextlib
import random
from typing import Iterator

import numpy as np
import torch


_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """Hash integers into one 63-bit seed (splitmix64 steps), so nearby (seed, epoch) pairs give unrelated streams."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


def numpy_rng(*values: int) -> np.random.Generator:
    """A numpy generator seeded by the ``SeedSequence`` of ``values``: nearby tuples give unrelated streams."""
    return np.random.default_rng(list(values))


@contextlib.contextmanager
def _seeded_rng(seed: int, restore: bool) -> Iterator[None]:
    """Seed python, numpy and torch CPU generators (what timm's transforms draw from); optionally restore them after.

    Restoring matters in the main process (num_workers=0), where the training loop owns those generators.
    """
    saved = (random.getstate(), np.random.get_state(), torch.default_generator.get_state()) if restore else None
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.default_generator.set_state(saved[2])
