"""Group ``coupling``: ``rbdc.couple`` of two half-width parts into DeiT-B and ResNet-50, on the CPU.

Coupling runs once per RBDC level, between stages, on CPU tensors (the parts' state dicts are moved to the CPU), so
the CPU time is the time a run spends in it. It includes building the wide timm model.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from benchmarks.bench_common import timed
from rbdc.coupling import couple
from rbdc.nets.models import scaled

TARGETS = ["deit_base_patch16_224", "resnet50"]
_PARTS: dict[str, list] = {}


def _parts(target: str, k: int = 2) -> list:
    if target not in _PARTS:
        _PARTS.clear()
        parts = []
        for seed in range(k):
            torch.manual_seed(seed)
            parts.append(scaled(target, Fraction(1, k)))
        _PARTS[target] = parts
    return _PARTS[target]


@pytest.mark.benchmark(group="coupling")
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("device", ["cpu"])  # CPU only: the suite's device-filtered runs put it in the CPU JSON
def test_couple(benchmark, device: str, target: str):
    parts = _parts(target)
    device = torch.device(device)
    params = sum(p.numel() for p in parts[0].parameters()) * len(parts)
    timed(
        benchmark,
        lambda: couple(parts),
        device,
        rounds=3,
        warmup_rounds=1,
        target=target,
        k=len(parts),
        part_params=params // len(parts),
        dtype="fp32",
        channels_last=False,
        compile=False,
    )
