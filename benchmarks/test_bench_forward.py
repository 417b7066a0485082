"""Group ``forward``: inference throughput (eval mode, no autograd) of the suite's models, in images per second."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from benchmarks.bench_common import require_device, timed, toy_sized
from rbdc.flops import forward_flops
from rbdc.nets.models import family_of, scaled


@dataclass(frozen=True)
class Case:
    device: str
    model: str
    img_size: int
    batch: int
    num_classes: int = 1000
    steps: int = 1
    rounds: int = 10

    def __str__(self) -> str:
        return f"{self.device}-{self.model}-{self.img_size}px-b{self.batch}"


CASES = [
    Case("cpu", "rbdc_vit_mini_patch8_64", 64, 64, 10, rounds=10),
    Case("cpu", "deit_tiny_patch16_224", 224, 8, rounds=5),
    Case("cpu", "deit_small_patch16_224", 224, 4, rounds=5),
    Case("cpu", "resnet50", 224, 4, rounds=5),
    Case("cuda", "rbdc_vit_mini_patch8_64", 64, 1024, 10, steps=20),
    Case("cuda", "deit_small_patch16_224", 224, 256, steps=10),
    Case("cuda", "deit_base_patch16_224", 224, 256, steps=10),
    Case("cuda", "resnet50", 224, 256, steps=10),
]


@pytest.mark.benchmark(group="forward")
@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward(benchmark, case: Case):
    case = toy_sized(case)
    device = require_device(case.device)
    torch.manual_seed(0)
    model = scaled(case.model, 1, num_classes=case.num_classes).to(device).eval()
    bf16 = device.type == "cuda"
    channels_last = device.type == "cuda" and family_of(model) == "resnet"
    x = torch.randn(case.batch, 3, case.img_size, case.img_size, device=device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def round_():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for _ in range(case.steps):
                model(x)

    timed(
        benchmark,
        round_,
        device,
        rounds=case.rounds,
        warmup_rounds=1,
        model=case.model,
        img_size=case.img_size,
        batch=case.batch,
        dtype="bf16" if bf16 else "fp32",
        channels_last=channels_last,
        compile=False,
        images_per_round=case.steps * case.batch,
        forward_flops_per_image=forward_flops(case.model, case.img_size, num_classes=case.num_classes),
    )
