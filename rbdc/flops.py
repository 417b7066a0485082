"""FLOPs accounting: forward MACs per image, training FLOPs per image, and the training ledger.

Conventions (the same everywhere in the suite, see README "FLOPs"):

* **MACs** count the multiply-accumulates of convolutions, linear layers and the two attention matmuls
  (q @ k^T and attn @ v), which is what the DeiT/timm tables call "GFLOPs"/"GMACs". Norms, activations, softmax and
  additions are not counted. They are computed analytically from the layer shapes (a shape-only forward pass on the
  ``meta`` device, so no real compute and no fused-attention blind spot).
* **FLOPs** = 2 x MACs.
* **Training FLOPs per image** = 3 x forward FLOPs (backward ~ 2 x forward). A test checks this against
  ``torch.utils.flop_counter.FlopCounterMode`` over a real forward + backward (fused attention switched off, because
  in torch 2.14 the CPU SDPA kernel counts zero).
* Coupled models are dense: their zero off-diagonal blocks are trained, so they cost the full wide model's FLOPs.
* Evaluation passes are not training FLOPs and are not in the ledger.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .files import atomic_write_bytes
from .nets.models import arch_of, scaled

__all__ = [
    "count_macs",
    "register_layer",
    "forward_macs",
    "model_forward_macs",
    "forward_flops",
    "train_flops_per_image",
    "measured_train_flops_per_image",
    "Ledger",
    "LedgerEntry",
    "TRAIN_FLOPS_PER_FORWARD",
]

TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (2x) per image
_LAYERS: dict[type, tuple[type, ...]] = {nn.Conv2d: (nn.Conv2d,), nn.Linear: (nn.Linear,)}


def register_layer(cls: type, like: type) -> None:
    """Count layers of class ``cls`` as ``like`` ones (``nn.Conv2d`` or ``nn.Linear``), from the same attributes
    (``in_channels``, ``groups``, ``kernel_size`` / ``in_features``): e.g. MixtureGrowth's template layers."""
    if like not in _LAYERS:
        raise ValueError(f"register_layer counts layers like one of {[t.__name__ for t in _LAYERS]}, got {like!r}")
    if cls not in _LAYERS[like]:
        _LAYERS[like] += (cls,)


def _meta_twin(model: nn.Module | str, img_size: int | None, **kwargs) -> tuple[nn.Module, int]:
    """A weightless copy of ``model`` on the meta device (so counting costs no compute) and its input size."""
    arch = {"name": model, "factor": 1, "kwargs": {}} if isinstance(model, str) else arch_of(model)
    kwargs = {**arch["kwargs"], **kwargs}
    with torch.device("meta"):
        twin = scaled(arch["name"], arch["factor"], **kwargs)
        if img_size and hasattr(twin, "patch_embed") and twin.patch_embed.img_size[0] != img_size:
            twin = scaled(arch["name"], arch["factor"], **{**kwargs, "img_size": img_size})
    return twin, img_size or twin.pretrained_cfg.get("input_size", (3, 224, 224))[-1]


def count_macs(model: nn.Module, fn) -> int:
    """Multiply-accumulates that ``fn()`` spends in ``model``'s convolutions, linear layers and attention matmuls.

    The one counter of the suite (hooks on the layers, so any layer shapes and any batch size): the two attention
    matmuls cost N * N * attn_dim each per image. Layer classes added by :func:`register_layer` count too.
    """
    convs, linears = _LAYERS[nn.Conv2d], _LAYERS[nn.Linear]
    total = 0

    def hook(mod, inputs, out):
        nonlocal total
        if isinstance(mod, convs):
            total += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, linears):
            total += out.numel() * mod.in_features
        else:  # timm attention: q @ k^T and attn @ v
            b, n = inputs[0].shape[:2]
            total += 2 * b * n * n * getattr(mod, "attn_dim", inputs[0].shape[2])

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (*convs, *linears)) or (hasattr(m, "qkv") and hasattr(m, "num_heads"))
    ]
    try:
        with torch.no_grad():
            fn()
    finally:
        for h in handles:
            h.remove()
    return int(total)


