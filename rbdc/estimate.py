"""Wall-time estimates of a plan: training FLOP/s measured on this device with a few steps (``--estimate``), or
read from the committed benchmark results of a named device (``reports/bench/*.json``, written by ``tox -e bench``)."""
from __future__ import annotations

import json
import time
from fractions import Fraction
from pathlib import Path

import torch

from .errors import UserError

BENCH = Path(__file__).resolve().parents[1] / "reports" / "bench"


STEP_FLOPS = 2e10  # default batch: about this many training FLOPs per step (tiny models are slow at tiny batches)


def measure_train_flops_per_s(name: str, factor: Fraction | int = 1, img_size: int | None = None, *,
                              batch: int | None = None, steps: int = 2, device: str | torch.device = "cpu",
                              **kwargs) -> float:
    """Training FLOP/s (3 x forward, the ledger's rule) of ``steps`` AdamW steps on random data, after one warm-up.
    ``batch`` defaults to about :data:`STEP_FLOPS` per step, between 8 and 256 images."""
    from .flops import _meta_twin, train_flops_per_image
    from .models import scaled

    twin, size = _meta_twin(name, img_size, **kwargs)
    if hasattr(twin, "patch_embed"):  # the position embedding follows the input size
        kwargs = {**kwargs, "img_size": size}
    if batch is None:
        batch = int(min(256, max(8, STEP_FLOPS // train_flops_per_image(twin, size) // factor)))
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = scaled(name, factor, **kwargs).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(batch, 3, size, size, device=device)
        y = torch.randint(0, model.num_classes, (batch,), device=device)

        def step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        step()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        seconds = time.perf_counter() - t0
    return steps * batch * train_flops_per_image(model, size) / seconds


def bench_train_flops_per_s(device_name: str, model: str | None = None, bench_dir: Path = BENCH) -> float:
    """Training FLOP/s that the committed train-step benchmarks measured on the device called ``device_name``
    (a substring of its name or of its results file): the model's own figure where measured, else the fastest."""
    found, devices = [], []
    for path in sorted(Path(bench_dir).glob("*.json")):
        for b in json.loads(path.read_text()).get("benchmarks", []):
            e = b.get("extra_info", {})
            if b.get("group") != "train-step" or e.get("impl") != "harness":
                continue
            devices.append(e.get("device", path.stem))
            if device_name.lower() in f"{e.get('device', '')} {path.stem}".lower():
                found.append((e["model"], e["images_per_round"] * e["train_flops_per_image"] / b["stats"]["median"]))
    if not found:
        have = ", ".join(sorted(set(devices))) or "none"
        raise UserError(f"no committed benchmark results for {device_name!r} in {bench_dir} (devices: {have}); run "
                        f"`tox -e bench` on that device, or pass --estimate to measure here")
    same = [f for m, f in found if m == model]
    return max(same or [f for _, f in found])


def estimate_stages(recipe: dict, stages: list, num_classes: int, gpu: str | None = None) -> str:
    """One line: the plan's estimated wall time on one device, from the speed of each stage's model (measured here
    with the recipe's batch, at most 64 images, or the committed benchmarks of ``gpu``)."""
    from .units import human_time
    batch = recipe["batch_size"]
    speed: dict = {}
    for s in stages:
        if s.factor not in speed:
            speed[s.factor] = (bench_train_flops_per_s(gpu, recipe["model"]) if gpu else measure_train_flops_per_s(
                recipe["model"], s.factor, recipe["img_size"], batch=min(batch, 64), num_classes=num_classes,
                **recipe["model_kwargs"]))
    seconds = sum((s.steps * batch * s.flops_per_image + s.extra_flops) / speed[s.factor] for s in stages)
    where = f"at the benchmarked speed of {gpu}" if gpu else "at the speed of a few steps measured here"
    return f"estimated wall time: {human_time(seconds)} {where} (1 device; training steps only, no evaluation)"
