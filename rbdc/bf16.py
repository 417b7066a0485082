"""bf16 autocast on a CPU without bf16 matmul kernels, at fp32 speed and with bf16's rounding.

oneDNN has bf16 GEMMs only on x86 CPUs with AVX-512 or AMX (aarch64: BF16). Elsewhere (e.g. an AVX2-only AMD EPYC,
Zen 2) torch runs every bf16 matmul in a scalar fallback loop, measured 30-80x slower than fp32: a 32-px ViT study
step went from 1,531 img/s (Zen 4, oneDNN bf16) to 36 img/s. A bf16 GEMM with fp32 accumulation, which is what
oneDNN computes, equals an fp32 GEMM of the bf16-rounded operands (a product of two bf16 numbers is exact in fp32)
rounded back to bf16, up to the order of the fp32 sums, which also differs between oneDNN's kernels on different
CPUs. So on such a CPU :func:`install` replaces the autocast kernels of the matmul-type ops with exactly that: round
the floating operands to bf16, run the op in fp32 with autocast off, round the result to bf16. Autograd sees the casts
and the fp32 op, so gradients are rounded to bf16 where autocast's would be. Measured on that Zen 2 CPU, one thread:
the study's ViT-nano step at 263 img/s (fp32: 320, plain bf16: 40), every output within one bf16 rounding of the
fallback kernel's (``tests/test_bf16.py``).
"""
from __future__ import annotations

import warnings

import torch

from . import perf

__all__ = ["OPS", "needed", "install", "uninstall", "installed"]

# The ops of torch's CPU autocast list (lower-precision ops) that our models reach: ViT blocks (linear, the explicit
# attention's matmul), patch embedding and ResNets (conv2d), and the mm family for code that calls it directly. Not
# SDPA: its bf16 kernel rounds the attention probabilities to bf16 inside, which an fp32 SDPA would not reproduce;
# the CPU recipes use the explicit attention (fused_attn: false), which is faster in bf16 anyway.
OPS = ("linear", "matmul", "mm", "bmm", "addmm", "baddbmm", "conv2d")

_library: torch.library.Library | None = None


def _rounded(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(torch.bfloat16).float()
    return value


def _kernel(name: str):
    op = getattr(torch.ops.aten, name).default

    def emulated(*args, **kwargs):
        with torch.autocast("cpu", enabled=False):
            out = op(*[_rounded(a) for a in args], **{k: _rounded(v) for k, v in kwargs.items()})
        return out.to(torch.bfloat16)
    emulated.__name__ = f"{name}_bf16_emulated"
    return emulated


def needed(device: torch.device | str) -> bool:
    """Whether bf16 autocast on ``device`` needs the emulation: a CPU without oneDNN bf16 kernels."""
    return torch.device(device).type == "cpu" and not perf.cpu_bf16_fast()


def install() -> bool:
    """Route CPU bf16 autocast's matmul-type ops (:data:`OPS`) through fp32 with bf16 rounding, for this process.

    Returns:
        True if this call installed it, False if it already was.
    """
    global _library
    if _library is not None:
        return False
    library = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():  # "Overriding a previously registered kernel": the override is the point
        warnings.simplefilter("ignore")
        for name in OPS:
            library.impl(name, _kernel(name), "AutocastCPU")
    _library = library
    return True


def uninstall() -> None:
    """Restore torch's own CPU autocast kernels."""
    global _library
    if _library is not None:
        _library._destroy()
        _library = None


def installed() -> bool:
    return _library is not None

