"""Peak dense bf16 throughput of accelerators, for model FLOPs utilisation (MFU).

MFU = achieved model FLOP/s (training FLOPs per image, see :mod:`rbdc.flops`, times images per second) / the device's
peak. The peaks are vendor spec-sheet figures for dense bf16 tensor-core math (no structured sparsity). Hardware
rarely reaches them: large bf16 matmuls were measured at about 798 TFLOP/s on an H100 SXM (81% of its 989), which is
why the project's target for a DeiT-B step is stated in TFLOP/s (>= 360, i.e. 45% of the measured 798). Set
``RBDC_PEAK_TFLOPS`` to use another peak (a measured one, or a device missing from the table).

On a CPU, bf16 autocast is fast only where oneDNN has bf16 kernels (:func:`cpu_bf16_fast`: AVX-512 or AMX on x86);
elsewhere :mod:`rbdc.training.bf16` runs its matmuls in fp32 with bf16 rounding (bf16 runs record which in
``command.txt``).
"""

from __future__ import annotations

import functools
import os
import time

import torch

from .machine import cpu_kind

__all__ = [
    "PEAK_BF16_TFLOPS",
    "MEASURED_BF16_TFLOPS",
    "PEAK_ENV",
    "lookup_peak",
    "peak_tflops",
    "mfu",
    "mfu_fields",
    "cpu_bf16_fast",
    "cpu_info",
    "gemm_probe_gflops",
]

PEAK_ENV = "RBDC_PEAK_TFLOPS"

# (substring of torch.cuda.get_device_name(), dense bf16 TFLOP/s). First match wins, so more specific names come
# first ("H100 PCIe" before "H100", "L40S" before "L40" before "L4"). The A10G is left out on purpose: its name
# contains "A10" but its clocks (and peak) differ from the A10's, and no spec sheet gives one figure.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("GH200", 989.4),
    ("H200 NVL", 835.5),
    ("H200", 989.4),
    ("H100 PCIe", 756.5),
    ("H100 NVL", 835.5),
    ("H100", 989.4),  # SXM5, reported as "NVIDIA H100 80GB HBM3"
    ("H800 PCIe", 756.5),
    ("H800", 989.4),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.05),
    ("L40", 181.05),
    ("L4", 121.0),
    ("RTX 6000 Ada", 364.25),
    ("RTX A6000", 154.8),
    ("RTX 4090", 165.2),  # with fp32 accumulation, as autocast uses
)

# What dense bf16 matmuls actually reach, where measured (informational; MFU uses the spec peak or the override).
MEASURED_BF16_TFLOPS: dict[str, float] = {"H100": 798.0}


def lookup_peak(name: str) -> float | None:
    """Dense bf16 peak (TFLOP/s) of the device called ``name`` in the table, or None if it is not listed."""
    lowered = name.lower()
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key.lower() in lowered), None)


def _env_peak() -> float | None:
    text = os.environ.get(PEAK_ENV, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(
            f"{PEAK_ENV}={text!r} is not a positive number of TFLOP/s; set it to the device's dense bf16 "
            f"peak (e.g. {PEAK_ENV}=989) or unset it to use the table in rbdc/cost/perf.py"
        )
    return value


def peak_tflops(device: torch.device | str | None = None) -> float | None:
    """The peak MFU is measured against, in TFLOP/s.

    Args:
        device: a CUDA device (default: the current one when CUDA is available).

    Returns:
        ``$RBDC_PEAK_TFLOPS`` if set (on any device), else the table's entry for the CUDA device's name; None on a
        CPU or an unlisted GPU.
    """
    env = _env_peak()
    if env is not None:
        return env
    device = torch.device(device) if device is not None else None
    if device is None:
        if not torch.cuda.is_available():
            return None
        device = torch.device("cuda")
    if device.type != "cuda":
        return None
    return lookup_peak(torch.cuda.get_device_name(device))


def mfu(model_tflops_per_s: float, device: torch.device | str | None = None) -> float | None:
    """Model FLOPs utilisation: achieved model TFLOP/s over :func:`peak_tflops` (a fraction), or None if unknown."""
    peak = peak_tflops(device)
    return None if peak is None else model_tflops_per_s / peak


def mfu_fields(model_tflops_per_s: float, device: torch.device | str | None = None) -> dict[str, float]:
    """``{"mfu": fraction}`` for a summary row where the peak is known, else ``{}`` (a CPU, an unlisted GPU)."""
    value = mfu(model_tflops_per_s, device)
    return {} if value is None else {"mfu": round(value, 5)}


@functools.cache  # the hardware does not change, and autocast_for asks at every training step
def cpu_bf16_fast() -> bool:
    """Whether this CPU has oneDNN bf16 matmul kernels (x86: AVX-512 or AMX; aarch64: BF16)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_info() -> dict:
    """What a run records of its CPU: torch's vector capability (e.g. AVX2, AVX512), whether bf16 is fast, and the
    CPU's model name with its family-model numbers. The capability alone does not name a machine: Zen 4, Zen 5 and
    an AMX Xeon all read AVX512 and train this project's ViTs up to 3x apart in speed."""
    kind = cpu_kind()
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_fast": cpu_bf16_fast(),
        "model": f"{kind['name']} ({kind['family_model']})",
    }


def gemm_probe_gflops(dtype: torch.dtype = torch.float32, n: int = 512, reps: int = 8) -> float:
    """GFLOP/s of ``reps`` n x n x n matmuls in ``dtype`` on this process's CPU threads (a few ms).

    Training runs record it after every epoch (``gemm_gflops`` in summary.csv): some machines switch between a fast
    and a slow speed state for minutes at a time (a 2-core AMX Xeon of this project's: bf16 GEMMs at about 1,100 or
    400 GFLOP/s), and an epoch's wall time means little without the state it ran in. Constant operands: the probe
    draws no random numbers, so a run's randomness (and weights) are the same with or without it."""
    a = torch.full((n, n), 0.5, dtype=dtype)
    b = torch.full((n, n), 0.25, dtype=dtype)
    torch.mm(a, b)  # warm-up: the first call picks the kernel
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9
