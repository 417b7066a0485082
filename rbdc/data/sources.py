"""Where datasets come from: the data and cache folders, ImageNet-style folders, the Imagenette archive
(extracted once, verified), digits and CIFAR-100; :func:`build_dataset` picks one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rbdc.files import atomic_write_bytes

from .datasets import (
    IMAGE_EXTENSIONS,
    IMAGENETTE_ARCHIVES,
    IMAGENETTE_COUNTS,
    IMAGENETTE_NAMES,
    SOURCES,
    SPLITS,
    ArrayDataset,
    DataError,
    FolderDataset,
    ImageDataset,
    SyntheticDataset,
    _apply_subset,
)
from .workers import _progress


def default_data_root() -> Path | None:
    """Folder holding the shared datasets (e.g. ``imagenette2-224.tar``): ``$RBDC_DATA`` if set (whether or not it
    exists), else None. The library guesses no folder: the project's own entry points set it (tox.ini, ``.ci/run``
    and the tests default it to ``../shared/data`` beside the checkout)."""
    env = os.environ.get("RBDC_DATA")
    return Path(env).expanduser() if env else None


def cache_dir() -> Path:
    """Folder for extracted archives and in-memory tensor caches: ``$RBDC_CACHE`` or ``~/.cache/rbdc/data``."""
    env = os.environ.get("RBDC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rbdc" / "data"


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
            raise DataError(
                f"{source} root {root} has no {split}/ folder (it holds: {', '.join(found) or 'nothing'});"
                f" expected {root}/train/<class>/<image> and {root}/val/<class>/<image>; {hint}"
            )


def _scan_folder(root: Path, split: str, source: str, hint: str) -> tuple[list[tuple[str, int]], list[str]]:
    """List ``(path, target)`` of one split; classes come from ``train/`` so every split indexes them alike."""
    _check_layout(root, source, hint)
    classes = _class_dirs(root / "train")
    if not classes:
        raise DataError(
            f"{root}/train has no class folders; put each class in its own folder, {root}/train/<class>/<image>"
        )
    split_dir = root / split
    split_classes = _class_dirs(split_dir) if split != "train" else classes
    if not split_classes:
        loose = [n for n in os.listdir(split_dir) if _is_image(n)]
        fix = (
            "it holds images directly: sort them into class folders (for ImageNet val, e.g. with the standard "
            "valprep.sh)"
            if loose
            else "it is empty"
        )
        raise DataError(f"{split_dir} has no class folders; {fix}")
    extra = sorted(set(split_classes) - set(classes))
    if extra:
        raise DataError(
            f"{split_dir} has class folders that {root}/train lacks: {', '.join(extra[:5])}; train/ and "
            f"{split}/ must use the same class folder names"
        )
    class_to_idx = {c: i for i, c in enumerate(classes)}
    samples = []
    for c in split_classes:
        d = split_dir / c
        with os.scandir(d) as it:
            files = sorted(e.name for e in it if e.is_file() and _is_image(e.name))
        if not files:
            raise DataError(
                f"class folder {d} has no images (looked for {', '.join(IMAGE_EXTENSIONS)}); add images "
                f"or remove the folder (from every split)"
            )
        samples.extend((str(d / f), class_to_idx[c]) for f in files)
    return samples, classes


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
            return name[: -len(ext)]
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
            raise DataError(
                f"cannot extract {archive}: {e}; check the file (sha256sum -c SHA256SUMS next to it) "
                f"and the free space in {dest_root}"
            ) from e
        root = _layout_root(tmp)
        if root is None:
            raise DataError(
                f"{archive} does not hold train/ and val/ folders (at its root or in one top folder); "
                f"it is not an ImageFolder-style dataset archive"
            )
        atomic_write_bytes(
            root / ".rbdc-source.json", json.dumps({**stamp, "seconds": time.perf_counter() - start}).encode()
        )
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
        raise DataError(
            f"{dest} was extracted from a different {archive.name} ({old.get('bytes')} bytes, now "
            f"{stamp['bytes']}); delete {dest} to extract the new one"
        )


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
        raise DataError(
            f"{len(bad)} of {len(lines)} files in {folder} are missing or differ from {contents_file} "
            f"(first: {bad[0]}); delete {folder} and extract the archive again"
        )


def find_imagenette(root: str | Path | None = None, *, verify: bool = False) -> Path:
    """Locate (extracting if needed) an Imagenette folder holding ``train/`` and ``val/``.

    Args:
        root: the extracted folder, an archive (e.g. ``imagenette2-224.tar``), or a folder holding either; default
            :func:`default_data_root`, then an earlier extraction in :func:`cache_dir`.
        verify: check every file against ``<name>.contents.sha256`` (next to the archive or in the data root).

    Returns:
        The dataset folder.
    """
    hint = (
        "pass root= the extracted imagenette folder, the imagenette2-224.tar file or a folder holding it, "
        "or set RBDC_DATA to that folder"
    )
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
                raise DataError(
                    f"verify=True but no {folder.name}.contents.sha256 was found next to {archive or cand}"
                    f"; put it there or pass verify=False"
                )
            verify_contents(folder, contents)
        return folder
    if root is None and default_data_root() is None:
        raise DataError(
            "no Imagenette found: RBDC_DATA is unset and no earlier extraction is in the cache; set RBDC_DATA=<folder "
            "holding imagenette2-224.tar> (tox and .ci/run set ../shared/data beside the checkout)"
        )
    where = ", ".join(str(c) for c in candidates)
    raise DataError(
        f"no Imagenette found in {where} (looked for train/ and val/, {', '.join(IMAGENETTE_NAMES)} "
        f"folders and {', '.join(IMAGENETTE_ARCHIVES)}); {hint}"
    )


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

    if num_classes is not None and num_classes != ds.num_classes:
        where = f" at {ds.root}" if ds.root else ""
        raise DataError(
            f"{source} {split}{where} has {ds.num_classes} classes but the model expects "
            f"num_classes={num_classes}; set num_classes={ds.num_classes} (e.g. --num-classes "
            f"{ds.num_classes}) or point root at a dataset with {num_classes} classes"
        )
    if subset is not None:
        ds = _apply_subset(ds, subset, seed)
    return ds


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
