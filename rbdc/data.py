"""Datasets and loaders for RBDC training: ImageNet-style folders, Imagenette, CIFAR-100, digits and synthetic data.

Two entry points, used by the training engine:

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

import contextlib
import hashlib
import inspect
import json
import math
import os
import random
import shutil
import sys
import tarfile
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rbdc.errors import UserError
from rbdc.rundir import atomic_write

__all__ = [
    "DataError", "ImageDataset", "FolderDataset", "ArrayDataset", "SyntheticDataset", "Loader", "StreamLoader",
    "MemoryLoader", "SOURCES", "IMAGENETTE_COUNTS", "build_dataset", "build_loader", "default_data_root", "cache_dir",
    "find_imagenette", "extract_archive", "verify_contents", "build_memory_cache",
]

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


# ----------------------------------------------------------------------------------------------------------------
# Paths

def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def default_data_root() -> Path | None:
    """Folder holding the shared datasets (e.g. ``imagenette2-224.tar``).

    Returns:
        ``$RBDC_DATA`` if set (whether or not it exists), else ``<repo>/../shared/data`` if it exists, else None.
    """
    env = os.environ.get("RBDC_DATA")
    if env:
        return Path(env).expanduser()
    shared = _repo_root().parent / "shared" / "data"
    return shared if shared.is_dir() else None


def cache_dir() -> Path:
    """Folder for extracted archives and in-memory tensor caches: ``$RBDC_CACHE`` or ``~/.cache/rbdc/data``."""
    env = os.environ.get("RBDC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rbdc" / "data"


# ----------------------------------------------------------------------------------------------------------------
# Seeds

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


# ----------------------------------------------------------------------------------------------------------------
# Datasets

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

    def __init__(self, classes: Sequence[str], targets: Sequence[int], *, source: str, root: str | None, split: str,
                 subset: int | None = None, seed: int = 0):
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
        return {"source": self.source, "root": self.root, "split": self.split, "subset": self.subset,
                "seed": self.seed, "n": len(self), "classes": self.num_classes, "items": keys.hexdigest()}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(source={self.source!r}, split={self.split!r}, n={len(self)}, "
                f"classes={self.num_classes}, root={self.root!r})")


class FolderDataset(ImageDataset):
    """Images in ``<split dir>/<class>/<file>``; greyscale, palette and CMYK files are converted to RGB."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str], *, source: str, root: str,
                 split: str, subset: int | None = None, seed: int = 0):
        super().__init__(classes, [t for _, t in samples], source=source, root=root, split=split, subset=subset,
                         seed=seed)
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

    def __init__(self, images: np.ndarray, targets: Sequence[int], classes: Sequence[str], *, source: str,
                 root: str | None, split: str, out_size: int | None = None, indices: Sequence[int] | None = None,
                 cacheable: bool = True, subset: int | None = None, seed: int = 0):
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

    def select(self, keep: Sequence[int]) -> 'ArrayDataset':
        """A new dataset with the images at positions ``keep``."""
        keep = list(keep)
        return ArrayDataset(self.images[keep], [self.targets[i] for i in keep], self.classes, source=self.source,
                            root=self.root, split=self.split, out_size=self.out_size,
                            indices=[self.indices[i] for i in keep], cacheable=self.cacheable, subset=self.subset,
                            seed=self.seed)


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

    def __init__(self, num_classes: int, num_images: int, size: int, *, split: str, seed: int = 0,
                 noise: float = 40.0):
        if num_classes < 1 or num_images < 1 or size < 1:
            raise DataError(f"synthetic data needs num_classes, num_images and size >= 1, got "
                            f"{num_classes}, {num_images}, {size}")
        targets = [i % num_classes for i in range(num_images)]
        super().__init__([f"class_{c:03d}" for c in range(num_classes)], targets, source="synthetic", root=None,
                         split=split, seed=seed)
        self.size, self.noise = size, float(noise)
        self.palette = np.random.default_rng([seed, 7]).uniform(40, 215, size=(num_classes, 3))
        self._split_id = SPLITS.index(split)
        yy, xx = np.mgrid[0:size, 0:size] / size
        self._grid = (xx, yy)

    def load_image(self, index: int, min_size: int | None = None) -> Image.Image:
        c = self.targets[index]
        rng = np.random.default_rng([self.seed, self._split_id, index])
        angle = math.pi * c / self.num_classes
        xx, yy = self._grid
        stripes = 30.0 * np.sin(2 * math.pi * 3 * (xx * math.cos(angle) + yy * math.sin(angle)) + rng.uniform(0, 6.3))
        img = self.palette[c] + stripes[..., None] + rng.normal(0, self.noise, size=(self.size, self.size, 3))
        return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "size": self.size, "noise": self.noise}


