"""Helpers of the benchmark modules: data location, device names, CUDA-synchronised timing, run metadata."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DEVICES = ("cpu", "cuda")
# RBDC_BENCH_TOY=1: every case (the GPU ones too) runs on the CPU at toy size, in seconds: the device script's dry run
# (benchmarks/device_check.sh --dry-run) checks the whole chain on a machine without a GPU.
TOY = os.environ.get("RBDC_BENCH_TOY", "") == "1"
TOY_MODELS = {"vit": ("test_rbdc_vit", 32), "resnet": ("test_rbdc_resnet", 64)}


def toy_sized(case):
    """``case`` (a frozen dataclass with model, img_size, batch, steps, rounds) as it runs: toy-sized under TOY."""
    if not TOY:
        return case
    model, px = TOY_MODELS["resnet" if "resnet" in case.model else "vit"]
    return dataclasses.replace(case, model=model, img_size=px, batch=min(case.batch, 8), steps=1, rounds=2)


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(model)``; under TOY with the eager backend (Dynamo's tracing without minutes of codegen)."""
    return torch.compile(model, backend="eager") if TOY else torch.compile(model)


def data_root() -> Path | None:
    """Real datasets: ``$RBDC_DATA``, else ``../shared/data`` beside the checkout; None if that folder is absent."""
    root = Path(os.environ.get("RBDC_DATA", REPO.parent / "shared" / "data")).expanduser()
    return root if root.is_dir() else None


def device_name(device: torch.device | str) -> str:
    """Human name of a device: the GPU's name, or the CPU's model and the cores this process may use."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} ({cores} cores)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_info(device: torch.device, **fields) -> dict:
    """What a JSON row needs besides its timings: device, versions, threads, date, then ``fields``."""
    import timm

    info = {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if device.type == "cuda":
        info["cudnn"] = torch.backends.cudnn.version()
    info.update(fields)
    return info


def timed(benchmark, fn, device: torch.device, *, rounds: int, warmup_rounds: int = 1, setup=None, **extra) -> None:
    """Time ``fn`` (one round of work), synchronising CUDA at the end of every round; ``extra`` goes to extra_info.

    ``extra`` should hold ``images_per_round`` so the report can turn seconds into images per second. ``setup`` runs
    untimed before every round (warm-up rounds included).
    """

    def round_():
        fn()
        sync(device)

    benchmark.extra_info.update(run_info(device, **extra))
    benchmark.pedantic(round_, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1, setup=setup)


def require_device(name: str) -> torch.device:
    """The torch device for a case, skipping the test when it is CUDA and none is present (the CPU when toy-sized)."""
    if TOY:
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (none here); GPU figures not measured")
    return torch.device(name)
