"""Loaders: batches on a device, streamed (timm transforms in workers) or from the in-memory cache
(augmented on the device); :func:`build_loader` picks one.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import random
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from PIL import Image


from .cache import build_memory_cache
from .datasets import MEMORY_DEFAULT_SCALE, DataError
from .samplers import _ShuffleSampler, _TaggedSampler, _Transformed, _seeded_sampler
from .seeds import mix_seed
from .workers import _cpu_count, _worker_errors


class Loader:
    """Iterable of ``(images, targets)`` batches on ``device``: float32 ``[B, 3, S, S]`` normalised, int64 ``[B]``.

    Attributes:
        dataset: the dataset passed to :func:`build_loader`.
        batch_size: images per batch (per process when distributed).
        sampler: the index sampler (has ``set_epoch``).
        device: where batches are put.
    """

    def __init__(self, dataset, sampler, *, batch_size: int, drop_last: bool, device: torch.device, seed: int):
        self.dataset, self.sampler, self.batch_size = dataset, sampler, batch_size
        self.drop_last, self.device, self.seed, self.epoch = drop_last, device, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration produces (not advanced automatically)."""
        self.epoch = int(epoch)
        self.sampler.set_epoch(self.epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError


class StreamLoader(Loader):
    """Decodes and transforms each image (timm transforms) in DataLoader workers."""

    def __init__(
        self,
        dataset,
        sampler,
        transform,
        *,
        train: bool,
        batch_size: int,
        drop_last: bool,
        device: torch.device,
        seed: int,
        rank: int,
        num_workers: int,
    ):
        super().__init__(dataset, sampler, batch_size=batch_size, drop_last=drop_last, device=device, seed=seed)
        self.transform = transform
        self._tagged = _TaggedSampler(sampler, seed, rank)
        cuda = device.type == "cuda"
        self._dl = torch.utils.data.DataLoader(
            _Transformed(dataset, transform, train),
            batch_size=batch_size,
            sampler=self._tagged,
            drop_last=drop_last,
            num_workers=num_workers,
            pin_memory=cuda,
            persistent_workers=num_workers > 0,
            # An own generator keeps the DataLoader from drawing worker base seeds from the global torch RNG.
            generator=torch.Generator().manual_seed(seed),
        )

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._tagged.set_epoch(self.epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        non_blocking = self.device.type == "cuda"
        with _worker_errors():
            for x, y in self._dl:
                yield x.to(self.device, non_blocking=non_blocking), y.to(self.device, non_blocking=non_blocking)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device without making the host wait: through pinned memory, asynchronously, on CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class MemoryLoader(Loader):
    """Batches gathered from a decoded uint8 tensor and augmented on ``device``, vectorised over the batch.

    Training augmentation: random resized crop (``scale``, ``ratio``) and horizontal flip (``hflip``) in one
    ``grid_sample``, then normalisation and optional random erasing (``re_prob``, timm's ``RandomErasing``). All
    random numbers come from a generator seeded with (seed, epoch, rank).
    """

    def __init__(
        self,
        dataset,
        sampler,
        images: torch.Tensor,
        targets: torch.Tensor,
        *,
        train: bool,
        batch_size: int,
        drop_last: bool,
        device: torch.device,
        seed: int,
        rank: int,
        aug: dict[str, Any],
        cache_path: Path | None = None,
    ):
        super().__init__(dataset, sampler, batch_size=batch_size, drop_last=drop_last, device=device, seed=seed)
        self.train, self.rank, self.cache_path = train, rank, cache_path
        self.images = images.to(device)  # uint8, once: 4x smaller than float and no host->device copy per batch
        self.targets = targets.to(device)
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        mean = torch.tensor(aug.get("mean") or IMAGENET_DEFAULT_MEAN, device=device)
        std = torch.tensor(aug.get("std") or IMAGENET_DEFAULT_STD, device=device)
        self._mean, self._std = (mean * 255).view(1, 3, 1, 1), (std * 255).view(1, 3, 1, 1)
        self.scale = tuple(aug.get("scale") or MEMORY_DEFAULT_SCALE)
        self.ratio = tuple(aug.get("ratio") or (3 / 4, 4 / 3))
        self.hflip = float(aug.get("hflip", 0.5))
        self._erase = None
        if train and aug.get("re_prob", 0) > 0:
            from timm.data.random_erasing import RandomErasing

            self._erase = RandomErasing(
                aug["re_prob"], mode=aug.get("re_mode", "const"), max_count=aug.get("re_count", 1), device=str(device)
            )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # the epoch's order goes to the device once, so slicing a batch's indices never waits on the GPU
        order = _to_device(torch.tensor(list(self.sampler), dtype=torch.int64), self.device)
        gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, self.rank, 0xA06))
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images[idx].to(torch.get_default_dtype())
            if self.train:
                x = self._crop_flip(x, gen)
            x = x.sub_(self._mean).div_(self._std)
            if self._erase is not None:
                with self._device_rng(int(torch.randint(0, 2**62, (1,), generator=gen))):
                    x = self._erase(x)
            yield x, self.targets[idx]

    def _crop_flip(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random resized crop + horizontal flip of a batch, as one affine ``grid_sample`` (bilinear)."""
        b = x.shape[0]
        area = torch.empty(b).uniform_(*self.scale, generator=gen)
        log_r = torch.empty(b).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]), generator=gen)
        r = torch.exp(log_r)
        # Crop width/height as fractions of the side; clamping replaces torchvision's retry loop (a slightly
        # squarer crop at extreme ratios).
        w = torch.sqrt(area * r).clamp(max=1.0)
        h = torch.sqrt(area / r).clamp(max=1.0)
        cx = (1 - w) * torch.rand(b, generator=gen) + w / 2
        cy = (1 - h) * torch.rand(b, generator=gen) + h / 2
        flip = torch.where(torch.rand(b, generator=gen) < self.hflip, -1.0, 1.0)
        # The affine map has no rotation, so the sampling grid is separable: build it by broadcasting (cheaper than
        # affine_grid's batched matmul). Pixel centres in [-1, 1], as affine_grid with align_corners=False.
        s = x.shape[-1]
        base = (torch.arange(s, dtype=torch.get_default_dtype()) * 2 + 1) / s - 1
        gx = (w * flip)[:, None] * base[None, :] + (2 * cx - 1)[:, None]
        gy = h[:, None] * base[None, :] + (2 * cy - 1)[:, None]
        gx, gy = _to_device(gx, x.device), _to_device(gy, x.device)
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    @contextlib.contextmanager
    def _device_rng(self, seed: int) -> Iterator[None]:
        """Seed the generators timm's RandomErasing draws from (python, and torch on the device), then restore them."""
        cuda = self.device.type == "cuda"
        index = (self.device.index if self.device.index is not None else torch.cuda.current_device()) if cuda else 0
        state = random.getstate()
        with torch.random.fork_rng(devices=[index] if cuda else [], device_type="cuda"):
            random.seed(seed)
            torch.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.default_generators[index].manual_seed(seed)
            try:
                yield
            finally:
                random.setstate(state)


_EVAL_AUG_KEYS = ("crop_pct", "crop_mode", "crop_border_pixels", "interpolation", "mean", "std")
_MEMORY_AUG_KEYS = {
    "scale",
    "ratio",
    "hflip",
    "re_prob",
    "re_mode",
    "re_count",
    "mean",
    "std",
    "crop_pct",
    "interpolation",
}


def _check_aug(aug: dict[str, Any]) -> None:
    from timm.data import create_transform

    valid = set(inspect.signature(create_transform).parameters) - {"input_size", "is_training"}
    unknown = sorted(set(aug) - valid)
    if unknown:
        raise ValueError(
            f"unknown augmentation option(s) {', '.join(unknown)}; aug takes the keyword arguments of "
            f"timm.data.create_transform: {', '.join(sorted(valid))}"
        )


def _sampler(dataset, train: bool, seed: int, distributed: bool, repeated_aug: bool):
    """The index sampler of a loader (seeded, sharded when ``distributed``) and this process's rank."""
    if distributed:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "distributed=True but torch.distributed is not initialised; launch with torchrun and "
                "call init_process_group first, or pass distributed=False"
            )
        world, rank = dist.get_world_size(), dist.get_rank()
    else:
        world, rank = 1, 0

    if train and repeated_aug:
        from timm.data.distributed_sampler import RepeatAugSampler

        sampler = _seeded_sampler(RepeatAugSampler, seed, dataset, num_replicas=world, rank=rank)
    elif distributed and train:
        sampler = _seeded_sampler(
            torch.utils.data.DistributedSampler, seed, dataset, num_replicas=world, rank=rank, shuffle=True, seed=0
        )
    elif distributed:
        from timm.data.distributed_sampler import OrderedDistributedSampler

        sampler = OrderedDistributedSampler(dataset, num_replicas=world, rank=rank)
        sampler.set_epoch = lambda epoch: None  # fixed order
    else:
        sampler = _ShuffleSampler(len(dataset), seed, shuffle=train)
    return sampler, rank


