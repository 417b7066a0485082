"""Detection data: the balloon set from ``$RBDC_DATA/balloon_dataset.zip``, and checks of a config's data roots.

Balloon (Matterport's Mask R-CNN sample, MIT): one class, 61 train / 13 val images with COCO-format ``train.json`` and
``val.json`` (see ``shared/data/README.md``). Configs read its folder from ``$BALLOON_ROOT``; the launchers set that
variable to an extraction of the zip in the cache folder when it is unset.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from rbdc.errors import UserError
from rbdc.data import cache_dir, default_data_root

__all__ = ["BALLOON_ZIP", "balloon_root", "ensure_data_env", "check_data_roots"]

BALLOON_ZIP = "balloon_dataset.zip"
BALLOON_FILES = ("train.json", "val.json", "train", "val")
# Which environment variable a config's data root comes from, by the text that names it in the config.
DATA_ENV = {
    "BALLOON_ROOT": "the balloon folder holding train.json, val.json, train/ and val/",
    "COCO_ROOT": "the COCO 2017 folder holding annotations/instances_{train,val}2017.json, train2017/ and val2017/",
}


def balloon_root(
    data_root: str | os.PathLike | None = None, cache: str | os.PathLike | None = None, verify: bool = True
) -> Path:
    """Folder of the extracted balloon set (``.../balloon`` with train.json), extracting the zip once if needed.

    The zip is unpacked into a temporary folder beside the destination and renamed into place, so concurrent callers
    (one per rank) agree on one complete copy and an interrupted extraction leaves nothing half-filled.

    Args:
        data_root: folder holding ``balloon_dataset.zip`` (default ``$RBDC_DATA``).
        cache: where to extract (default ``$RBDC_CACHE`` or ``~/.cache/rbdc/data``).
        verify: check the extracted files against ``balloon_dataset.contents.sha256`` when that file is present.
    """

    dest_root = Path(cache).expanduser() if cache else cache_dir()
    dest = dest_root / "balloon_dataset" / "balloon"
    if all((dest / f).exists() for f in BALLOON_FILES):
        return dest
    src_root = Path(data_root).expanduser() if data_root else default_data_root()
    archive = src_root / BALLOON_ZIP if src_root else None
    if archive is None or not archive.is_file():
        raise UserError(
            f"balloon data not found: no {BALLOON_ZIP} in {src_root or '$RBDC_DATA (unset)'}; set "
            f"RBDC_DATA to the folder holding it, or BALLOON_ROOT to an extracted balloon/ folder"
        )
    dest_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-balloon-", dir=dest_root))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        contents = archive.with_name("balloon_dataset.contents.sha256")
        if verify and contents.is_file():
            _verify(tmp, contents)
        try:
            os.rename(tmp, dest.parent)
        except OSError:  # another process finished first: keep its copy
            if not all((dest / f).exists() for f in BALLOON_FILES):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not all((dest / f).exists() for f in BALLOON_FILES):
        raise UserError(f"{archive}: extracted, but {dest} lacks one of {BALLOON_FILES}; is it the balloon zip?")
    return dest


def _verify(root: Path, contents: Path) -> None:
    bad = []
    for line in contents.read_text().splitlines():
        if not line.strip():
            continue
        digest, rel = line.split(maxsplit=1)
        path = root / rel.lstrip("*")
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            bad.append(rel)
    if bad:
        raise UserError(
            f"{len(bad)} extracted balloon files differ from {contents} (first: {bad[0]}); the zip is "
            f"damaged: fetch it again"
        )


def ensure_data_env(config_text: str) -> dict[str, str]:
    """Set ``$BALLOON_ROOT`` to an extracted balloon set when the config reads it and it is unset.

    Done in the launcher, not the config, so that building a config never extracts anything. Returns what was set
    (the config must then be loaded again for the value to take effect).

    Args:
        config_text: text of the config and its bases (MMEngine's ``cfg.text``).
    """
    if "$BALLOON_ROOT" in config_text and not os.environ.get("BALLOON_ROOT"):
        os.environ["BALLOON_ROOT"] = str(balloon_root())
        return {"BALLOON_ROOT": os.environ["BALLOON_ROOT"]}
    return {}


def check_data_roots(cfg, config_text: str = "") -> None:
    """Raise :class:`UserError` naming the variable to set when a dataloader's annotation file or images are missing.

    Args:
        cfg: the loaded MMEngine config.
        config_text: text of the config and its bases (``cfg.filename`` chain), to tell which variable it reads.
    """
    for split in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg.get(split)
        if not loader:
            continue
        ds = loader.get("dataset", {})
        while "dataset" in ds:  # wrappers such as RepeatDataset / ClassBalancedDataset
            ds = ds["dataset"]
        root = ds.get("data_root") or ""
        paths = [Path(root, ds["ann_file"])] if ds.get("ann_file") else []
        img = (ds.get("data_prefix") or {}).get("img")
        if img:
            paths.append(Path(root, img))
        for p in paths:
            if not p.exists():
                hint = (
                    "; ".join(f"set {var} to {what}" for var, what in DATA_ENV.items() if f"${var}" in config_text)
                    or "fix data_root in the config or with --cfg-options"
                )
                raise UserError(f"{split}: {p} does not exist (data_root {root!r}); {hint}")
