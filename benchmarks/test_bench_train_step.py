"""Group ``train-step``: the engine's training step (``rbdc.training.engine.train_step``) against a bare PyTorch loop.

Both sides train the same model (identical weights) on the same in-memory batch with the same dtype, optimizer
(AdamW, fused where the engine fuses it), channels_last and torch.compile setting; the difference is the engine's
own work: its scheduler update, autocast context, loss accumulation on the device, and the bookkeeping around them.
The report's harness/bare ratio is the engine's overhead (target: within 3%).
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler

from benchmarks.bench_common import compiled, require_device, sync, timed, toy_sized
from benchmarks.train_paths import gemm_rate
from rbdc.training.engine import autocast_for, build_optimizer, set_attention_path, train_step
from rbdc.flops import train_flops_per_image
from rbdc.nets.models import family_of, scaled
from rbdc.recipe import DEFAULTS, Recipe


@dataclass(frozen=True)
class Case:
    device: str
    model: str
    img_size: int
    batch: int
    num_classes: int = 10
    compile: bool = False
    steps: int = 1  # optimizer steps per timed round (several on a GPU, so one sync covers many launches)
    rounds: int = 20
    fused_attn: bool | None = None  # ViTs: the attention kernel (None: timm's choice, fused SDPA)
    amp: str = "auto"  # the recipe's amp: auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32

    def __str__(self) -> str:
        attn = "" if self.fused_attn is None else ("-fusedattn" if self.fused_attn else "-explicitattn")
        return (
            f"{self.device}-{self.model}-{self.img_size}px-b{self.batch}"
            + ("-compile" if self.compile else "")
            + attn
            + ("" if self.amp == "auto" else f"-{self.amp}")
        )


CASES = [
    # CPU: the Imagenette study's ViT and a tiny bottleneck ResNet, batches small enough for seconds per case.
    Case("cpu", "rbdc_vit_mini_patch8_64", 64, 16, rounds=20),
    Case("cpu", "test_rbdc_resnet", 64, 16, rounds=40),
    # The 32-px study's ViT on the path it runs (batch 128, explicit attention).
    Case("cpu", "rbdc_vit_nano_patch4_32", 32, 128, rounds=20, fused_attn=False),
    Case("cpu", "rbdc_vit_nano_patch4_32", 32, 128, rounds=20, fused_attn=False, amp="bf16"),  # the study path
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


def _sides(case: Case) -> tuple[torch.device, dict]:
    """Both sides of a case, each training its own copy of the same weights.

    Returns:
        The device and ``{"bare": round, "harness": round, "info": the shared settings for extra_info}``.
    """
    device = require_device(case.device)
    reference = _reference_model(case)
    recipe = Recipe.from_dict(
        {
            **DEFAULTS,
            "model": case.model,
            "batch_size": case.batch,
            "compile": case.compile,
            "fused_attn": case.fused_attn,
            "amp": case.amp,
            "mixup": 0.0,
            "cutmix": 0.0,
            "smoothing": 0.0,
            "clip_grad": None,
            "ema": False,
        }
    )
    # The engine's own choices: bf16 on CUDA, fused AdamW on CUDA, channels_last for CNNs on CUDA.
    bf16 = isinstance(autocast_for(recipe, device), torch.autocast)
    fused = device.type == "cuda"
    channels_last = device.type == "cuda" and family_of(reference) == "resnet"
    lr = 5e-4 * case.batch / 512
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(case.batch, 3, case.img_size, case.img_size, generator=gen).to(device)
    y = torch.randint(0, case.num_classes, (case.batch,), generator=gen).to(device)

    def copy_model() -> tuple[nn.Module, nn.Module]:
        model = set_attention_path(copy.deepcopy(reference), recipe).to(device).train()
        if channels_last:
            model.to(memory_format=torch.channels_last)
        return model, (compiled(model) if case.compile else model)

    # The harness: the engine's optimizer factory, scheduler update and train_step.
    h_model, h_fwd = copy_model()
    h_opt = build_optimizer(h_model, recipe, lr, device)
    sched = CosineLRScheduler(
        h_opt,
        t_initial=10_000,
        lr_min=recipe.min_lr,
        warmup_t=100,
        warmup_lr_init=recipe.warmup_lr,
        warmup_prefix=True,
        t_in_epochs=False,
    )
    crit = nn.CrossEntropyLoss()
    loss_sum = torch.zeros((), device=device)
    batches = itertools.repeat((x, y))
    counter = itertools.count()

    def harness():
        i = next(counter)
        sched.step_update(i)
        train_step(
            h_model,
            batches,
            h_opt,
            crit,
            recipe,
            device,
            loss_sum=loss_sum,
            step=i,
            step_fn=h_fwd,
            channels_last=channels_last,
        )

    # The bare loop, as one would write it by hand.
    b_model, b_fwd = copy_model()
    b_opt = torch.optim.AdamW(
        b_model.parameters(), lr=lr, weight_decay=recipe.weight_decay, eps=recipe.opt_eps, fused=fused or None
    )

    def bare():
        xb = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(b_fwd(xb), y)
        loss.backward()
        b_opt.step()
        b_opt.zero_grad(set_to_none=True)

    def rounds(step):
        def round_():
            for _ in range(case.steps):
                step()

        return round_

    info = dict(
        case=str(case),
        model=case.model,
        img_size=case.img_size,
        batch=case.batch,
        dtype="bf16" if bf16 else "fp32",
        channels_last=channels_last,
        compile=case.compile,
        fused_attn=case.fused_attn,
        fused_adamw=fused,
        steps_per_round=case.steps,
        images_per_round=case.steps * case.batch,
        train_flops_per_image=train_flops_per_image(case.model, case.img_size, num_classes=case.num_classes),
    )
    return device, {"bare": rounds(bare), "harness": rounds(harness), "info": info}


@pytest.mark.benchmark(group="train-step")
@pytest.mark.parametrize("impl", ["bare", "harness"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_train_step(benchmark, case: Case, impl: str):
    """Each side timed on its own; the harness's rounds are interleaved with bare rounds (``paired_bare_s``).

    Interleaving makes the ratio immune to slow drifts of the machine's load: the report's main figure is the
    median over rounds of harness_i / bare_i, where bare_i ran just before harness_i.
    """
    name, case = str(case), toy_sized(case)
    device, sides = _sides(case)
    sides["info"]["case"] = name  # toy-sized cases keep their own names (several share one toy model)
    paired: list[float] = []
    gemm_dtype = torch.bfloat16 if sides["info"]["dtype"] == "bf16" else torch.float32

    def bare_round():
        t0 = time.perf_counter()
        sides["bare"]()
        sync(device)
        paired.append(time.perf_counter() - t0)

    warmup = 3 if case.compile else 2
    for _ in range(warmup):  # the bare side's warm-up (compilation, allocator), untimed
        bare_round()
    paired.clear()
    gemm = [gemm_rate(gemm_dtype, device)]  # the same-precision GEMM rate just before and after the timed rounds
    timed(
        benchmark,
        sides[impl],
        device,
        rounds=case.rounds,
        warmup_rounds=warmup,
        setup=bare_round if impl == "harness" else None,
        impl=impl,
        **sides["info"],
    )
    benchmark.extra_info["gemm_flops_per_s"] = gemm + [gemm_rate(gemm_dtype, device)]
    if impl == "harness":
        benchmark.extra_info["paired_bare_s"] = paired[-case.rounds :]
