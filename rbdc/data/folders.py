"""Where datasets live on disk: the data folder (``$RBDC_DATA``), the cache folder (``$RBDC_CACHE``) and the
ImageNet-style layout of a dataset folder (``train/<class>/<image>``, ``val/<class>/<image>``), scanned into
``(path, target)`` samples with a one-line error for each layout problem."""

from __future__ import annotations

import os
from pathlib import Path

from .datasets import IMAGE_EXTENSIONS, SPLITS, DataError


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
