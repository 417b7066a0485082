"""Shared pieces of the benchmark suite (pytest-benchmark): device selection, synchronised timing, run metadata.

Run it per device, each device into its own JSON (numbers are never compared across devices)::

    python -m benchmarks.perf_report run        # reports/bench/<device>.json for the CPU and, if present, the GPU
    python -m benchmarks.perf_report            # reports/perf.md from every JSON in reports/bench/
    pytest benchmarks --bench-device=cpu --benchmark-json=reports/bench/cpu.json    # by hand

Every case records in ``extra_info`` the device (name), torch/CUDA versions, dtype, ``channels_last``,
``torch.compile``, the batch and how many images one timed round processes, which is what the report turns into
images per second. CUDA rounds end with ``torch.cuda.synchronize`` so they time the work, not the kernel launches.

Environment: ``RBDC_BENCH_THREADS`` sets torch's CPU threads (default: torch's choice; on a machine shared with other
jobs, 1 thread gives far steadier numbers than threads fighting for cores; ``tox -e bench`` sets 1); ``RBDC_DATA``
locates Imagenette; ``RBDC_BENCH_TOY=1`` runs every case, the GPU ones too, toy-sized on the CPU (the dry run of
``benchmarks/device_check.sh``).
"""

from __future__ import annotations

import os

import pytest
import torch

import rbdc  # noqa: F401  (registers rbdc's timm models)

from benchmarks.bench_common import DEVICES, TOY


def _apply_threads() -> None:
    text = os.environ.get("RBDC_BENCH_THREADS", "").strip()
    if not text:
        return
    if not text.isdigit() or int(text) < 1:
        raise pytest.UsageError(f"RBDC_BENCH_THREADS={text!r} is not a positive integer; set a thread count or unset")
    torch.set_num_threads(int(text))


_apply_threads()


def pytest_addoption(parser):
    parser.addoption(
        "--bench-device",
        choices=("all",) + DEVICES,
        default="all",
        help="run only the cases of this device (one --benchmark-json per device); default: all",
    )


def case_device(item) -> str | None:
    """The device a collected benchmark runs on: its ``device`` parameter or its ``case.device``."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "device" in params:
        return params["device"]
    return getattr(params.get("case"), "device", None)


def pytest_collection_modifyitems(config, items):
    wanted = config.getoption("--bench-device")
    keep, drop = [], []
    for item in items:
        dev = case_device(item)
        (drop if wanted != "all" and dev is not None and dev != wanted else keep).append(item)
        if dev == "cuda" and not TOY and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device (none here); GPU figures not measured"))
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