def forward_macs(model: nn.Module | str, img_size: int | None = None, **kwargs) -> int:
    """Multiply-accumulates of one forward pass of one image (conv, linear, attention matmuls)."""
    twin, size = _meta_twin(model, img_size, **kwargs)
    return count_macs(twin, lambda: twin.eval()(torch.empty(1, 3, size, size, device="meta")))


def model_forward_macs(model: nn.Module, img_size: int | None = None) -> int:
    """Forward MACs of one image counted on ``model`` itself (batch 1, eval mode, its device and dtype).

    Same rules as :func:`forward_macs`, but it needs no ``rbdc_arch``: use it for grown models whose widths no
    registered timm name describes. Attention matmuls are counted at the attention width ``attn_dim`` (= the
    embedding width for a stock ViT).
    """
    size = img_size or model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    p = next(model.parameters())
    was = model.training
    try:
        return count_macs(model, lambda: model.eval()(torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype)))
    finally:
        model.train(was)


def forward_flops(model: nn.Module | str, img_size: int | None = None, **kwargs) -> int:
    return 2 * forward_macs(model, img_size, **kwargs)


def train_flops_per_image(model: nn.Module | str, img_size: int | None = None, **kwargs) -> int:
    """Analytic training FLOPs per image: 3 x forward FLOPs."""
    return TRAIN_FLOPS_PER_FORWARD * forward_flops(model, img_size, **kwargs)


@contextmanager
def _unfused_attention(model: nn.Module):
    mods = [m for m in model.modules() if hasattr(m, "fused_attn")]
    saved = [m.fused_attn for m in mods]
    for m in mods:
        m.fused_attn = False
    try:
        yield
    finally:
        for m, s in zip(mods, saved):
            m.fused_attn = s


def measured_train_flops_per_image(
    model: nn.Module | str, img_size: int | None = None, batch: int = 2, **kwargs
) -> int:
    """Training FLOPs per image measured by ``FlopCounterMode`` over forward + backward (meta device)."""
    twin, size = _meta_twin(model, img_size, **kwargs)
    twin.train()
    x = torch.empty(batch, 3, size, size, device="meta")
    counter = FlopCounterMode(display=False)
    with _unfused_attention(twin), counter:
        twin(x).sum().backward()
    return counter.get_total_flops() // batch


@dataclass
class LedgerEntry:
    stage: str
    model: str
    images: int
    flops_per_image: int

    @property
    def train_flops(self) -> int:
        return self.images * self.flops_per_image


@dataclass
class Ledger:
    """Training FLOPs, stage by stage: every model trained (every narrow model too) adds its own entries."""

    entries: list[LedgerEntry] = field(default_factory=list)

    def add(self, stage: str, model: str, images: int, flops_per_image: int) -> LedgerEntry:
        entry = LedgerEntry(stage, model, int(images), int(flops_per_image))
        self.entries.append(entry)
        return entry

    @property
    def total(self) -> int:
        return sum(e.train_flops for e in self.entries)

    def by_stage(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for e in self.entries:  # a stage's model is its last entry's: a growth's own passes come before it
            s = out.setdefault(e.stage, {"model": e.model, "images": 0, "train_flops": 0})
            s["model"] = e.model
            s["images"] += e.images
            s["train_flops"] += e.train_flops
        return out

    def to_dict(self) -> dict:
        return {
            "total_train_flops": self.total,
            "stages": self.by_stage(),
            "entries": [asdict(e) for e in self.entries],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Ledger":
        return cls([LedgerEntry(**e) for e in d.get("entries", [])])

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_bytes(path, json.dumps(self.to_dict(), indent=1).encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Ledger":
        return cls.from_dict(json.loads(Path(path).read_text()))