# ----------------------------------------------------------------------------------------------------------------
# Folder scanning

def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _class_dirs(split_dir: Path) -> list[str]:
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _check_layout(root: Path, source: str, hint: str) -> None:
    if not root.exists():
        raise DataError(f"{source} root {root} does not exist; {hint}")
    if not root.is_dir():
        raise DataError(f"{source} root {root} is not a directory; {hint}")
    for split in SPLITS:
        if not (root / split).is_dir():
            found = sorted(p.name for p in root.iterdir())[:8]
            raise DataError(f'{source} root {root} has no {split}/ folder (it holds: {", ".join(found) or "nothing"});'
                            f' expected {root}/train/<class>/<image> and {root}/val/<class>/<image>; {hint}')


def _scan_folder(root: Path, split: str, source: str, hint: str) -> tuple[list[tuple[str, int]], list[str]]:
    """List ``(path, target)`` of one split; classes come from ``train/`` so every split indexes them alike."""
    _check_layout(root, source, hint)
    classes = _class_dirs(root / "train")
    if not classes:
        raise DataError(f"{root}/train has no class folders; put each class in its own folder, "
                        f"{root}/train/<class>/<image>")
    split_dir = root / split
    split_classes = _class_dirs(split_dir) if split != "train" else classes
    if not split_classes:
        loose = [n for n in os.listdir(split_dir) if _is_image(n)]
        fix = ("it holds images directly: sort them into class folders (for ImageNet val, e.g. with the standard "
               "valprep.sh)" if loose else "it is empty")
        raise DataError(f"{split_dir} has no class folders; {fix}")
    extra = sorted(set(split_classes) - set(classes))
    if extra:
        raise DataError(f'{split_dir} has class folders that {root}/train lacks: {", ".join(extra[:5])}; train/ and '
                        f'{split}/ must use the same class folder names')
    class_to_idx = {c: i for i, c in enumerate(classes)}
    samples = []
    for c in split_classes:
        d = split_dir / c
        with os.scandir(d) as it:
            files = sorted(e.name for e in it if e.is_file() and _is_image(e.name))
        if not files:
            raise DataError(f'class folder {d} has no images (looked for {", ".join(IMAGE_EXTENSIONS)}); add images '
                            f'or remove the folder (from every split)')
        samples.extend((str(d / f), class_to_idx[c]) for f in files)
    return samples, classes


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
        order = np.random.default_rng([seed, c]).permutation(len(positions))[:subset]
        keep.extend(positions[j] for j in order)
    return sorted(keep)


# ----------------------------------------------------------------------------------------------------------------
# Archives (Imagenette)

def _layout_root(path: Path) -> Path | None:
    """``path`` or its single sub-folder, whichever holds both ``train/`` and ``val/``."""
    if all((path / s).is_dir() for s in SPLITS):
        return path
    subs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subs) == 1 and all((subs[0] / s).is_dir() for s in SPLITS):
        return subs[0]
    return None


def _archive_stem(archive: Path) -> str:
    name = archive.name
    for ext in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(ext):
            return name[:-len(ext)]
    return archive.stem


