"""Group ``train-step``: the engine's training step (``rbdc.engine.train_step``) against a bare PyTorch loop.

Both sides train the same model (identical weights) on the same in-memory batch with the same dtype, optimizer
(AdamW, fused where the engine fuses it), channels_last and torch.compile setting; the difference is the engine's
own work: its scheduler update, autocast context, loss accumulation on the device, and the bookkeeping around them.
The report's harness/bare ratio is the engine's overhead (target: within 3%).
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler

from benchmarks.bench_common import require_device, timed
from rbdc.engine import autocast_for, build_optimizer, train_step
from rbdc.flops import train_flops_per_image
from rbdc.models import family_of, scaled
from rbdc.recipe import DEFAULTS


@dataclass(frozen=True)
class Case:
    device: str
    model: str
    img_size: int
    batch: int
    num_classes: int = 10
    compile: bool = False
    steps: int = 1        # optimizer steps per timed round (several on a GPU, so one sync covers many launches)
    rounds: int = 20

    def __str__(self) -> str:
        return f"{self.device}-{self.model}-{self.img_size}px-b{self.batch}" + ("-compile" if self.compile else "")


CASES = [
    # CPU: the Imagenette study's ViT and a tiny bottleneck ResNet, batches small enough for seconds per case.
    Case("cpu", "rbdc_vit_mini_patch8_64", 64, 16, rounds=20),
    Case("cpu", "test_rbdc_resnet", 64, 16, rounds=40),
    # GPU (bf16): the targets, and the Imagenette study model at its batch.
    Case("cuda", "deit_small_patch16_224", 224, 256, 1000, steps=10, rounds=10),
    Case("cuda", "deit_base_patch16_224", 224, 256, 1000, steps=10, rounds=10),
    Case("cuda", "deit_base_patch16_224", 224, 256, 1000, compile=True, steps=10, rounds=10),
    Case("cuda", "resnet50", 224, 256, 1000, steps=10, rounds=10),
    Case("cuda", "resnet50", 224, 256, 1000, compile=True, steps=10, rounds=10),
    Case("cuda", "rbdc_vit_mini_patch8_64", 64, 512, steps=20, rounds=10),
]

_MODELS: dict[Case, nn.Module] = {}


def _reference_model(case: Case) -> nn.Module:
    """One initialisation per case, copied to both sides so they train identical weights."""
    if case not in _MODELS:
        torch.manual_seed(0)
        _MODELS.clear()  # keep one model alive at a time (DeiT-B weights + AdamW state are large)
        _MODELS[case] = scaled(case.model, 1, num_classes=case.num_classes)
    return _MODELS[case]


def _setup(case: Case):
    device = require_device(case.device)
    model = copy.deepcopy(_reference_model(case)).to(device).train()
    recipe = {**DEFAULTS, "model": case.model, "batch_size": case.batch, "compile": case.compile,
              "mixup": 0.0, "cutmix": 0.0, "smoothing": 0.0, "clip_grad": None, "ema": False}
    # The engine's own choices: bf16 on CUDA, fused AdamW on CUDA, channels_last for CNNs on CUDA.
    bf16 = device.type == "cuda"
    channels_last = device.type == "cuda" and family_of(model) == "resnet"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(case.batch, 3, case.img_size, case.img_size, generator=gen).to(device)
    y = torch.randint(0, case.num_classes, (case.batch,), generator=gen).to(device)
    return device, model, recipe, bf16, channels_last, x, y


@pytest.mark.benchmark(group="train-step")
@pytest.mark.parametrize("impl", ["bare", "harness"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_train_step(benchmark, case: Case, impl: str):
    device, model, recipe, bf16, channels_last, x, y = _setup(case)
    lr = 5e-4 * case.batch / 512
    fused = device.type == "cuda"
    fwd = torch.compile(model) if case.compile else model

    if impl == "harness":
        opt = build_optimizer(model, recipe, lr, device)
        sched = CosineLRScheduler(opt, t_initial=10_000, lr_min=recipe["min_lr"], warmup_t=100,
                                  warmup_lr_init=recipe["warmup_lr"], warmup_prefix=True, t_in_epochs=False)
        crit = nn.CrossEntropyLoss()
        loss_sum = torch.zeros((), device=device)
        batches = itertools.repeat((x, y))
        counter = itertools.count()

        def step():
            i = next(counter)
            sched.step_update(i)
            train_step(model, batches, opt, crit, recipe, device, loss_sum=loss_sum, step=i, step_fn=fwd,
                       channels_last=channels_last)
        amp_ctx = autocast_for(recipe, device)
        dtype = "bf16" if isinstance(amp_ctx, torch.autocast) else "fp32"
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=recipe["weight_decay"],
                                eps=recipe["opt_eps"], fused=fused or None)

        def step():
            xb = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(fwd(xb), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        dtype = "bf16" if bf16 else "fp32"

    def round_():
        for _ in range(case.steps):
            step()

    timed(benchmark, round_, device, rounds=case.rounds, warmup_rounds=3 if case.compile else 2,
          impl=impl, case=str(case), model=case.model, img_size=case.img_size, batch=case.batch, dtype=dtype,
          channels_last=channels_last, compile=case.compile, fused_adamw=fused, steps_per_round=case.steps,
          images_per_round=case.steps * case.batch,
          train_flops_per_image=train_flops_per_image(case.model, case.img_size, num_classes=case.num_classes))
