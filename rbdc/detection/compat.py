"""Compatibility of MMEngine 0.10.7 / MMDetection 3.3.0 with torch >= 2.6: loading MMEngine's own checkpoints.

torch 2.6 made ``torch.load(weights_only=True)`` the default. MMEngine 0.10.7 calls ``torch.load`` without the
argument, and its checkpoints pickle more than tensors: the ``message_hub`` holds ``HistoryBuffer`` objects (numpy
arrays of logged losses), so ``--resume`` and ``test CONFIG CHECKPOINT`` fail with ``UnpicklingError ...
HistoryBuffer``.

Fix chosen: allow-list exactly the classes MMEngine writes (``torch.serialization.add_safe_globals``), rather than
``weights_only=False`` or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``. Both of those switch off the safe unpickler for
*every* file, including backbone checkpoints downloaded from elsewhere; the allow-list keeps ``torch.load`` refusing
arbitrary code, only admits a logging buffer, numpy arrays/scalars, and ``getattr`` restricted to the one use
MMEngine makes of it (``HistoryBuffer`` pickles its statistics methods as ``getattr(HistoryBuffer, 'min')``). A class
missing from the list fails loudly (torch names it and ``add_safe_globals``); ``rbdc doctor`` checks the round trip.
"""

from __future__ import annotations

import pickle

import numpy as np
import torch

__all__ = ["MMENGINE_SAFE_GLOBALS", "allow_mmengine_checkpoints"]


def _numpy_globals() -> list:
    """numpy objects that pickled arrays, dtypes and scalars reference (module paths differ between numpy 1 and 2)."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "uint8", "bool")]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtypes]


def _mmengine_globals() -> list:
    from mmengine.logging.history_buffer import HistoryBuffer

    def history_buffer_getattr(obj, name: str):
        """``getattr`` as HistoryBuffer pickles its statistics methods (``getattr(HistoryBuffer, 'mean')``), only."""
        if obj is HistoryBuffer and not name.startswith("_") and callable(getattr(HistoryBuffer, name, None)):
            return getattr(obj, name)
        raise pickle.UnpicklingError(
            f"refusing getattr({obj!r}, {name!r}) in a checkpoint: only HistoryBuffer "
            f"statistics methods are allowed (rbdc.detection.compat)"
        )

    # Registered under the name pickle writes, so the unpickler calls this restricted version, never the builtin.
    return [HistoryBuffer, (history_buffer_getattr, "builtins.getattr")]


MMENGINE_SAFE_GLOBALS: list = []


def allow_mmengine_checkpoints() -> list:
    """Allow-list the classes in MMEngine checkpoints for ``torch.load(weights_only=True)``; idempotent."""
    if not MMENGINE_SAFE_GLOBALS:
        MMENGINE_SAFE_GLOBALS.extend(_mmengine_globals() + _numpy_globals())
        if hasattr(torch.serialization, "add_safe_globals"):  # torch < 2.4 has no weights_only default to satisfy
            torch.serialization.add_safe_globals(MMENGINE_SAFE_GLOBALS)
    return MMENGINE_SAFE_GLOBALS
