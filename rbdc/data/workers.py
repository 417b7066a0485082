"""The data pipeline's processes: how many workers, their errors as one line, progress bars."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator


from .datasets import DataError


def _progress(iterable=None, **kwargs):
    from tqdm import tqdm

    return tqdm(iterable, disable=not sys.stderr.isatty(), **kwargs)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


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
