"""``RBDCMetricsHook``: write the latest validation/test metrics to ``<work_dir>/metrics.json`` for reports."""

from __future__ import annotations

import json
import time
from pathlib import Path

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmdet.registry import HOOKS

from rbdc.runs.rundir import atomic_write_bytes

__all__ = ["RBDCMetricsHook"]


@HOOKS.register_module()
class RBDCMetricsHook(Hook):
    """Append each evaluation's metrics (with epoch, iteration and the config name) to a JSON file in the work dir.

    MMEngine only logs metrics as text; reports need them as data. The file holds ``{"val": [...], "test": [...]}``
    with one entry per evaluation, newest last.

    Args:
        filename: file name inside ``runner.work_dir``.
    """

    priority = "VERY_LOW"

    def __init__(self, filename: str = "metrics.json"):
        self.filename = filename

    def after_val_epoch(self, runner, metrics=None) -> None:
        self._write(runner, "val", metrics)

    def after_test_epoch(self, runner, metrics=None) -> None:
        self._write(runner, "test", metrics)

    def _write(self, runner, split: str, metrics) -> None:
        if not metrics or not is_main_process():
            return
        path = Path(runner.work_dir) / self.filename
        data = json.loads(path.read_text()) if path.is_file() else {}
        data.setdefault(split, []).append(
            {
                "epoch": runner.epoch,
                "iter": runner.iter,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "config": Path(runner.cfg.filename).name if runner.cfg.filename else None,
                "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
            }
        )
        atomic_write_bytes(path, json.dumps(data, indent=1).encode())
