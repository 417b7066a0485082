"""One writer per run directory.

Two launchers on one run (a second terminal, a Slurm array beside a local rerun) would race on ``last.pt``, the
manifest and ``summary.csv``. The writer holds an OS lock on ``<run>/.lock``: ``fcntl.flock``, which the kernel
releases when the process dies (kill -9 leaves no stale lock). Where the filesystem has no flock (some NFS/Lustre
mounts answer ENOLCK or EOPNOTSUPP) it falls back to a lock file created atomically (``O_CREAT | O_EXCL``,
``<run>/.lock.held``) holding the holder's host and pid; a holder on this host whose pid is gone is stale and
taken over; one on another host can only be cleared by hand (the message says which file). The lock file says which
method holds it.

Only one process of a run takes it: rank 0 under torchrun (the others learn the outcome by broadcast), the parent
under ``rbdc.jobs`` (its children train stages inside the parent's hold).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from ..errors import UserError
from ..files import user_errors

LOCK = ".lock"
HELD = ".lock.held"  # the fallback's lock file
HELD_EXIT = 75  # exit status of a launcher that skipped a held run (EX_TEMPFAIL: try again later)
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


class RunHeld(UserError):
    """Another process holds the run directory."""

    exit_code = HELD_EXIT

    def __init__(self, run_dir: Path, holder: dict):
        self.holder = holder
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
        super().__init__(
            f"{run_dir} is being trained by pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
            f"since {since} ({holder.get('method', '?')} lock): skipped; --wait waits for it"
        )


def _me(method: str) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "method": method}


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _flock(run_dir: Path):
    """(fd, None) when this process now holds the flock; (None, holder) when another does; raises OSError where
    the filesystem has no flock."""
    import fcntl

    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None, _read(run_dir / LOCK)
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(_me("flock")).encode())
    return fd, None


def _exclusive(run_dir: Path):
    """The fallback: (path, None) when this process created the lock file; (None, holder) when another holds it."""
    path = run_dir / HELD
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read(path)
            stale = holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", 0)) or -1)
            if not stale:
                return None, {**holder, "method": f"lock file {path}; delete it if that process is gone"}
            path.unlink(missing_ok=True)  # its holder died on this host: take it over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(_me("lock file")))
        return path, None
    return None, _read(path)


def try_acquire(run_dir: Path):
    """A release callable when this process now holds ``run_dir``, else the holder (a dict)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a run directory; move it away or pick another --output")
    with user_errors(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd, holder = _flock(run_dir)
        if fd is not None:
            return lambda: os.close(fd)
        return holder
    except OSError as e:
        if e.errno not in _NO_FLOCK:
            raise
    path, holder = _exclusive(run_dir)
    if path is not None:
        return lambda: path.unlink(missing_ok=True)
    return holder


def holder(run_dir: Path) -> dict | None:
    """Who holds ``run_dir`` now (None: nobody). Probes by taking the lock and letting it go at once."""
    if not run_dir.is_dir():
        return None
    got = try_acquire(run_dir)
    if callable(got):
        got()
        return None
    return got


@contextlib.contextmanager
def hold(run_dir: Path, *, wait: bool = False, log=print, poll_s: float = 5.0) -> Iterator[None]:
    """Hold ``run_dir`` for the block; a held run raises :class:`RunHeld`, or with ``wait`` waits for its holder."""
    announced = False
    while True:
        got = try_acquire(run_dir)
        if callable(got):
            break
        if not wait:
            raise RunHeld(run_dir, got)
        if not announced:
            log(f"waiting for {run_dir}: held by pid {got.get('pid', '?')} on {got.get('host', '?')}")
            announced = True
        time.sleep(poll_s)
    try:
        yield
    finally:
        got()
