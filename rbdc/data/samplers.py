"""Samplers whose order and augmentation seeds depend only on (seed, epoch, rank)."""

from __future__ import annotations

from typing import Iterator

import torch


from .seeds import _seeded_rng, mix_seed


class _ShuffleSampler(torch.utils.data.Sampler):
    """Single-process sampler: a permutation (or the identity) that depends only on (seed, epoch)."""

    def __init__(self, n: int, seed: int, shuffle: bool):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def _seeded_sampler(cls, seed: int, /, *args, **kwargs):
    """A ``cls`` sampler (timm's ``RepeatAugSampler``, torch's ``DistributedSampler``) whose shuffle of epoch e is
    seeded by ``mix_seed(seed, e)``: timm's seeds it with the epoch alone, torch's with ``seed + e``, which makes
    the order of seed s + 1 in epoch e that of seed s in epoch e + 1 (sibling stages have consecutive seeds)."""

    class _Seeded(cls):
        def set_epoch(self, epoch: int) -> None:
            self.epoch = mix_seed(seed, epoch)

    sampler = _Seeded(*args, **kwargs)
    sampler.set_epoch(0)
    return sampler


class _TaggedSampler(torch.utils.data.Sampler):
    """Yields ``(index, augmentation seed)``; the seed depends on (seed, epoch, rank, position) only.

    Passing the seed with the index lets each sample's augmentation be reproduced whatever worker decodes it, with
    persistent workers too (they never see ``set_epoch``).
    """

    def __init__(self, base, seed: int, rank: int):
        self.base, self.seed, self.rank, self.epoch = base, seed, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for k, i in enumerate(self.base):
            yield i, mix_seed(self.seed, self.epoch, self.rank, k)

    def __len__(self) -> int:
        return len(self.base)


class _Transformed(torch.utils.data.Dataset):
    """Applies a transform to ``dataset[index]``, seeded per sample when ``train``."""

    def __init__(self, dataset, transform, train: bool):
        self.dataset, self.transform, self.train = dataset, transform, train

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, aug_seed = item
        img, target = self.dataset[index]
        if not self.train:
            return self.transform(img), target
        with _seeded_rng(aug_seed, restore=torch.utils.data.get_worker_info() is None):
            return self.transform(img), target
