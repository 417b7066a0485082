"""The in-memory path's decoded images: every image decoded once into a uint8 tensor, cached on disk."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from rbdc.files import atomic_write

from .datasets import ImageDataset, _CACHE_VERSION, _resize_center_crop
from .folders import cache_dir
from .workers import _cpu_count, _progress, _worker_errors


class _DecodeDataset(torch.utils.data.Dataset):
    def __init__(self, dataset: ImageDataset, size: int, crop_pct: float):
        self.dataset, self.size, self.crop_pct = dataset, size, crop_pct

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        scale_size = int(math.floor(self.size / self.crop_pct))
        img = _resize_center_crop(self.dataset.load_image(index, min_size=scale_size), self.size, self.crop_pct)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def _decode_all(dataset: ImageDataset, size: int, crop_pct: float, num_workers: int | None = None) -> torch.Tensor:
    """Decode every image to a uint8 ``[N, 3, size, size]`` tensor (resize shorter side, centre crop)."""
    n = len(dataset)
    if num_workers is None:
        num_workers = min(8, _cpu_count()) if n >= 512 else 0
    out = torch.empty((n, 3, size, size), dtype=torch.uint8)
    loader = torch.utils.data.DataLoader(
        _DecodeDataset(dataset, size, crop_pct), batch_size=64, num_workers=num_workers
    )
    pos = 0
    with (
        _progress(total=n, desc=f"decode {dataset.source} {dataset.split} @{size}px", unit="img") as bar,
        _worker_errors(),
    ):
        for batch in loader:
            out[pos : pos + len(batch)] = batch
            pos += len(batch)
            bar.update(len(batch))
    return out


def _read_cache(path: Path) -> dict | None:
    """A cache file's content; None when it is missing or cannot be read (a damaged file is derived data: it is
    decoded again and rewritten, with one line saying so)."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(blob, dict) and isinstance(blob.get("images"), torch.Tensor):
            return blob
        reason = "not a cache of decoded images"
    except Exception as e:  # torch raises many types for a truncated or damaged file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    print(f"decoded-image cache {path} is damaged ({reason}): decoding the images again", file=sys.stderr)
    return None


def build_memory_cache(
    dataset: ImageDataset, size: int, crop_pct: float = 1.0, *, num_workers: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, Path | None]:
    """Decoded uint8 images ``[N, 3, size, size]`` and int64 targets of a dataset, from the disk cache if there.

    The cache file lives in ``<cache_dir>/memory/`` and is keyed by the dataset's identity (source, root, split,
    subset, seed, item list), the size and the crop; it is written atomically. Generated sources (synthetic, digits)
    are decoded each time, which is faster than reading them back.

    Args:
        dataset: an :class:`ImageDataset` from :func:`build_dataset`.
        size: image side in pixels.
        crop_pct: fraction of the resized shorter side kept by the centre crop (1.0 keeps the whole short side).
        num_workers: decoding processes (default: the CPU count, for 512 images or more).

    Returns:
        ``(images, targets, cache_path)``; ``cache_path`` is None when nothing was cached.
    """
    if not isinstance(dataset, ImageDataset):
        raise TypeError(f"in_memory=True needs a dataset from rbdc.data.build_dataset, got {type(dataset).__name__}")
    targets = torch.tensor(dataset.targets, dtype=torch.int64)
    if not dataset.cacheable:
        return _decode_all(dataset, size, crop_pct, num_workers), targets, None
    key = {**dataset.identity(), "img_size": size, "crop_pct": crop_pct, "version": _CACHE_VERSION}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "memory" / f"{dataset.source}-{dataset.split}-{size}px-{digest}.pt"
    blob = _read_cache(path)
    if blob is not None and blob.get("key") == json.dumps(key, sort_keys=True) and len(blob["images"]) == len(dataset):
        return blob["images"], targets, path
    images = _decode_all(dataset, size, crop_pct, num_workers)
    blob = {"images": images, "targets": targets, "key": json.dumps(key, sort_keys=True)}
    atomic_write(path, lambda f: torch.save(blob, f))
    return images, targets, path
