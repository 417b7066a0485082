"""``RBDCSimpleFPN``: the simple feature pyramid of ViTDet for single-scale (ViT) backbones.

Li, Mao, Girshick, He, "Exploring Plain Vision Transformer Backbones for Object Detection", ECCV 2022
(arXiv 2203.16527): a plain ViT's stride-16 map is deconvolved to strides 4 and 8 and max-pooled to 32; each level gets
a 1x1 lateral and a 3x3 output conv with LayerNorm, with no top-down path. This follows MMDetection's
``projects/ViTDet`` ``SimpleFPN`` (Apache-2.0), generalised to any input stride (patch 8 or 16) and to one tap per
level.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmdet.registry import MODELS
from timm.layers import LayerNorm2d

__all__ = ["RBDCSimpleFPN"]


def _rescale(channels: int, factor: float) -> tuple[nn.Module, int]:
    """Module taking a map to ``factor`` x its resolution (2**n up by deconvs, 2**-n down by max-pool)."""
    steps = round(math.log2(factor))
    if 2.0**steps != factor:
        raise ValueError(f"RBDCSimpleFPN: scale factor {factor} is not a power of 2; choose strides that are")
    if steps <= 0:
        return (nn.Identity() if steps == 0 else nn.MaxPool2d(2**-steps, 2**-steps)), channels
    layers, c = [], channels
    for i in range(steps):
        if i:
            layers += [LayerNorm2d(c), nn.GELU()]
        layers.append(nn.ConvTranspose2d(c, c // 2, 2, 2))
        c //= 2
    return nn.Sequential(*layers), c


class _ConvLN(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int):
        super().__init__(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), LayerNorm2d(cout))


@MODELS.register_module()
class RBDCSimpleFPN(BaseModule):
    """Pyramid at ``strides`` from one (ViTDet) or one-per-level tapped ViT feature map(s).

    Args:
        in_channels: channels of the backbone's maps (the ViT width).
        out_channels: channels of every pyramid level.
        in_stride: stride of the backbone's maps (the patch size).
        strides: output strides; Mask R-CNN's heads expect (4, 8, 16, 32).
        num_outs: levels returned; extra ones are stride-2 max-pools of the last (Mask R-CNN's RPN uses 5).
        init_cfg: MMEngine init config.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        in_stride: int = 16,
        strides: Sequence[int] = (4, 8, 16, 32),
        num_outs: int = 5,
        init_cfg: dict | None = None,
    ):
        super().__init__(init_cfg=init_cfg)
        if num_outs < len(strides):
            raise ValueError(f"RBDCSimpleFPN: num_outs={num_outs} is fewer than the {len(strides)} strides")
        self.in_channels = in_channels
        self.num_levels = len(strides)
        self.num_outs = num_outs
        self.rescale, self.lateral, self.output = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for s in strides:
            mod, c = _rescale(in_channels, in_stride / s)
            self.rescale.append(mod)
            self.lateral.append(_ConvLN(c, out_channels, 1))
            self.output.append(_ConvLN(out_channels, out_channels, 3))

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if len(inputs) not in (1, self.num_levels):
            raise ValueError(
                f"RBDCSimpleFPN: got {len(inputs)} feature maps; give 1 (ViTDet) or one per level "
                f"({self.num_levels}) via the backbone's out_indices"
            )
        if inputs[0].shape[1] != self.in_channels:
            raise ValueError(
                f"RBDCSimpleFPN: maps have {inputs[0].shape[1]} channels, in_channels is "
                f"{self.in_channels}; set neck.in_channels to the backbone width"
            )
        maps = inputs if len(inputs) == self.num_levels else [inputs[0]] * self.num_levels
        outs = [out(lat(rs(x))) for x, rs, lat, out in zip(maps, self.rescale, self.lateral, self.output)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return tuple(outs)