def extract_archive(archive: str | Path, dest_root: str | Path | None = None) -> Path:
    """Extract a dataset tar once into ``dest_root/<archive stem>`` and return that folder.

    The archive is unpacked into a temporary folder beside the destination and renamed into place, so an interrupted
    extraction never leaves a half-filled dataset behind and concurrent callers agree on one copy. A stamp file
    records the archive's size; a later call with a different archive of the same name raises instead of silently
    reusing the old copy.

    Args:
        archive: path of a ``.tar``, ``.tgz`` or ``.tar.gz`` whose root (or single top folder) holds train/ and val/.
        dest_root: where extracted datasets live; default :func:`cache_dir`.

    Returns:
        The extracted dataset folder (with ``train/`` and ``val/``).
    """
    archive = Path(archive)
    dest_root = Path(dest_root) if dest_root is not None else cache_dir()
    dest = dest_root / _archive_stem(archive)
    stamp = {"archive": archive.name, "bytes": archive.stat().st_size}
    if dest.is_dir():
        _check_stamp(dest, stamp, archive)
        return dest
    dest_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".extract-{dest.name}-", dir=dest_root))
    try:
        start = time.perf_counter()
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"cannot extract {archive}: {e}; check the file (sha256sum -c SHA256SUMS next to it) "
                            f"and the free space in {dest_root}") from e
        root = _layout_root(tmp)
        if root is None:
            raise DataError(f"{archive} does not hold train/ and val/ folders (at its root or in one top folder); "
                            f"it is not an ImageFolder-style dataset archive")
        (root / ".rbdc-source.json").write_text(json.dumps({**stamp, "seconds": time.perf_counter() - start}))
        try:
            os.rename(root, dest)
        except OSError:
            if not dest.is_dir():  # not a lost race with another process: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _check_stamp(dest, stamp, archive)
    return dest


def _check_stamp(dest: Path, stamp: dict[str, Any], archive: Path) -> None:
    path = dest / ".rbdc-source.json"
    if not path.is_file():
        return  # extracted by hand: trust it (the count check still runs)
    old = json.loads(path.read_text())
    if old.get("bytes") != stamp["bytes"]:
        raise DataError(f'{dest} was extracted from a different {archive.name} ({old.get("bytes")} bytes, now '
                        f'{stamp["bytes"]}); delete {dest} to extract the new one')


def verify_contents(folder: str | Path, contents_file: str | Path) -> None:
    """Check every file listed in a ``sha256sum``-style file; raise :class:`DataError` on any missing or bad file.

    Args:
        folder: the dataset folder (e.g. ``.../imagenette2-224``); the listed paths are relative to its parent,
            which is where the archive was extracted.
        contents_file: lines of ``<sha256>  <relative path>``.
    """
    folder, contents_file = Path(folder), Path(contents_file)
    base = folder.parent
    bad = []
    lines = [ln.split(maxsplit=1) for ln in contents_file.read_text().splitlines() if ln.strip()]
    for digest, rel in _progress(lines, desc=f"verify {folder.name}"):
        path = base / rel.lstrip("*")
        try:
            ok = hashlib.sha256(path.read_bytes()).hexdigest() == digest
        except FileNotFoundError:
            ok = False
        if not ok:
            bad.append(rel)
    if bad:
        raise DataError(f"{len(bad)} of {len(lines)} files in {folder} are missing or differ from {contents_file} "
                        f"(first: {bad[0]}); delete {folder} and extract the archive again")


def find_imagenette(root: str | Path | None = None, *, verify: bool = False) -> Path:
    """Locate (extracting if needed) an Imagenette folder holding ``train/`` and ``val/``.

    Args:
        root: the extracted folder, an archive (e.g. ``imagenette2-224.tar``), or a folder holding either; default
            :func:`default_data_root`, then an earlier extraction in :func:`cache_dir`.
        verify: check every file against ``<name>.contents.sha256`` (next to the archive or in the data root).

    Returns:
        The dataset folder.
    """
    hint = ("pass root= the extracted imagenette folder, the imagenette2-224.tar file or a folder holding it, "
            "or set RBDC_DATA to that folder")
    candidates = [Path(root).expanduser()] if root is not None else []
    if root is None:
        data_root = default_data_root()
        if data_root is not None:
            candidates.append(data_root)
        candidates.append(cache_dir())
    for cand in candidates:
        folder, archive = _imagenette_in(cand)
        if folder is None and archive is None:
            continue
        if folder is None:
            folder = extract_archive(archive)
        if verify:
            contents = _find_contents(folder, archive, cand)
            if contents is None:
                raise DataError(f"verify=True but no {folder.name}.contents.sha256 was found next to {archive or cand}"
                                f"; put it there or pass verify=False")
            verify_contents(folder, contents)
        return folder
    where = ", ".join(str(c) for c in candidates) or "nowhere (no root given, RBDC_DATA unset)"
    raise DataError(f'no Imagenette found in {where} (looked for train/ and val/, {", ".join(IMAGENETTE_NAMES)} '
                    f'folders and {", ".join(IMAGENETTE_ARCHIVES)}); {hint}')


