"""Image-classification datasets: files in folders, arrays in memory, synthetic images, subsets."""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from rbdc.errors import UserError

from .seeds import numpy_rng

SOURCES = ("imagenet", "imagefolder", "imagenette", "cifar100", "digits", "synthetic")
SPLITS = ("train", "val")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")
# Official imagenette2 split (also the per-class counts of the 224 px re-encode in shared/data).
IMAGENETTE_COUNTS = {"train": 9469, "val": 3925}
# Looked for, in this order, inside a directory passed as the Imagenette root.
IMAGENETTE_NAMES = ("imagenette2-224", "imagenette2-320", "imagenette2-160", "imagenette2")
IMAGENETTE_ARCHIVES = ("imagenette2-224.tar", "imagenette2-320.tgz", "imagenette2-160.tgz", "imagenette2.tgz")
# Random-resized-crop scale of the in-memory path: milder than timm's (0.08, 1) because these runs are short and small.
MEMORY_DEFAULT_SCALE = (0.35, 1.0)
_CACHE_VERSION = 1


class DataError(UserError):
    """A dataset is missing, laid out wrongly or does not fit the model; the message names the path and the fix."""


def _resize_center_crop(img: Image.Image, size: int, crop_pct: float = 1.0) -> Image.Image:
    """Resize the shorter side to ``size / crop_pct`` (bicubic) and take the centre ``size`` x ``size`` crop."""
    scale_size = int(math.floor(size / crop_pct))
    w, h = img.size
    if min(w, h) != scale_size:
        if w <= h:
            nw, nh = scale_size, max(scale_size, round(h * scale_size / w))
        else:
            nw, nh = max(scale_size, round(w * scale_size / h)), scale_size
        img = img.resize((nw, nh), Image.BICUBIC)
        w, h = nw, nh
    left, top = (w - size) // 2, (h - size) // 2
    if (w, h) != (size, size):
        img = img.crop((left, top, left + size, top + size))
    return img


class ImageDataset(torch.utils.data.Dataset):
    """Base class: items are ``(PIL RGB image, int target)``.

    Attributes:
        classes: class names; index ``i`` is target ``i``.
        targets: target of every item.
        source, root, split: where the data came from (``root`` is None for generated data).
        cacheable: whether the in-memory path should keep its decoded tensor on disk (False where regenerating is
            cheaper than reading).
    """

    cacheable = True

    def __init__(
        self,
        classes: Sequence[str],
        targets: Sequence[int],
        *,
        source: str,
        root: str | None,
        split: str,
        subset: int | None = None,
        seed: int = 0,
    ):
        self.classes = list(classes)
        self.targets = [int(t) for t in targets]
        self.source, self.root, self.split = source, root, split
        self.subset, self.seed = subset, seed

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.load_image(index), self.targets[index]

    def load_image(self, index: int, min_size: int | None = None) -> Image.Image:
        """Decode item ``index`` as RGB; ``min_size`` lets a decoder skip detail below that shorter side."""
        raise NotImplementedError

    def _item_keys(self) -> list[str]:
        """Stable per-item identifiers, hashed into the in-memory cache key."""
        return [str(i) for i in range(len(self))]

    def identity(self) -> dict[str, Any]:
        """What the in-memory cache is keyed on (besides image size and crop)."""
        keys = hashlib.sha1("\n".join(f"{k}:{t}" for k, t in zip(self._item_keys(), self.targets)).encode())
        return {
            "source": self.source,
            "root": self.root,
            "split": self.split,
            "subset": self.subset,
            "seed": self.seed,
            "n": len(self),
            "classes": self.num_classes,
            "items": keys.hexdigest(),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(source={self.source!r}, split={self.split!r}, n={len(self)}, "
            f"classes={self.num_classes}, root={self.root!r})"
        )


class FolderDataset(ImageDataset):
    """Images in ``<split dir>/<class>/<file>``; greyscale, palette and CMYK files are converted to RGB."""

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        *,
        source: str,
        root: str,
        split: str,
        subset: int | None = None,
        seed: int = 0,
    ):
        super().__init__(
            classes, [t for _, t in samples], source=source, root=root, split=split, subset=subset, seed=seed
        )
        self.paths = [p for p, _ in samples]

    def load_image(self, index: int, min_size: int | None = None) -> Image.Image:
        path = self.paths[index]
        try:
            with Image.open(path) as img:
                if min_size is not None and img.format == "JPEG":
                    # DCT-domain downscaling (1/2, 1/4, 1/8) keeps the shorter side >= min_size: decoding gets
                    # several times faster for small in-memory sizes at no visible cost.
                    img.draft("RGB", (min_size, min_size))
                return img.convert("RGB")
        except OSError as e:
            raise DataError(f"cannot decode image {path}: {e}; delete or replace the file") from e

    def _item_keys(self) -> list[str]:
        return [os.path.relpath(p, self.root) for p in self.paths]


