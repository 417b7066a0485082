"""MACs of grown models counted by hooks (any widths, template layers); the FLOPs method GradMax's models carry."""
from __future__ import annotations

import types

import torch
import torch.nn as nn


def count_macs(model: nn.Module, img_size: int | None = None) -> int:
    """Forward MACs of one image, counted with hooks on the real ``model`` (any layer shapes, batch 1, eval mode).

    Same rules as :func:`rbdc.flops.forward_macs` (conv, linear, the two attention matmuls), but it needs no
    ``rbdc_arch``: use it for grown models whose widths no registered timm name describes. Attention matmuls are
    counted at the attention width ``attn_dim`` (= the embedding width for a stock ViT).
    """
    from .mixturegrowth import TemplateConv2d, TemplateLinear
    from ..flops import count_macs as flops_count_macs

    size = img_size or model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    p = next(model.parameters())
    was = model.training
    try:
        return flops_count_macs(model, lambda: model.eval()(torch.zeros(1, 3, size, size, device=p.device,
                                                                          dtype=p.dtype)),
                                conv_types=(TemplateConv2d,), linear_types=(TemplateLinear,))
    finally:
        model.train(was)


def _train_flops_per_image(self: nn.Module, img_size: int | None = None) -> int:
    from ..flops import TRAIN_FLOPS_PER_FORWARD

    return TRAIN_FLOPS_PER_FORWARD * 2 * count_macs(self, img_size)


def count_flops_by_hooks(model: nn.Module) -> nn.Module:
    """Give ``model`` a ``train_flops_per_image(img_size)`` method backed by :func:`count_macs` (in place).

    The training engine uses that method when a model has it, so models whose widths ``rbdc_arch`` cannot describe
    (GradMax's intermediate widths) are still counted right. It is a bound method, so ``copy.deepcopy`` rebinds it.
    """
    model.train_flops_per_image = types.MethodType(_train_flops_per_image, model)
    return model