def _imagenette_in(path: Path) -> tuple[Path | None, Path | None]:
    """(extracted folder, archive) found at ``path``; at most one is not None."""
    if path.is_file():
        return None, path
    if not path.is_dir():
        return None, None
    if all((path / s).is_dir() for s in SPLITS):
        return path, None
    for name in IMAGENETTE_NAMES:
        if all((path / name / s).is_dir() for s in SPLITS):
            return path / name, None
    for name in IMAGENETTE_ARCHIVES:
        if (path / name).is_file():
            return None, path / name
    return None, None


def _find_contents(folder: Path, archive: Path | None, cand: Path) -> Path | None:
    name = f"{folder.name}.contents.sha256"
    places = [archive.parent] if archive is not None else []
    places += [cand if cand.is_dir() else cand.parent, folder.parent]
    data_root = default_data_root()
    if data_root is not None:
        places.append(data_root)
    return next((p / name for p in places if (p / name).is_file()), None)


# ----------------------------------------------------------------------------------------------------------------
# build_dataset

def build_dataset(source: str, root: str | None = None, split: str = "train", *, img_size: int = 224,
                  num_classes: int | None = None, subset: int | None = None, seed: int = 0,
                  download: bool = False, **source_kwargs) -> ImageDataset:
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
    if source not in SOURCES:
        raise DataError(f'unknown data source {source!r}; choose one of {", ".join(SOURCES)}')
    if split not in SPLITS:
        raise DataError(f'unknown split {split!r}; choose one of {", ".join(SPLITS)}')
    allowed = {"imagenette": {"verify", "check_counts"}, "synthetic": {"num_images", "noise"}}.get(source, set())
    unknown = sorted(set(source_kwargs) - allowed)
    if unknown:
        raise DataError(f'source {source!r} takes no option(s) {", ".join(unknown)}; '
                        f'its options are: {", ".join(sorted(allowed)) or "none"}')

    if root is not None and source in ("synthetic", "digits"):
        guess = f"; did you mean split={root!r}?" if root in SPLITS else ""
        raise DataError(f"source {source!r} is generated and takes no root (got root={root!r}){guess}")
    if source == "synthetic":
        n = source_kwargs.get("num_images") or (num_classes or 10) * (64 if split == "train" else 16)
        ds: ImageDataset = SyntheticDataset(num_classes or 10, n, img_size, split=split, seed=seed,
                                            noise=source_kwargs.get("noise", 40.0))
    elif source == "digits":
        ds = _build_digits(split, img_size)
    elif source == "cifar100":
        ds = _build_cifar100(root, split, download)
    else:
        ds = _build_folder(source, root, split, **source_kwargs)

    if num_classes is not None and num_classes != ds.num_classes:
        where = f" at {ds.root}" if ds.root else ""
        raise DataError(f"{source} {split}{where} has {ds.num_classes} classes but the model expects "
                        f"num_classes={num_classes}; set num_classes={ds.num_classes} (e.g. --num-classes "
                        f"{ds.num_classes}) or point root at a dataset with {num_classes} classes")
    if subset is not None:
        ds = _apply_subset(ds, subset, seed)
    return ds


def _build_folder(source: str, root: str | None, split: str, verify: bool = False,
                  check_counts: bool = True) -> FolderDataset:
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
        raise DataError(f"imagenette {split} at {folder / split} has {len(samples):,} images, expected "
                        f"{IMAGENETTE_COUNTS[split]:,} (the imagenette2 split): the copy is incomplete or another "
                        f"version; {hint}, or pass check_counts=False to use it anyway")
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
    return ArrayDataset(pixels[keep], digits.target[keep].tolist(), [str(d) for d in range(10)], source="digits",
                        root=None, split=split, out_size=img_size, indices=keep.tolist(), cacheable=False)


