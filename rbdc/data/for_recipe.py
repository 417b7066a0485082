"""A recipe's datasets, and the training-set size its plan uses: the one place both are made from a recipe (the run,
the dry run, a study's planning, the quickstart's cache warm-up).

The plan's size is the dataset's own, read the way the run reads it (subset and holdout applied), so that a plan
and its run agree. Only where the data cannot be found (e.g. planning ImageNet runs on a machine without it) does a
plan use :data:`TRAIN_SIZES`, and says so.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UserError
from .datasets import IMAGENETTE_COUNTS, ImageDataset, holdout_split
from .sources import build_dataset

if TYPE_CHECKING:
    from rbdc.recipe import DataKeys, Recipe

__all__ = [
    "TRAIN_SIZES",
    "VAL_SIZES",
    "PlanSize",
    "data_root",
    "eval_size",
    "known_eval_size",
    "known_train_size",
    "plan_size",
    "recipe_datasets",
]

# The full train splits (images, classes) of the sources whose size is fixed: plans made without the data use them.
TRAIN_SIZES = {"imagenet": (1_281_167, 1000), "imagenette": (IMAGENETTE_COUNTS["train"], 10), "cifar100": (50_000, 100)}
VAL_SIZES = {"imagenet": 50_000, "imagenette": IMAGENETTE_COUNTS["val"], "cifar100": 10_000}


def data_root(recipe: Recipe) -> str | None:
    """Where the recipe's images are: ``data.root``, else ``IMAGENET_ROOT`` for ImageNet (Imagenette without a
    root: :func:`rbdc.data.find_imagenette` searches ``RBDC_DATA`` and the cache)."""
    root = recipe.data.root
    if root is None and recipe.data.source == "imagenet":
        root = os.environ.get("IMAGENET_ROOT")
    return root


def recipe_datasets(recipe: Recipe) -> tuple[ImageDataset, ImageDataset]:
    """(train, eval) of a resolved recipe: the train split (``data.subset``) and val (``data.val_subset``); with
    ``data.holdout``, the train split cut into the images trained on and the held-out ones it is evaluated on (the
    tuning split: val is never read)."""
    dc, root = recipe.data, data_root(recipe)
    train = _train_split(dc, root, recipe.img_size, recipe.num_classes)
    if dc.holdout is not None:
        return holdout_split(train, dc.holdout, dc.holdout_seed)
    return train, _val_split(dc, root, recipe.img_size, recipe.num_classes)


def _val_split(dc: DataKeys, root: str | None, img_size: int, num_classes: int | None) -> ImageDataset:
    return build_dataset(
        dc.source,
        root,
        "val",
        subset=dc.val_subset,
        download=dc.download,
        img_size=img_size,
        num_classes=num_classes,
        seed=0,
    )


def _train_split(dc: DataKeys, root: str | None, img_size: int, num_classes: int | None) -> ImageDataset:
    return build_dataset(
        dc.source,
        root,
        "train",
        subset=dc.subset,
        download=dc.download,
        img_size=img_size,
        num_classes=num_classes,
        seed=0,
    )


@dataclass(frozen=True)
class PlanSize:
    """What a plan needs of the data: the training images per epoch and the classes; ``note`` says when they are
    the source's known size instead of the dataset's (data not found)."""

    train_size: int
    num_classes: int
    note: str = ""


def known_train_size(data) -> int | None:
    """The images of one epoch of ``data`` (a recipe's data keys) from :data:`TRAIN_SIZES` alone, the holdout cut
    from the total (not per class); None where the source has no fixed size (a folder, digits, synthetic) or a subset
    is taken. Nothing is read."""
    if data.source not in TRAIN_SIZES or data.subset:
        return None
    size = TRAIN_SIZES[data.source][0]
    return size - round(data.holdout * size) if data.holdout is not None else size


def known_eval_size(data) -> int | None:
    """The images of one evaluation pass of ``data`` (a recipe's data keys) from the known sizes alone: the holdout
    cut from :data:`TRAIN_SIZES`' total, else :data:`VAL_SIZES`; None where the source has no fixed size or a subset
    is taken. Nothing is read."""
    if data.source not in TRAIN_SIZES or data.subset or data.val_subset:
        return None
    return round(data.holdout * TRAIN_SIZES[data.source][0]) if data.holdout is not None else VAL_SIZES[data.source]


def plan_size(recipe: Recipe) -> PlanSize:
    """The training-set size and classes a recipe's plan uses: the dataset's own (read once per data setting in a
    process, so a study plans its runs without rereading a folder), or, where the data is not found, the source's
    known size (the holdout then cut from the total, not per class)."""
    dc = recipe.data
    try:
        size, classes, _ = _dataset_size(_data_key(recipe))
    except UserError as e:
        size = known_train_size(dc)
        if size is None:
            raise
        return PlanSize(
            size,
            recipe.num_classes or TRAIN_SIZES[dc.source][1],
            f"data not found: {e}; planning with the known size of {dc.source}",
        )
    return PlanSize(size, recipe.num_classes or classes)


def eval_size(recipe: Recipe) -> int:
    """Images in the split a run evaluates on (what each evaluation pass reads): the held-out part of train with
    ``data.holdout``, else val (``data.val_subset``); where the data is not found, the source's known size."""
    key = _data_key(recipe)
    try:
        return _dataset_size(key)[2] if recipe.data.holdout is not None else _val_size(key)
    except UserError:
        size = known_eval_size(recipe.data)
        if size is None:
            raise
        return size


def _data_key(recipe: Recipe) -> str:
    """The data settings a size depends on, as the caches' key (data keys, root, image size, classes)."""
    return json.dumps(
        [dataclasses.asdict(recipe.data), data_root(recipe), recipe.img_size, recipe.num_classes],
        sort_keys=True,
        default=str,
    )


def _from_key(key: str) -> tuple[DataKeys, str | None, int, int | None]:
    from ..recipe import DataKeys  # the recipe imports this package

    data, root, img_size, num_classes = json.loads(key)
    return DataKeys(**data), root, img_size, num_classes


@functools.lru_cache(maxsize=64)
def _dataset_size(key: str) -> tuple[int, int, int | None]:
    """(images trained on, classes, images held out or None without a holdout) of the train split that ``key``
    names: one read of it serves the plan and the evaluation's size."""
    dc, root, img_size, num_classes = _from_key(key)
    train = _train_split(dc, root, img_size, num_classes)
    if dc.holdout is None:
        return len(train), train.num_classes, None
    fit, held = holdout_split(train, dc.holdout, dc.holdout_seed)
    return len(fit), train.num_classes, len(held)


@functools.lru_cache(maxsize=64)
def _val_size(key: str) -> int:
    return len(_val_split(*_from_key(key)))
