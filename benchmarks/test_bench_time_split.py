"""Group ``time-split``: where the study step's time goes, per width and precision (``benchmarks/time_split.py``).

CPU: the 32-px study's ViT at widths 16, 32, 64, 128, 192 and 384 (the nano's shape: depth 4, heads of 16, patch 4;
widths 16 and 32 are the nano's RBDC parts; 16, 64 and 192 also at batch 256, which tells the per-step costs from the
per-image ones for the cost model) and ResNet-18 at a quarter, half and full width, batch 128, one thread: the
study's step (the ViT in bf16 autocast with timm's explicit attention, the ResNet channels-last in fp32), and the
other precision of each. GPU: DeiT-Ti/S/B (widths 192/384/768) at 224 px in bf16, batch 256.

Each case: timed rounds, each after a same-precision GEMM probe (as in ``train-paths``: model FLOP/s and the fraction
of the GEMM rate), then a profile of a few more steps split into GEMMs, attention, norms/activations/elementwise,
optimizer and other, forward vs backward. The cost model (:mod:`rbdc.cost.costmodel`) is fitted on these rows.

On a CPU every round and probe is also timed on the process's CPU time (``round_busy_s``, ``gemm_busy_flops_per_s``):
a 1-thread run accrues it only while it runs, so a machine shared with other jobs (whose time slices stretch the
wall) still gives the step's cost; the report shows both clocks and the share of the wall the run had the core.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from benchmarks.bench_common import TOY, require_device, timed
from benchmarks.time_split import beside, busy_clock, gemm_busy_rate, profile_split
from benchmarks.train_paths import PathCase, Trainer
from rbdc.cost.machine import device_kind

VIT = "configs/recipes/imagenette32/base-vit-nano.yaml"
RESNET = "configs/recipes/imagenette32/base-resnet18.yaml"
DEIT = "configs/recipes/imagenet/base-deit.yaml"
VIT_WIDTHS = {
    16: "rbdc_vit_nano_patch4_32_w4",
    32: "rbdc_vit_nano_patch4_32_w2",
    64: "rbdc_vit_nano_patch4_32",
    128: "rbdc_vit_micro_patch4_32",
    192: "rbdc_vit_tiny_patch4_32",
    384: "rbdc_vit_small_patch4_32",
}
STEPS = {"bf16": {16: 8, 32: 6, 64: 4, 128: 2, 192: 1, 384: 1}, "fp32": {16: 6, 32: 4, 64: 2, 128: 1, 192: 1, 384: 1}}
RESNETS = {
    "resnet18 /4": ("rbdc_resnet18_w4", 8),
    "resnet18 /2": ("rbdc_resnet18_w2", 4),
    "resnet18 /1": ("resnet18", 2),
}
DEITS = {192: "deit_tiny_patch16_224", 384: "deit_small_patch16_224", 768: "deit_base_patch16_224"}


@dataclass(frozen=True)
class SplitCase(PathCase):
    width: str = ""  # what the report's rows are called: the ViT's width, or "resnet18 /2"
    family: str = "vit"
    profile_steps: int = 2


def _cases() -> list[SplitCase]:
    cases = []
    for amp in ("bf16", "fp32"):
        for w, name in VIT_WIDTHS.items():
            cases.append(
                SplitCase(
                    "cpu",
                    name,
                    32,
                    VIT,
                    amp=amp,
                    fused_attn=False,
                    steps=STEPS[amp][w],
                    rounds=6,
                    study=amp == "bf16",
                    width=str(w),
                )
            )
        for w in (16, 64, 192):  # batch 256: separates the per-step costs (optimizer) from the per-image ones
            cases.append(
                SplitCase(
                    "cpu",
                    VIT_WIDTHS[w],
                    32,
                    VIT,
                    batch=256,
                    amp=amp,
                    fused_attn=False,
                    steps=max(1, STEPS[amp][w] // 2),
                    rounds=6,
                    width=str(w),
                )
            )
        for label, (name, steps) in RESNETS.items():
            cases.append(
                SplitCase(
                    "cpu",
                    name,
                    32,
                    RESNET,
                    amp=amp,
                    channels_last=True,
                    steps=steps,
                    rounds=6,
                    study=amp == "fp32",
                    width=label,
                    family="resnet",
                )
            )
    cases += [
        SplitCase(
            "cuda",
            name,
            224,
            DEIT,
            batch=256,
            amp="bf16",
            steps=10,
            rounds=5,
            study=True,
            width=str(w),
            profile_steps=3,
        )
        for w, name in DEITS.items()
    ]
    return cases


CASES = _cases()


@pytest.mark.benchmark(group="time-split")
@pytest.mark.parametrize("case", CASES, ids=str)
def test_time_split(benchmark, case: SplitCase):
    """Timed rounds (GEMM probe before each), then the profiled split of ``case.profile_steps`` more steps."""
    name, case = str(case), case.for_run()
    device = require_device(case.device)
    threads = torch.get_num_threads()
    gemm: list[float] = []
    busy: list[float] = []
    clock = busy_clock(device)
    try:
        trainer = Trainer(case)

        def round_():
            t0 = clock()
            trainer.train(case.steps)
            busy.append(clock() - t0)

        def probe():
            gemm.append(gemm_busy_rate(trainer.gemm_dtype, device))

        timed(benchmark, round_, device, rounds=case.rounds, warmup_rounds=1, setup=probe, **trainer.info())
        split = profile_split(trainer, 1 if TOY else case.profile_steps)
        split["beside"] = beside()
    finally:
        torch.set_num_threads(threads)
    benchmark.extra_info.update(
        case=name,
        width=case.width,
        family=case.family,
        kind=device_kind(device),
        gemm_busy_flops_per_s=gemm[-case.rounds :],
        round_busy_s=busy[-case.rounds :],
        busy_clock="process CPU time" if device.type == "cpu" else "wall",
        **split,
    )


@pytest.mark.benchmark(group="time-split")
@pytest.mark.parametrize("img_size", [32])
@pytest.mark.parametrize("device", ["cpu"])
def test_data_cost(benchmark, device: str, img_size: int):
    """The study's in-memory loader at ``img_size``, batch 128 (random resized crop + flip on the training thread):
    the per-image cost a run's epoch wall adds to its steps (the cost model's validation adds it)."""
    import itertools

    from benchmarks.bench_common import data_root
    from rbdc.data import build_dataset, build_loader

    device = require_device(device)
    root = data_root()
    if root is not None and not TOY:
        ds, source = build_dataset("imagenette", str(root), "train"), "imagenette"
    else:
        ds, source = build_dataset("synthetic", None, "train", img_size=img_size, num_images=1024), "synthetic"
    batch = 8 if TOY else 128
    loader = build_loader(
        ds, batch_size=batch, train=True, img_size=img_size, aug={"re_prob": 0.0}, in_memory=True, seed=0, device=device
    )
    batches, epochs, busy = (2 if TOY else 32), itertools.count(), []
    clock = busy_clock(device)

    def round_():
        t0 = clock()
        loader.set_epoch(next(epochs))
        for _ in itertools.islice(loader, batches):
            pass
        busy.append(clock() - t0)

    timed(
        benchmark,
        round_,
        device,
        rounds=2 if TOY else 5,
        warmup_rounds=1,
        source=source,
        path="memory",
        img_size=img_size,
        batch=batch,
        images_per_round=batches * batch,
        dtype="fp32",
        channels_last=False,
        compile=False,
    )
    benchmark.extra_info.update(
        case=f"cpu-data-memory-{img_size}px-b{batch}",
        width="data",
        family="data",
        kind=device_kind(device),
        round_busy_s=busy[-(2 if TOY else 5) :],
        busy_clock="process CPU time",
    )