def _build_cifar100(root: str | None, split: str, download: bool) -> ArrayDataset:
    from torchvision.datasets import CIFAR100
    folder = Path(root).expanduser() if root is not None else cache_dir() / "cifar100"
    try:
        ds = CIFAR100(str(folder), train=split == "train", download=download)
    except (RuntimeError, OSError) as e:  # OSError: no network (urllib URLError)
        if download:
            raise DataError(f"could not download CIFAR-100 into {folder}: {e}") from e
        raise DataError(f"CIFAR-100 not found in {folder} (expected {folder}/cifar-100-python/); pass download=True "
                        f"(--download) to fetch it (about 170 MB) or root= a folder that holds it") from e
    return ArrayDataset(ds.data, ds.targets, ds.classes, source="cifar100", root=str(folder.resolve()), split=split)


def _apply_subset(ds: ImageDataset, subset: int, seed: int) -> ImageDataset:
    keep = _subset_positions(ds.targets, subset, seed)
    if isinstance(ds, FolderDataset):
        out: ImageDataset = FolderDataset([(ds.paths[i], ds.targets[i]) for i in keep], ds.classes, source=ds.source,
                                          root=ds.root, split=ds.split)
    elif isinstance(ds, ArrayDataset):
        out = ds.select(keep)
    else:
        out = _SubsetDataset(ds, keep)
    out.subset, out.seed = subset, seed
    return out


class _SubsetDataset(ImageDataset):
    """Positions ``keep`` of a generated dataset (synthetic)."""

    def __init__(self, base: ImageDataset, keep: Sequence[int]):
        super().__init__(base.classes, [base.targets[i] for i in keep], source=base.source, root=base.root,
                         split=base.split)
        self.base, self.keep = base, list(keep)
        self.cacheable = base.cacheable

    def load_image(self, index: int, min_size: int | None = None) -> Image.Image:
        return self.base.load_image(self.keep[index], min_size)

    def _item_keys(self) -> list[str]:
        return [str(i) for i in self.keep]

    def identity(self) -> dict[str, Any]:
        return {**self.base.identity(), **super().identity()}


# ----------------------------------------------------------------------------------------------------------------
# In-memory tensor cache

def _progress(iterable=None, **kwargs):
    from tqdm import tqdm
    return tqdm(iterable, disable=not sys.stderr.isatty(), **kwargs)


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
    loader = torch.utils.data.DataLoader(_DecodeDataset(dataset, size, crop_pct), batch_size=64,
                                         num_workers=num_workers)
    pos = 0
    with _progress(total=n, desc=f"decode {dataset.source} {dataset.split} @{size}px", unit="img") as bar, \
            _worker_errors():
        for batch in loader:
            out[pos:pos + len(batch)] = batch
            pos += len(batch)
            bar.update(len(batch))
    return out


def build_memory_cache(dataset: ImageDataset, size: int, crop_pct: float = 1.0, *,
                       num_workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor, Path | None]:
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
    if path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("key") == json.dumps(key, sort_keys=True) and len(blob["images"]) == len(dataset):
            return blob["images"], targets, path
    images = _decode_all(dataset, size, crop_pct, num_workers)
    blob = {"images": images, "targets": targets, "key": json.dumps(key, sort_keys=True)}
    atomic_write(path, lambda f: torch.save(blob, f))
    return images, targets, path


# ----------------------------------------------------------------------------------------------------------------
# Samplers

class _ShuffleSampler(torch.utils.data.Sampler):
    """Single-process sampler: a permutation (or the identity) that depends only on (seed, epoch)."""

    def __init__(self, n: int, seed: int, shuffle: bool):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def _seeded_sampler(cls, seed: int, /, *args, **kwargs):
    """A ``cls`` sampler (timm's ``RepeatAugSampler``, torch's ``DistributedSampler``) whose shuffle of epoch e
    is seeded by ``_mix(seed, e)``: timm's seeds it with the epoch alone, torch's with ``seed + e``, which makes the
    order of seed s + 1 in epoch e that of seed s in epoch e + 1 (sibling stages have consecutive seeds)."""

    class _Seeded(cls):
        def set_epoch(self, epoch: int) -> None:
            self.epoch = _mix(seed, epoch)

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
            yield i, _mix(self.seed, self.epoch, self.rank, k)

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