def build_loader(
    dataset,
    *,
    batch_size: int,
    train: bool,
    img_size: int,
    aug: dict | None = None,
    num_workers: int | None = None,
    in_memory: bool = False,
    seed: int = 0,
    distributed: bool = False,
    repeated_aug: bool = False,
    drop_last: bool | None = None,
    device: str | torch.device = "cpu",
) -> Loader:
    """Build a batch loader over a dataset from :func:`build_dataset`.

    Args:
        dataset: items ``(PIL image, int target)``; ``in_memory`` needs an :class:`ImageDataset`.
        batch_size: images per batch (per process when distributed).
        train: shuffle and augment (else fixed order, eval transform).
        img_size: output side in pixels.
        aug: keyword arguments of ``timm.data.create_transform`` (``auto_augment``, ``re_prob``, ``interpolation``,
            ``color_jitter``, ``scale``, ``crop_pct``...). In memory only ``scale`` (default (0.35, 1)), ``ratio``,
            ``hflip``, ``re_prob``/``re_mode``/``re_count``, ``mean``/``std`` and, for eval, ``crop_pct`` apply.
        num_workers: DataLoader workers of the streaming path (default: CPU count, at most 8).
        in_memory: decode everything once into a uint8 tensor (disk-cached) and augment batches on ``device``.
        seed: seed of order and augmentation; an epoch's batches depend only on (seed, epoch, rank).
        distributed: shard with ``DistributedSampler`` (needs an initialised process group).
        repeated_aug: DeiT's repeated augmentation (timm ``RepeatAugSampler``, 3 repeats) for training.
        drop_last: drop the last partial batch; default: ``train``.
        device: where batches go; CUDA turns on pinned memory for the streaming path.

    Returns:
        A :class:`Loader`; call ``set_epoch(epoch)`` before iterating each epoch.
    """
    aug = dict(aug or {})
    _check_aug(aug)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    drop_last = train if drop_last is None else drop_last

    sampler, rank = _sampler(dataset, train, seed, distributed, repeated_aug)
    n = len(sampler)
    if drop_last and n < batch_size:
        raise DataError(
            f"{dataset!r} gives {n} images per epoch to this process, fewer than batch_size={batch_size}"
            f", so drop_last leaves no batch; lower batch_size, use more data (subset) or "
            f"drop_last=False"
        )

    common = dict(train=train, batch_size=batch_size, drop_last=drop_last, device=device, seed=seed, rank=rank)
    if in_memory:
        return _memory_loader(dataset, sampler, img_size, aug, **common)
    return _stream_loader(dataset, sampler, img_size, aug, num_workers, **common)


