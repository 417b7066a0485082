"""bf16 autocast on a CPU without bf16 matmul kernels, at fp32 speed and with bf16's rounding.

oneDNN has bf16 GEMMs only on x86 CPUs with AVX-512 or AMX (aarch64: BF16). Elsewhere (e.g. an AVX2-only AMD EPYC,
Zen 2) torch runs every bf16 matmul in a scalar fallback loop: a bf16 GEMM ran 80x slower than fp32 there, and the
32-px study's ViT step at 40 img/s against 320 in fp32 (1,531 in bf16 on a Zen 4 with oneDNN's kernels). A bf16 GEMM
with fp32 accumulation, which is what oneDNN computes, equals an fp32 GEMM of the bf16-rounded operands (a product of
two bf16 numbers is exact in fp32, barring overflow and subnormals) rounded back to bf16, up to the order of the fp32
sums, which also differs between oneDNN's kernels on different CPUs. So on such a CPU :func:`install` replaces the
autocast kernels of the matmul-type ops with exactly that: round the operands autocast would cast (floating, not
float64) to autocast's dtype, run the op in fp32 with autocast off, round the result. Autograd sees the casts and the
fp32 op, so gradients are rounded where autocast's would be; the saved activations are fp32, twice bf16's memory.
Measured on that Zen 2 CPU, one thread (``python -m benchmarks.cpu_bf16``, reports/cpu-bf16-avx2.md): the study's
ViT-nano step at 285 img/s (fp32: 358; torch's fallback: 40), every output within one bf16 rounding of the fallback
kernel's (``tests/test_bf16.py``).
"""

from __future__ import annotations

import warnings

import torch

from ..cost import perf

__all__ = ["OPS", "needed", "install", "uninstall", "installed", "matmul_path"]

# The ops of torch's CPU autocast list (lower-precision ops) that our models reach: ViT blocks (linear, the explicit
# attention's matmul), patch embedding and ResNets (conv2d, both overloads), and the mm family for code that calls it
# directly. Not SDPA: its bf16 kernel rounds the attention probabilities to bf16 inside, which an fp32 SDPA would not
# reproduce; the CPU recipes use the explicit attention (fused_attn: false), which is faster in bf16 anyway.
OPS = ("linear", "matmul", "mm", "bmm", "addmm", "baddbmm", "conv2d", "conv2d.padding")

_library: torch.library.Library | None = None


def _eligible(value) -> bool:
    """What autocast casts: floating tensors other than float64."""
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64


def _kernel(name: str):
    base, _, overload = name.partition(".")
    op = getattr(getattr(torch.ops.aten, base), overload or "default")

    def emulated(*args, **kwargs):
        dtype = torch.get_autocast_dtype("cpu")
        rounded = any(_eligible(v) for v in (*args, *kwargs.values()))

        def r(v):
            return v.to(dtype).float() if _eligible(v) else v

        with torch.autocast("cpu", enabled=False):
            out = op(*map(r, args), **{k: r(v) for k, v in kwargs.items()})
        return out.to(dtype) if rounded else out

    emulated.__name__ = f"{base}_{overload or 'default'}_emulated"
    return emulated


def needed(device: torch.device | str) -> bool:
    """Whether bf16 autocast on ``device`` needs the emulation: a CPU without oneDNN bf16 kernels."""
    return torch.device(device).type == "cpu" and not perf.cpu_bf16_fast()


def install() -> bool:
    """Route CPU autocast's matmul-type ops (:data:`OPS`) through fp32 with autocast-dtype rounding, for this
    process (the engine leaves it installed: every later bf16 run in the process needs it too).

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


def matmul_path() -> str:
    """How a CPU bf16 autocast matmul runs here, as bf16 runs record it: ``onednn`` or ``fp32-rounded``."""
    return "fp32-rounded" if needed("cpu") else "onednn"
