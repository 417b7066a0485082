"""Datasets and loaders for RBDC training: ImageNet-style folders, Imagenette, CIFAR-100, digits and synthetic data.

Two entry points, used by the training engine (a recipe's datasets and the size its plan uses:
:mod:`rbdc.data.for_recipe`):

* :func:`build_dataset` returns an image-classification dataset (PIL RGB image, int target) with ``.classes`` and
  ``.num_classes``. Layout problems raise :class:`DataError` naming the path and the fix.
* :func:`build_loader` returns a :class:`Loader` that yields normalised float32 batches on a device. The streaming path
  decodes files with timm's transforms (``timm.data.create_transform``) in DataLoader workers; the in-memory path
  decodes every image once into a uint8 tensor cached on disk and augments whole batches on the device.

Reproducibility: the order *and* the augmentation of an epoch depend only on ``(seed, epoch)`` (plus the rank when
distributed), never on the number of workers or on what ran before, so a run resumed at an epoch boundary sees exactly
the batches of an uninterrupted one. Call :meth:`Loader.set_epoch` before each epoch.

The samplers come from torch (``DistributedSampler``) and timm (``RepeatAugSampler``, from DeiT's ``RASampler``,
facebookresearch/deit, Apache-2.0). Imagenette is by fast.ai (fastai/imagenette, Apache-2.0), a subset of ImageNet.
"""

from __future__ import annotations

from .cache import build_memory_cache
from .datasets import (
    IMAGENETTE_COUNTS,
    SOURCES,
    ArrayDataset,
    DataError,
    FolderDataset,
    ImageDataset,
    SyntheticDataset,
    holdout_split,
)
from .loaders import Loader, MemoryLoader, StreamLoader, build_loader, patch_timm_posterize
from .folders import cache_dir, default_data_root
from .imagenette import extract_archive, find_imagenette, verify_contents
from .sources import build_dataset
from .for_recipe import TRAIN_SIZES, PlanSize, data_root, known_train_size, plan_size, recipe_datasets

__all__ = [
    "DataError",
    "ImageDataset",
    "FolderDataset",
    "ArrayDataset",
    "SyntheticDataset",
    "Loader",
    "StreamLoader",
    "MemoryLoader",
    "SOURCES",
    "IMAGENETTE_COUNTS",
    "build_dataset",
    "build_loader",
    "default_data_root",
    "cache_dir",
    "holdout_split",
    "find_imagenette",
    "extract_archive",
    "verify_contents",
    "build_memory_cache",
    "patch_timm_posterize",
    "recipe_datasets",
    "plan_size",
    "PlanSize",
    "data_root",
    "TRAIN_SIZES",
    "known_train_size",
]
