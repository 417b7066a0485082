"""Group ``train-paths``: the studies' training step on every execution path, as model FLOP/s and GEMM fraction.

CPU: the 32-px Imagenette study's targets and their narrow variants (batch 128, the study recipes' loss, clipping and
drop-path). Each model's first row is the path the study runs (fp32; the ViT with timm's explicit attention, the
ResNet channels-last; one thread per run, two runs at once); every other row changes one thing: bf16 autocast,
``torch.compile``, the other attention kernel or memory format, 2 threads in one process, 2 one-thread processes.
GPU: the 64-px Imagenette study's ViT-mini packed 1, 2, 4 and 8 runs to the GPU (bf16), the study's batch.

Right before every timed round each process measures the same-precision GEMM rate (``gemm_flops_per_s``), so the
report's *fraction of GEMM* (model FLOP/s over GEMM FLOP/s, median over rounds) compares two rates measured under
the same load.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from benchmarks.bench_common import require_device, timed
from benchmarks.train_paths import Pack, PathCase, Trainer

VIT = "configs/recipes/imagenette32/base-vit-nano.yaml"
RESNET = "configs/recipes/imagenette32/base-resnet18.yaml"
VIT_64 = "configs/recipes/imagenette/base-vit-mini.yaml"


def _cpu_cases(model: str, recipe: str, steps: int, vit: bool, compile_: bool) -> list[PathCase]:
    """The study path of ``model`` and its one-change variants."""
    base = PathCase(
        "cpu",
        model,
        32,
        recipe,
        steps=steps,
        study=True,
        **({"fused_attn": False, "amp": "bf16"} if vit else {"channels_last": True}),
    )
    first = (
        [{"amp": "fp32"}, {"amp": "fp32", "fused_attn": True}, {"fused_attn": True}]
        if vit
        else [{"channels_last": False}, {"amp": "bf16"}]
    )
    changes = first + [{"threads": 2}, {"procs": 2}] + ([{"compile": True}] if compile_ else [])
    return [base] + [replace(base, study=False, **change) for change in changes]


CASES = [
    *_cpu_cases("rbdc_vit_nano_patch4_32", VIT, 1, vit=True, compile_=True),
    *_cpu_cases("rbdc_vit_nano_patch4_32_w2", VIT, 3, vit=True, compile_=False),
    *_cpu_cases("rbdc_vit_nano_patch4_32_w4", VIT, 6, vit=True, compile_=False),
    *_cpu_cases("resnet18", RESNET, 1, vit=False, compile_=True),
    *_cpu_cases("rbdc_resnet18_w2", RESNET, 3, vit=False, compile_=False),
    *[
        PathCase("cuda", "rbdc_vit_mini_patch8_64", 64, VIT_64, amp="bf16", procs=n, steps=30, rounds=5, study=n == 1)
        for n in (1, 2, 4, 8)
    ],
]


@pytest.mark.benchmark(group="train-paths")
@pytest.mark.parametrize("case", CASES, ids=str)
def test_train_path(benchmark, case: PathCase):
    """Rounds of ``case.steps`` steps (in every process at once); each round's GEMM probe runs just before it."""
    name, case = str(case), case.for_run()
    device = require_device(case.device)
    gemm: list[float] = []
    threads = torch.get_num_threads()
    if case.procs == 1:
        runner = Trainer(case)
        train, info, close = runner.train, runner.info(), lambda: torch.set_num_threads(threads)
    else:
        runner = Pack(case)
        train, info, close = runner.train, runner.info, runner.close
    try:
        timed(
            benchmark,
            lambda: train(case.steps),
            device,
            rounds=case.rounds,
            warmup_rounds=1,
            setup=lambda: gemm.append(runner.gemm()),
            **info,
        )
    finally:
        close()
    benchmark.extra_info.update(case=name, gemm_flops_per_s=gemm[-case.rounds :])
