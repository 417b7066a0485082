"""Files written whole or not at all, and training state checked before it is loaded: every file the suite writes
goes through :func:`atomic_write` (a temporary file in the same folder, fsync, then ``os.replace``), so a reader, or
a resume after kill -9, sees the old file or the new one, never a part; :func:`save_state` puts the sha256 of a
``torch.save`` payload in front of it, and :func:`load_state` refuses a damaged file before unpickling it. The OS
errors of a write become one line naming the path and the fix (:func:`user_errors`)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from .errors import UserError

__all__ = [
    "TMP_SUFFIX",
    "atomic_write",
    "atomic_write_bytes",
    "load_state",
    "package_data",
    "read_json",
    "save_state",
    "sha256",
    "user_errors",
    "write_json",
]

_UMASK = os.umask(0)
os.umask(_UMASK)
TMP_SUFFIX = ".tmp"  # temporary files are hidden: .<name>.<random>.tmp (safetensors' and older ones: .<name>.tmp)
_STATE_MAGIC = b"rbdc-state sha256="


def package_data(relpath: str) -> Path:
    """A file or folder shipped inside the rbdc package (pyproject's ``package-data``: the fitted cost models, the
    quickstart's recipes), read through :mod:`importlib.resources`, so an installed wheel finds it as an editable
    checkout does. The library reads nothing else of the folder it was installed from."""
    path = resources.files("rbdc").joinpath(relpath)
    if not isinstance(path, Path):  # a zipped install: the readers need real paths (recipes inherit by file name)
        raise UserError(f"rbdc's package data {relpath} is not a folder on disk ({path}); install rbdc unzipped")
    return path


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def user_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn the OS errors of writing ``path`` (full disk, no permission, a file where a folder should be) into one
    line naming the path and the fix."""
    try:
        yield
    except OSError as e:
        if isinstance(e, (FileExistsError, NotADirectoryError)) or e.errno in (errno.ENOTDIR, errno.EEXIST):
            fix = "a file stands where a folder is needed; move it away or pick another --output"
        elif e.errno == errno.ENOSPC:
            fix = "the disk is full; free space, then rerun the same command to resume"
        elif e.errno in (errno.EDQUOT, errno.EFBIG):
            fix = (
                "a disk quota or file-size limit is reached (the disk is full for this run); free space or raise "
                "the limit, then rerun the same command to resume"
            )
        elif isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = "no permission to write there; pick another --output or fix the folder's permissions"
        else:
            fix = "check the disk and the path, then rerun the same command to resume"
        raise UserError(f"cannot write {path}: {e.strerror or e}; {fix}") from e


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file in the same folder, which is fsynced and then
    renamed over ``path``. Creates missing parent folders."""
    path = Path(path)
    with user_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; keep the permissions a plain open() gives
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def write_json(path: Path, obj: dict, sort_keys: bool = False) -> Path:
    return atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=sort_keys).encode())


def read_json(path: Path, fix: str) -> dict:
    """A JSON object from ``path``, or a one-line error naming the file and ``fix``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is damaged ({e}); {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is damaged (not a JSON object); {fix}")
    return data


def save_state(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` behind a header holding the sha256 of the payload, so that a damaged file is found
    before it is unpickled (torch's own format checks nothing)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    return atomic_write_bytes(path, _STATE_MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n" + data)


def load_state(path: str | os.PathLike, fix: str):
    """What :func:`save_state` wrote to ``path``, after checking its sha256; a damaged file is never loaded: the
    error names it and ``fix`` (how to recover)."""
    import torch

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}; {fix}") from e
    if data.startswith(_STATE_MAGIC):
        head, _, body = data.partition(b"\n")
        if head[len(_STATE_MAGIC) :].decode(errors="replace") != hashlib.sha256(body).hexdigest():
            raise UserError(f"{path} is damaged (sha256 mismatch: truncated or changed on disk); {fix}")
    elif data.startswith(b"PK"):  # a zip from torch.save, written before the checksum header existed
        body = data
    else:
        raise UserError(f"{path} is damaged (not a checkpoint written by rbdc); {fix}")
    try:
        return torch.load(io.BytesIO(body), weights_only=False)
    except Exception as e:  # torch raises many types for a damaged zip or pickle
        raise UserError(f"{path} is damaged ({str(e).splitlines()[0] if str(e) else type(e).__name__}); {fix}") from e
