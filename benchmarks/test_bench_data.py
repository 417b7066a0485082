"""Group ``data``: training images per second out of ``rbdc.data.build_loader``.

* ``jpeg``: the streaming path on Imagenette's JPEGs (``RBDC_DATA``; skipped when absent): decode + timm's DeiT
  training transform (RandAugment, random erasing) at 224 px in DataLoader workers, pinned memory on CUDA.
* ``memory``: the in-memory path at 64 px (the Imagenette study): uint8 images resident on the device, random resized
  crop + flip (+ random erasing when ``re_prob`` > 0) on whole batches. Uses Imagenette's decoded cache when the data
  is there, else synthetic images (the throughput does not depend on the pixels).
"""

from __future__ import annotations

import itertools

import pytest

from benchmarks.bench_common import DEVICES, data_root, require_device, timed
from rbdc.data import build_dataset, build_loader
from rbdc.recipe import DEFAULTS


def _drain(loader, epoch: int, batches: int | None = None) -> None:
    loader.set_epoch(epoch)
    for _ in itertools.islice(loader, batches):
        pass


def _posterize_shim() -> bool:
    """Whether rbdc.data has to patch timm's RandAugment posterize for this Pillow (recorded in extra_info)."""
    from rbdc.data import patch_timm_posterize

    return patch_timm_posterize()


def _imagenette_root() -> str:
    root = data_root()
    if root is None:
        pytest.skip("Imagenette not found: set RBDC_DATA to the folder holding imagenette2-224.tar")
    return str(root)


@pytest.mark.benchmark(group="data")
@pytest.mark.parametrize("device", DEVICES)
def test_jpeg_stream(benchmark, device: str):
    device = require_device(device)
    per_class = 16 if device.type == "cpu" else 128
    ds = build_dataset("imagenette", _imagenette_root(), "train", subset=per_class)
    shim = _posterize_shim()
    batch = 32 if device.type == "cpu" else 128
    loader = build_loader(ds, batch_size=batch, train=True, img_size=224, aug=DEFAULTS["aug"], seed=0, device=device)
    epochs = itertools.count()
    timed(
        benchmark,
        lambda: _drain(loader, next(epochs)),
        device,
        rounds=3,
        warmup_rounds=1,
        source="imagenette",
        path="stream",
        img_size=224,
        batch=batch,
        workers=loader._dl.num_workers,
        pin_memory=loader._dl.pin_memory,
        persistent_workers=loader._dl.persistent_workers,
        aug=str(DEFAULTS["aug"]),
        posterize_shim=shim,
        dtype="fp32",
        channels_last=False,
        compile=False,
        images_per_round=len(loader) * batch,
    )


@pytest.mark.benchmark(group="data")
@pytest.mark.parametrize("re_prob", [0.0, 0.25])
@pytest.mark.parametrize("device", DEVICES)
def test_memory(benchmark, device: str, re_prob: float):
    device = require_device(device)
    root = data_root()
    if root is not None:
        ds, source = build_dataset("imagenette", str(root), "train"), "imagenette"
    else:
        ds, source = build_dataset("synthetic", None, "train", img_size=64, num_images=2048), "synthetic"
    batch = 128 if device.type == "cpu" else 512
    loader = build_loader(
        ds, batch_size=batch, train=True, img_size=64, aug={"re_prob": re_prob}, in_memory=True, seed=0, device=device
    )
    batches = 8 if device.type == "cpu" else len(loader)
    epochs = itertools.count()
    timed(
        benchmark,
        lambda: _drain(loader, next(epochs), batches),
        device,
        rounds=5,
        warmup_rounds=1,
        source=source,
        path="memory",
        img_size=64,
        batch=batch,
        re_prob=re_prob,
        dtype="fp32",
        channels_last=False,
        compile=False,
        images_per_round=batches * batch,
    )