# ----------------------------------------------------------------------------------------------------------------
# Loaders

def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


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


@contextmanager
def _worker_errors() -> Iterator[None]:
    """A :class:`DataError` raised in a DataLoader worker reaches the main process as the same type whose message
    is the worker's whole traceback; keep its own one line, as with ``workers: 0``."""
    try:
        yield
    except DataError as e:
        lines = str(e).strip().splitlines()
        if len(lines) < 2 or "DataLoader worker" not in lines[0]:
            raise
        raise DataError(lines[-1].partition("DataError: ")[2] or lines[-1]) from None


class StreamLoader(Loader):
    """Decodes and transforms each image (timm transforms) in DataLoader workers."""

    def __init__(self, dataset, sampler, transform, *, train: bool, batch_size: int, drop_last: bool,
                 device: torch.device, seed: int, rank: int, num_workers: int):
        super().__init__(dataset, sampler, batch_size=batch_size, drop_last=drop_last, device=device, seed=seed)
        self.transform = transform
        self._tagged = _TaggedSampler(sampler, seed, rank)
        cuda = device.type == "cuda"
        self._dl = torch.utils.data.DataLoader(
            _Transformed(dataset, transform, train), batch_size=batch_size, sampler=self._tagged,
            drop_last=drop_last, num_workers=num_workers, pin_memory=cuda, persistent_workers=num_workers > 0,
            # An own generator keeps the DataLoader from drawing worker base seeds from the global torch RNG.
            generator=torch.Generator().manual_seed(seed))

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

    def __init__(self, dataset, sampler, images: torch.Tensor, targets: torch.Tensor, *, train: bool,
                 batch_size: int, drop_last: bool, device: torch.device, seed: int, rank: int,
                 aug: dict[str, Any], cache_path: Path | None = None):
        super().__init__(dataset, sampler, batch_size=batch_size, drop_last=drop_last, device=device, seed=seed)
        self.train, self.rank, self.cache_path = train, rank, cache_path
        self.images = images.to(device)  # uint8, once: 4x smaller than float and no host->device copy per batch
        self.targets = targets.to(device)
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        mean = torch.tensor(aug.get("mean") or IMAGENET_DEFAULT_MEAN, dtype=torch.float32, device=device)
        std = torch.tensor(aug.get("std") or IMAGENET_DEFAULT_STD, dtype=torch.float32, device=device)
        self._mean, self._std = (mean * 255).view(1, 3, 1, 1), (std * 255).view(1, 3, 1, 1)
        self.scale = tuple(aug.get("scale") or MEMORY_DEFAULT_SCALE)
        self.ratio = tuple(aug.get("ratio") or (3 / 4, 4 / 3))
        self.hflip = float(aug.get("hflip", 0.5))
        self._erase = None
        if train and aug.get("re_prob", 0) > 0:
            from timm.data.random_erasing import RandomErasing
            self._erase = RandomErasing(aug["re_prob"], mode=aug.get("re_mode", "const"),
                                        max_count=aug.get("re_count", 1), device=str(device))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # the epoch's order goes to the device once, so slicing a batch's indices never waits on the GPU
        order = _to_device(torch.tensor(list(self.sampler), dtype=torch.int64), self.device)
        gen = torch.Generator().manual_seed(_mix(self.seed, self.epoch, self.rank, 0xA06))
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images[idx].float()
            if self.train:
                x = self._crop_flip(x, gen)
            x = x.sub_(self._mean).div_(self._std)
            if self._erase is not None:
                with self._device_rng(int(torch.randint(0, 2 ** 62, (1,), generator=gen))):
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
        base = (torch.arange(s, dtype=torch.float32) * 2 + 1) / s - 1
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
_MEMORY_AUG_KEYS = {"scale", "ratio", "hflip", "re_prob", "re_mode", "re_count", "mean", "std", "crop_pct",
                    "interpolation"}


