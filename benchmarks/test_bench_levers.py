"""Group ``levers``: each lever on the narrow parts' speed as a ratio to the study path, measured in one run.

Per width (16, 32 and 64 at 32 px: the nano's parts and the micro's), every round of the lever's runner follows a
round of its reference in the same process, and the report's ratio is the median over rounds of (lever img/s) /
(reference img/s) on the busy clock (the process's CPU time; :mod:`benchmarks.time_split`). Levers
(``benchmarks/levers.py``):

* ``batched``: the k parts of a level as one batched model (``rbdc.nets.batched``) vs the k separate parts, k = 4 at
  width 16, 2 at widths 32 and 64; ``vmap``: ``torch.func.vmap`` over the stacked parameters, same reference;
* ``compile``: ``torch.compile`` of the part; ``batch256``: batch 256 instead of 128; ``fp32``: fp32 instead of
  bf16 autocast (each vs the study path's part);
* ``threads``: one part with 2 threads vs 2 parts in 2 one-thread processes at once (the study's ``jobs: 2``), on
  the wall clock, both cores: skipped, saying so, when core 0 is busy (another job there would be timed too).

GPU (the device check): DeiT-Ti parts (k = 4) and DeiT-S parts (k = 2) at 224 px, batch 256 per part, bf16,
batched vs separate.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

import pytest
import torch

from benchmarks.bench_common import TOY, require_device, sync, timed, toy_sized
from benchmarks.levers import Batched, Separate, Vmapped, core_busy
from benchmarks.test_bench_time_split import DEIT, VIT, VIT_WIDTHS
from benchmarks.time_split import beside, busy_clock
from benchmarks.train_paths import Pack, PathCase, Trainer
from rbdc.cost.machine import device_kind

TARGET_IMAGES = {16: 1024, 32: 768, 64: 512, 128: 512, 192: 256, 384: 128}  # images per round: rounds of ~0.5 s here


@dataclass(frozen=True)
class LeverCase:
    device: str
    lever: str  # batched | vmap | compile | batch256 | fp32 | threads
    width: int
    model: str
    img_size: int = 32
    recipe: str = VIT
    k: int = 1  # parts (batched, vmap)
    batch: int = 128
    amp: str = "bf16"
    steps: int = 1  # GPU: the lever's steps per round (CPU rounds are sized by TARGET_IMAGES; toy: one step)
    rounds: int = 7

    def __str__(self) -> str:
        return (
            f"{self.device}-{self.lever}-w{self.width}"
            + (f"-k{self.k}" if self.k > 1 else "")
            + f"-{self.img_size}px-b{self.batch}"
        )

    def study(self) -> PathCase:
        """The study path's part (toy-sized under TOY)."""
        fused = False if self.device == "cpu" else None
        c = toy_sized(self)
        return PathCase(c.device, c.model, c.img_size, self.recipe, batch=c.batch, amp=self.amp, fused_attn=fused)


def _cases() -> list[LeverCase]:
    cases = []
    for w, k in ((16, 4), (32, 2), (64, 2)):
        cases += [LeverCase("cpu", lever, w, VIT_WIDTHS[w], k=k) for lever in ("batched", "vmap")]
    for lever in ("batch256", "fp32", "compile", "threads"):
        cases += [LeverCase("cpu", lever, w, VIT_WIDTHS[w]) for w in (16, 32, 64)]
    # the width ladder's rungs (issue 36 runs the fastest correct path per width): compile only, the one lever that
    # won at every width above and passed the accuracy check (configs: compile-check32)
    cases += [LeverCase("cpu", "compile", w, VIT_WIDTHS[w]) for w in (128, 192, 384)]
    cases += [
        LeverCase("cuda", "batched", w, DEIT_PARTS[w], 224, DEIT, k=k, batch=256, steps=5, rounds=5)
        for w, k in ((192, 4), (384, 2))
    ]
    return cases


DEIT_PARTS = {192: "deit_tiny_patch16_224", 384: "deit_small_patch16_224"}
CASES = _cases()


def _runners(case: LeverCase):
    """(reference, lever) runners: objects with ``step()``, ``images`` and ``device``."""
    study = case.study()
    if case.lever in ("batched", "vmap"):
        return Separate(study, case.k), (Batched if case.lever == "batched" else Vmapped)(study, case.k)
    change = {"compile": {"compile": True}, "batch256": {"batch": 8 if TOY else 256}, "fp32": {"amp": "fp32"}}
    ref = Trainer(study)
    ref.images = study.batch
    var = Trainer(replace(study, **change[case.lever]))
    var.images = var.case.batch
    return ref, var