class ArrayDataset(ImageDataset):
    """Images held in a uint8 array ``[N, H, W]`` (grey) or ``[N, H, W, 3]``, optionally resized on load.

    Args:
        images: the pixels.
        targets: one class index per image.
        classes: class names.
        out_size: if set, images are resized (bicubic) to ``out_size`` x ``out_size`` when loaded.
        indices: positions of these images in the original collection (for split bookkeeping).
    """

    def __init__(
        self,
        images: np.ndarray,
        targets: Sequence[int],
        classes: Sequence[str],
        *,
        source: str,
        root: str | None,
        split: str,
        out_size: int | None = None,
        indices: Sequence[int] | None = None,
        cacheable: bool = True,
        subset: int | None = None,
        seed: int = 0,
    ):
        super().__init__(classes, targets, source=source, root=root, split=split, subset=subset, seed=seed)
        if images.ndim == 3:
            images = np.repeat(images[..., None], 3, axis=-1)
        self.images = np.ascontiguousarray(images, dtype=np.uint8)
        self.out_size = out_size
        self.indices = list(range(len(images))) if indices is None else [int(i) for i in indices]
        self.cacheable = cacheable

    def load_image(self, index: int, min_size: int | None = None) -> Image.Image:
        img = Image.fromarray(self.images[index])
        if self.out_size is not None and img.size != (self.out_size, self.out_size):
            img = img.resize((self.out_size, self.out_size), Image.BICUBIC)
        return img

    def _item_keys(self) -> list[str]:
        return [str(i) for i in self.indices]

    def select(self, keep: Sequence[int]) -> "ArrayDataset":
        """A new dataset with the images at positions ``keep``."""
        keep = list(keep)
        return ArrayDataset(
            self.images[keep],
            [self.targets[i] for i in keep],
            self.classes,
            source=self.source,
            root=self.root,
            split=self.split,
            out_size=self.out_size,
            indices=[self.indices[i] for i in keep],
            cacheable=self.cacheable,
            subset=self.subset,
            seed=self.seed,
        )


class SyntheticDataset(ImageDataset):
    """Random images with a learnable class signal, generated on the fly and deterministic given ``seed``.

    Class ``c`` has a colour (drawn once from ``seed``) and stripes at angle ``pi * c / C``; each image adds a random
    stripe phase and Gaussian pixel noise. Train and val share the class signal but not the noise. Target of image
    ``i`` is ``i % C``, so classes are balanced.

    Args:
        num_classes: number of classes C.
        num_images: number of images in this split.
        size: image side in pixels.
        noise: standard deviation of the pixel noise (0-255 scale).
    """

    cacheable = False

    def __init__(self, num_classes: int, num_images: int, size: int, *, split: str, seed: int = 0, noise: float = 40.0):
        if num_classes < 1 or num_images < 1 or size < 1:
            raise DataError(
                f"synthetic data needs num_classes, num_images and size >= 1, got {num_classes}, {num_images}, {size}"
            )
        targets = [i % num_classes for i in range(num_images)]
        super().__init__(
            [f"class_{c:03d}" for c in range(num_classes)],
            targets,
            source="synthetic",
            root=None,
            split=split,
            seed=seed,
        )
        self.size, self.noise = size, float(noise)
        self.palette = numpy_rng(seed, 7).uniform(40, 215, size=(num_classes, 3))
        self._split_id = SPLITS.index(split)
        yy, xx = np.mgrid[0:size, 0:size] / size
        self._grid = (xx, yy)

    def load_image(self, index: int, min_size: int | None = None) -> Image.Image:
        c = self.targets[index]
        rng = numpy_rng(self.seed, self._split_id, index)
        angle = math.pi * c / self.num_classes
        xx, yy = self._grid
        stripes = 30.0 * np.sin(2 * math.pi * 3 * (xx * math.cos(angle) + yy * math.sin(angle)) + rng.uniform(0, 6.3))
        img = self.palette[c] + stripes[..., None] + rng.normal(0, self.noise, size=(self.size, self.size, 3))
        return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "size": self.size, "noise": self.noise}