def _check_aug(aug: dict[str, Any]) -> None:
    from timm.data import create_transform
    valid = set(inspect.signature(create_transform).parameters) - {"input_size", "is_training"}
    unknown = sorted(set(aug) - valid)
    if unknown:
        raise ValueError(f'unknown augmentation option(s) {", ".join(unknown)}; aug takes the keyword arguments of '
                         f'timm.data.create_transform: {", ".join(sorted(valid))}')


def build_loader(dataset, *, batch_size: int, train: bool, img_size: int, aug: dict | None = None,
                 num_workers: int | None = None, in_memory: bool = False, seed: int = 0,
                 distributed: bool = False, repeated_aug: bool = False, drop_last: bool | None = None,
                 device: str | torch.device = "cpu") -> Loader:
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

    if distributed:
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("distributed=True but torch.distributed is not initialised; launch with torchrun and "
                             "call init_process_group first, or pass distributed=False")
        world, rank = dist.get_world_size(), dist.get_rank()
    else:
        world, rank = 1, 0

    if train and repeated_aug:
        from timm.data.distributed_sampler import RepeatAugSampler
        sampler = _seeded_sampler(RepeatAugSampler, seed, dataset, num_replicas=world, rank=rank)
    elif distributed and train:
        sampler = _seeded_sampler(torch.utils.data.DistributedSampler, seed, dataset, num_replicas=world, rank=rank,
                                  shuffle=True, seed=0)
    elif distributed:
        from timm.data.distributed_sampler import OrderedDistributedSampler
        sampler = OrderedDistributedSampler(dataset, num_replicas=world, rank=rank)
        sampler.set_epoch = lambda epoch: None  # fixed order
    else:
        sampler = _ShuffleSampler(len(dataset), seed, shuffle=train)

    n = len(sampler)
    if drop_last and n < batch_size:
        raise DataError(f"{dataset!r} gives {n} images per epoch to this process, fewer than batch_size={batch_size}"
                        f", so drop_last leaves no batch; lower batch_size, use more data (subset) or "
                        f"drop_last=False")

    if in_memory:
        crop_pct = 1.0 if train else float(aug.get("crop_pct") or _default_crop_pct())
        ignored = sorted(k for k, v in aug.items() if k not in _MEMORY_AUG_KEYS and v)
        if train and ignored:
            warnings.warn(f'in_memory loader ignores augmentation option(s) {", ".join(ignored)} (it applies only '
                          f'random resized crop, flip and random erasing)', stacklevel=2)
        images, targets, path = build_memory_cache(dataset, img_size, crop_pct)
        return MemoryLoader(dataset, sampler, images, targets, train=train, batch_size=batch_size,
                            drop_last=drop_last, device=device, seed=seed, rank=rank, aug=aug, cache_path=path)

    from timm.data import create_transform
    if train:
        transform = create_transform(img_size, is_training=True, **aug)
    else:
        transform = create_transform(img_size, is_training=False, **{k: aug[k] for k in _EVAL_AUG_KEYS if k in aug})
    if num_workers is None:
        num_workers = min(8, _cpu_count())
    return StreamLoader(dataset, sampler, transform, train=train, batch_size=batch_size, drop_last=drop_last,
                        device=device, seed=seed, rank=rank, num_workers=num_workers)


def _default_crop_pct() -> float:
    from timm.data import DEFAULT_CROP_PCT
    return DEFAULT_CROP_PCT


def patch_timm_posterize() -> bool:
    """Let timm's RandAugment posterize to 0 bits again (a black image, as Pillow < 13 gave); True if it was needed.

    timm 1.0.31's ``PosterizeIncreasing`` asks for 0 bits at magnitude 10, which DeiT's ``rand-m9-mstd0.5-inc1``
    reaches in ~2% of its draws; Pillow 13 raises there, which would kill about one streaming batch in 20.
    """
    from PIL import ImageOps
    from timm.data import auto_augment as aa
    try:
        ImageOps.posterize(Image.new("RGB", (1, 1)), 0)
        return False
    except ValueError:
        pass
    original = aa.posterize

    def posterize(img, bits_to_keep, **kwargs):
        return Image.new(img.mode, img.size) if bits_to_keep < 1 else original(img, bits_to_keep, **kwargs)

    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        aa.NAME_TO_OP[name] = posterize
    return True


POSTERIZE_PATCHED = patch_timm_posterize()
