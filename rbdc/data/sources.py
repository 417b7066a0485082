"""Where datasets come from: ImageNet-style folders (:mod:`rbdc.data.folders`), Imagenette
(:mod:`rbdc.data.imagenette`), digits and CIFAR-100, and generated images; :func:`build_dataset` picks one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .datasets import (
    IMAGENETTE_COUNTS,
    SOURCES,
    SPLITS,
    ArrayDataset,
    DataError,
    FolderDataset,
    ImageDataset,
    SyntheticDataset,
    _apply_subset,
)
from .folders import _scan_folder, cache_dir
from .imagenette import find_imagenette


def build_dataset(
    source: str,
    root: str | None = None,
    split: str = "train",
    *,
    img_size: int = 224,
    num_classes: int | None = None,
    subset: int | None = None,
    seed: int = 0,
    download: bool = False,
    **source_kwargs,
) -> ImageDataset:
    """Build one split of a classification dataset.

    Args:
        source: one of :data:`SOURCES`:
            ``imagenet`` (root or ``$IMAGENET_ROOT``, with train/ and val/ class folders), ``imagefolder`` (any such
            root), ``imagenette`` (see :func:`find_imagenette`; kwargs ``verify=False``, ``check_counts=True``),
            ``cifar100`` (torchvision; root default ``<cache>/cifar100``), ``digits`` (scikit-learn's 1,797 8x8
            digits, upsampled to RGB ``img_size``; fixed stratified 80/20 split, seed 0), ``synthetic`` (kwargs
            ``num_images``, ``noise``; ``num_classes`` default 10).
        root: dataset location (see ``source``).
        split: ``train`` or ``val``.
        img_size: image size of the generated sources (digits, synthetic); file sources keep their size.
        num_classes: if given, the model's class count: a dataset with another count raises :class:`DataError`.
        subset: keep at most this many images per class, chosen deterministically from ``seed``.
        seed: seed of ``subset`` and of the synthetic images.
        download: let torchvision download CIFAR-100 (never implicit).
        **source_kwargs: options of the source (listed above).

    Returns:
        A dataset of ``(PIL RGB image, int target)`` with ``.classes`` and ``.num_classes``.
    """
    _check_request(source, root, split, source_kwargs)
    if source == "synthetic":
        n = source_kwargs.get("num_images") or (num_classes or 10) * (64 if split == "train" else 16)
        ds: ImageDataset = SyntheticDataset(
            num_classes or 10, n, img_size, split=split, seed=seed, noise=source_kwargs.get("noise", 40.0)
        )
    elif source == "digits":
        ds = _build_digits(split, img_size)
    elif source == "cifar100":
        ds = _build_cifar100(root, split, download)
    else:
        ds = _build_folder(source, root, split, **source_kwargs)
    _check_num_classes(ds, source, split, num_classes)
    if subset is not None:
        ds = _apply_subset(ds, subset, seed)
    return ds


def _check_request(source: str, root: str | None, split: str, source_kwargs: dict) -> None:
    """A one-line :class:`DataError` for an unknown source or split, an option the source does not take, or a root
    given to a generated source."""
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; choose one of {', '.join(SOURCES)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    allowed = {"imagenette": {"verify", "check_counts"}, "synthetic": {"num_images", "noise"}}.get(source, set())
    unknown = sorted(set(source_kwargs) - allowed)
    if unknown:
        raise DataError(
            f"source {source!r} takes no option(s) {', '.join(unknown)}; "
            f"its options are: {', '.join(sorted(allowed)) or 'none'}"
        )
    if root is not None and source in ("synthetic", "digits"):
        guess = f"; did you mean split={root!r}?" if root in SPLITS else ""
        raise DataError(f"source {source!r} is generated and takes no root (got root={root!r}){guess}")


def _check_num_classes(ds: ImageDataset, source: str, split: str, num_classes: int | None) -> None:
    """The dataset has the model's class count (when one is given), else a :class:`DataError` naming the fix."""
    if num_classes is not None and num_classes != ds.num_classes:
        where = f" at {ds.root}" if ds.root else ""
        raise DataError(
            f"{source} {split}{where} has {ds.num_classes} classes but the model expects "
            f"num_classes={num_classes}; set num_classes={ds.num_classes} (e.g. --num-classes "
            f"{ds.num_classes}) or point root at a dataset with {num_classes} classes"
        )


def _build_folder(
    source: str, root: str | None, split: str, verify: bool = False, check_counts: bool = True
) -> FolderDataset:
    if source == "imagenette":
        folder = find_imagenette(root, verify=verify)
        hint = f"delete {folder} if it came from a broken extraction, or pass root= another Imagenette copy"
    else:
        if root is None and source == "imagenet":
            root = os.environ.get("IMAGENET_ROOT")
        if root is None:
            env = " or set IMAGENET_ROOT" if source == "imagenet" else ""
            raise DataError(f"{source} needs a root folder with train/ and val/ class folders; pass root=...{env}")
        folder = Path(root).expanduser()
        hint = "pass root= a folder with train/<class>/<image> and val/<class>/<image>"
        if source == "imagenet":
            hint += " (or set IMAGENET_ROOT)"
    samples, classes = _scan_folder(folder, split, source, hint)
    if source == "imagenette" and check_counts and len(samples) != IMAGENETTE_COUNTS[split]:
        raise DataError(
            f"imagenette {split} at {folder / split} has {len(samples):,} images, expected "
            f"{IMAGENETTE_COUNTS[split]:,} (the imagenette2 split): the copy is incomplete or another "
            f"version; {hint}, or pass check_counts=False to use it anyway"
        )
    return FolderDataset(samples, classes, source=source, root=str(folder.resolve()), split=split)


def _build_digits(split: str, img_size: int) -> ArrayDataset:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise DataError("the digits source needs scikit-learn; pip install scikit-learn") from e
    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # values are 0..16
    idx = np.arange(len(pixels))
    # Fixed split, independent of the run seed, so every run evaluates on the same 360 images.
    train_idx, val_idx = train_test_split(idx, test_size=0.2, stratify=digits.target, random_state=0)
    keep = np.sort(train_idx if split == "train" else val_idx)
    return ArrayDataset(
        pixels[keep],
        digits.target[keep].tolist(),
        [str(d) for d in range(10)],
        source="digits",
        root=None,
        split=split,
        out_size=img_size,
        indices=keep.tolist(),
        cacheable=False,
    )


def _build_cifar100(root: str | None, split: str, download: bool) -> ArrayDataset:
    from torchvision.datasets import CIFAR100

    folder = Path(root).expanduser() if root is not None else cache_dir() / "cifar100"
    try:
        ds = CIFAR100(str(folder), train=split == "train", download=download)
    except (RuntimeError, OSError) as e:  # OSError: no network (urllib URLError)
        if download:
            raise DataError(f"could not download CIFAR-100 into {folder}: {e}") from e
        raise DataError(
            f"CIFAR-100 not found in {folder} (expected {folder}/cifar-100-python/); pass download=True "
            f"(--download) to fetch it (about 170 MB) or root= a folder that holds it"
        ) from e
    return ArrayDataset(ds.data, ds.targets, ds.classes, source="cifar100", root=str(folder.resolve()), split=split)
