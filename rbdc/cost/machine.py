"""The machine kind a cost model is fitted on and matched to: a CPU's model name, family/model numbers and the ISA
flags that pick oneDNN's kernels, or a GPU's name."""

from __future__ import annotations

import re
from pathlib import Path

import torch

ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")  # what oneDNN dispatches on


def _cpuinfo(text: str | None = None) -> dict:
    """The first processor's fields of ``/proc/cpuinfo`` (or of ``text``)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            text = ""
    info: dict = {}
    for line in text.splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu_kind(cpuinfo: str | None = None) -> dict:
    """This machine's CPU kind: ``name``, ``family_model``, ``isa`` (the :data:`ISA_FLAGS` it has), ``key`` (what
    a cost model is matched on) and ``slug`` (file names)."""
    import platform

    info = _cpuinfo(cpuinfo)
    name = info.get("model name") or platform.processor() or platform.machine()
    fm = f"{info.get('cpu family', '?')}-{info.get('model', '?')}"
    flags = set(info.get("flags", "").split())
    isa = [f for f in ISA_FLAGS if f in flags]
    top = (
        "amx"
        if "amx_bf16" in isa
        else "avx512bf16"
        if "avx512_bf16" in isa
        else "avx512"
        if "avx512f" in isa
        else "avx2"
        if "avx2" in isa
        else "base"
    )
    slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\((r|tm)\)", "", name.lower())).strip("-")
    return {
        "name": name,
        "family_model": fm,
        "isa": isa,
        "key": f"{name} | {fm} | {' '.join(isa)}",
        "slug": f"{slug}-{fm}-{top}",
    }


def device_kind(device) -> dict:
    """The kind of ``device``: :func:`cpu_kind` on a CPU; on a GPU its name (the key a GPU's cost model is matched
    on)."""
    device = torch.device(device)
    if device.type != "cuda":
        return cpu_kind()
    name = torch.cuda.get_device_name(device)
    return {
        "name": name,
        "family_model": "cuda",
        "isa": [],
        "key": f"cuda | {name}",
        "slug": re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"),
    }