def _subset_positions(targets: Sequence[int], subset: int, seed: int) -> list[int]:
    """At most ``subset`` positions per class, chosen from ``(seed, class)`` and kept in their original order.

    Each class draws its own permutation, so a smaller subset is a prefix-subset of a larger one with the same seed.
    """
    if subset < 1:
        raise DataError(f"subset must be >= 1 image per class, got {subset}")
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(t, []).append(i)
    keep = []
    for c, positions in by_class.items():
        order = numpy_rng(seed, c).permutation(len(positions))[:subset]
        keep.extend(positions[j] for j in order)
    return sorted(keep)


def _select(ds: ImageDataset, keep: Sequence[int], split: str | None = None) -> ImageDataset:
    """The items of ``ds`` at positions ``keep`` (in that order), as the same kind of dataset."""
    split = split or ds.split
    if isinstance(ds, FolderDataset):
        return FolderDataset(
            [(ds.paths[i], ds.targets[i]) for i in keep], ds.classes, source=ds.source, root=ds.root, split=split
        )
    if isinstance(ds, ArrayDataset):
        out = ds.select(keep)
        out.split = split
        return out
    return _SubsetDataset(ds, keep, split)


def _apply_subset(ds: ImageDataset, subset: int, seed: int) -> ImageDataset:
    out = _select(ds, _subset_positions(ds.targets, subset, seed))
    out.subset, out.seed = subset, seed
    return out


HOLDOUT_STREAM = 0x401D  # numpy_rng(seed, HOLDOUT_STREAM, class): the holdout's draws, apart from subset's


def holdout_positions(targets: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split positions into (fit, held): per class, ``round(fraction * n_class)`` positions drawn from
    ``(seed, class)`` are held out; both lists keep the original order and together are every position once."""
    if not 0 < fraction < 1:
        raise DataError(f"data.holdout must be a fraction in (0, 1) of the train split, got {fraction}")
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(t, []).append(i)
    held = []
    for c, positions in sorted(by_class.items()):
        n = round(fraction * len(positions))
        if not 0 < n < len(positions):
            raise DataError(
                f"data.holdout {fraction} holds out {n} of the {len(positions)} train images of class "
                f"{c}: it must leave at least one on each side; choose a fraction in "
                f"[{0.5 / len(positions):.3g}, {1 - 0.5 / len(positions):.3g}]"
            )
        held.extend(positions[j] for j in numpy_rng(seed, HOLDOUT_STREAM, c).permutation(len(positions))[:n])
    held_set = set(held)
    return [i for i in range(len(targets)) if i not in held_set], sorted(held)


def holdout_split(ds: ImageDataset, fraction: float, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """(fit, held): a train split cut into the images a run trains on and a held-out ``holdout`` split that tunes
    hyper-parameters, so that a study's choices never read the reported (val) split. Class-balanced, fixed by
    ``seed`` and independent of the run's seed: every run of a tuning grid sees the same cut."""
    if ds.split != "train":
        raise DataError(f"a holdout is cut from the train split, got the {ds.split!r} split")
    fit, held = holdout_positions(ds.targets, fraction, seed)
    return _select(ds, fit, "train-fit"), _select(ds, held, "holdout")


class _SubsetDataset(ImageDataset):
    """Positions ``keep`` of a generated dataset (synthetic)."""

    def __init__(self, base: ImageDataset, keep: Sequence[int], split: str | None = None):
        super().__init__(
            base.classes, [base.targets[i] for i in keep], source=base.source, root=base.root, split=split or base.split
        )
        self.base, self.keep = base, list(keep)
        self.cacheable = base.cacheable

    def load_image(self, index: int, min_size: int | None = None) -> Image.Image:
        return self.base.load_image(self.keep[index], min_size)

    def _item_keys(self) -> list[str]:
        return [str(i) for i in self.keep]

    def identity(self) -> dict[str, Any]:
        return {**self.base.identity(), **super().identity()}