def _memory_loader(dataset, sampler, img_size: int, aug: dict, *, train: bool, **loader) -> MemoryLoader:
    """:func:`build_loader`'s in-memory path: the decoded images (cached on disk), augmented on the device.
    ``loader``: the :class:`Loader`'s own arguments (batch_size, drop_last, device, seed, rank)."""
    crop_pct = 1.0 if train else float(aug.get("crop_pct") or _default_crop_pct())
    ignored = sorted(k for k, v in aug.items() if k not in _MEMORY_AUG_KEYS and v)
    if train and ignored:
        warnings.warn(
            f"in_memory loader ignores augmentation option(s) {', '.join(ignored)} (it applies only "
            f"random resized crop, flip and random erasing)",
            stacklevel=3,  # build_loader's caller
        )
    images, targets, path = build_memory_cache(dataset, img_size, crop_pct)
    return MemoryLoader(dataset, sampler, images, targets, train=train, aug=aug, cache_path=path, **loader)


def _stream_loader(
    dataset, sampler, img_size: int, aug: dict, num_workers: int | None, *, train: bool, **loader
) -> StreamLoader:
    """:func:`build_loader`'s streaming path: timm's transforms in DataLoader workers. ``loader``: the
    :class:`Loader`'s own arguments (batch_size, drop_last, device, seed, rank)."""
    from timm.data import create_transform

    if train:
        patch_timm_posterize()
        transform = create_transform(img_size, is_training=True, **aug)
    else:
        transform = create_transform(img_size, is_training=False, **{k: aug[k] for k in _EVAL_AUG_KEYS if k in aug})
    if num_workers is None:
        num_workers = min(8, _cpu_count())
    return StreamLoader(dataset, sampler, transform, train=train, num_workers=num_workers, **loader)


def _default_crop_pct() -> float:
    from timm.data import DEFAULT_CROP_PCT

    return DEFAULT_CROP_PCT


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize op, except that 0 bits give a black image (as with Pillow < 13)."""
    from timm.data import auto_augment as aa

    return Image.new(img.mode, img.size) if bits_to_keep < 1 else aa.posterize(img, bits_to_keep, **kwargs)


def patch_timm_posterize() -> bool:
    """Let timm's RandAugment posterize to 0 bits again (a black image, as Pillow < 13 gave); True if it was needed.

    timm 1.0.31's ``PosterizeIncreasing`` asks for 0 bits at magnitude 10, which DeiT's ``rand-m9-mstd0.5-inc1``
    reaches in ~2% of its draws; Pillow 13 raises there, which would kill about one streaming batch in 20.
    :func:`build_loader` calls it before building a training transform (timm's ops look the function up when they
    are built); calling it again changes nothing. ``_posterize`` is module-level, so the transform still pickles for
    spawned workers.
    """
    from PIL import ImageOps
    from timm.data import auto_augment as aa

    try:
        ImageOps.posterize(Image.new("RGB", (1, 1)), 0)
        return False
    except ValueError:
        pass
    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        aa.NAME_TO_OP[name] = _posterize
    return True
