"""The Imagenette copy: found in a given folder, the data folder or the cache, its archive extracted once (atomically,
stamped with the archive's size) and its files verified against a ``sha256sum``-style list. :func:`extract_archive`
and :func:`verify_contents` work for any ImageFolder-style tar."""

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

from rbdc.files import atomic_write_bytes

from .datasets import IMAGENETTE_ARCHIVES, IMAGENETTE_NAMES, SPLITS, DataError
from .folders import cache_dir, default_data_root
from .workers import _progress


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