class _Pair:
    """Two runners' rounds on the busy clock: ``ref_round()`` untimed by pytest-benchmark, ``round()`` timed."""

    def __init__(self, ref, var, steps: tuple[int, int], clock):
        self.ref, self.var, self.steps, self.clock = ref, var, steps, clock
        self.ref_s: list[float] = []
        self.var_s: list[float] = []

    def _run(self, runner, steps: int, out: list) -> None:
        t0 = self.clock()
        for _ in range(steps):
            runner.step()
        sync(runner.device)
        out.append(self.clock() - t0)

    def ref_round(self) -> None:
        self._run(self.ref, self.steps[0], self.ref_s)

    def round(self) -> None:
        self._run(self.var, self.steps[1], self.var_s)


@pytest.mark.benchmark(group="levers")
@pytest.mark.parametrize("case", [c for c in CASES if c.lever != "threads"], ids=str)
def test_lever(benchmark, case: LeverCase):
    """Interleaved rounds: reference, lever, reference, lever ...; the ratio is the median over pairs."""
    device = require_device(case.device)
    threads = torch.get_num_threads()
    try:
        ref, var = _runners(case)
        # images per round: ~0.5 s on the CPU; on a GPU case.steps of the lever (one sync per round)
        target = 1 if TOY else TARGET_IMAGES[case.width] if device.type == "cpu" else case.steps * var.images
        steps = tuple(max(1, target // r.images) for r in (ref, var))
        pair = _Pair(ref, var, steps, busy_clock(device))
        rounds = 2 if TOY else case.rounds
        timed(
            benchmark,
            pair.round,
            device,
            rounds=rounds,
            warmup_rounds=1,
            setup=pair.ref_round,
            images_per_round=steps[1] * var.images,
        )
    finally:
        torch.set_num_threads(threads)
    benchmark.extra_info.update(
        case=str(case),
        lever=case.lever,
        width=case.width,
        k=case.k,
        model=case.model,
        img_size=case.img_size,
        batch=case.batch,
        amp=case.amp,
        kind=device_kind(device),
        ref_images_per_round=steps[0] * ref.images,
        ref_busy_s=pair.ref_s[-rounds:],
        busy_s=pair.var_s[-rounds:],
        busy_clock=str(busy_clock(device).__name__),
        beside=beside(),
    )


@pytest.mark.benchmark(group="levers")
@pytest.mark.parametrize("case", [c for c in CASES if c.lever == "threads"], ids=str)
def test_threads(benchmark, case: LeverCase):
    """2 threads x 1 part vs 1 thread x 2 parts in two processes, wall clock, interleaved; needs both cores idle
    but for this run."""
    device = require_device(case.device)
    if not TOY:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            pytest.skip(f"needs 2 cores, this process may use {cores} (run it without taskset)")
        busy = core_busy(0)
        if busy > 0.1:
            pytest.skip(f"core 0 is {100 * busy:.0f}% busy with another job: the 2-core lever was not measured")
    threads = torch.get_num_threads()
    study = case.study()
    pack = Pack(replace(study, procs=2, threads=1))
    try:
        var = Trainer(replace(study, threads=2))
        target = 1 if TOY else TARGET_IMAGES[case.width]
        steps = max(1, target // study.batch)
        ref_s, var_s = [], []

        def ref_round():
            ref_s.append(max(pack.train(steps)))

        def round_():
            t0 = time.perf_counter()
            var.train(steps)
            var_s.append(time.perf_counter() - t0)

        rounds = 2 if TOY else case.rounds
        timed(
            benchmark,
            round_,
            device,
            rounds=rounds,
            warmup_rounds=1,
            setup=ref_round,
            images_per_round=steps * study.batch,
        )
    finally:
        pack.close()
        torch.set_num_threads(threads)
    benchmark.extra_info.update(
        case=str(case),
        lever=case.lever,
        width=case.width,
        k=2,
        model=case.model,
        img_size=case.img_size,
        batch=case.batch,
        amp=case.amp,
        kind=device_kind(device),
        ref_images_per_round=2 * steps * study.batch,
        ref_busy_s=ref_s[-rounds:],
        busy_s=var_s[-rounds:],
        busy_clock="perf_counter (wall)",
    )
