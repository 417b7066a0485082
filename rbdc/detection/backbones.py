"""RBDC (and standard) timm backbones for MMDetection: ``RBDCViT`` and ``RBDCResNet``.

Both wrap a timm model built by name (so ``rbdc_*`` narrow variants, coupled models and stock timm models all work)
with its classifier removed, held as ``self.trunk``: checkpoint keys are ``trunk.<timm key>``. Features come from
timm's ``forward_intermediates``, the supported way to tap a timm model for dense prediction.

Why a timm wrapper for ResNet rather than MMDetection's ``ResNet`` with converted keys: the RBDC backbone and its
standard-trained control must run the *same* code, and the narrow and test variants (non-64 stems, custom stage
widths) have no MMDetection ``ResNet`` equivalent. MMDetection's detection-specific ResNet behaviour (frozen stem and
first stage, BatchNorm kept in eval mode) is reproduced here with ``frozen_stages`` and ``norm_eval``.

Pretrained weights come through ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=None)``, but are loaded by
:func:`rbdc.detection.weights.load_backbone`: strictly, with a coverage summary in the log, and from an exported
``.pth``, an rbdc ``.safetensors`` or an rbdc run folder.
"""

from __future__ import annotations

from typing import Sequence

import timm
import torch
import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from mmdet.registry import MODELS
from timm.models import ResNet, VisionTransformer

import rbdc  # noqa: F401  (registers the rbdc_* and test_rbdc_* names with timm)
from rbdc.detection.checks import check_timm_model
from rbdc.detection.weights import load_backbone

__all__ = ["RBDCViT", "RBDCResNet"]


class _TimmBackbone(BaseModule):
    """Shared part: the trunk, freezing, and the strict pretrained load."""

    trunk: nn.Module

    def init_weights(self) -> None:
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get("type") == "Pretrained":
            if not cfg.get("checkpoint"):
                raise ValueError(
                    f"{type(self).__name__}: init_cfg type Pretrained has no checkpoint; set "
                    f"model.backbone.init_cfg.checkpoint (or init_cfg=None to train from scratch)"
                )
            load_backbone(
                self,
                cfg["checkpoint"],
                prefix=cfg.get("prefix"),
                strict=cfg.get("strict", True),
                log=MMLogger.get_current_instance(),
            )
            self._is_init = True  # tells MMEngine not to re-initialise what was loaded
            return
        super().init_weights()  # no Pretrained: timm's own initialisation (done at build) unless init_cfg says more

    @staticmethod
    def _freeze(module: nn.Module) -> None:
        for p in module.parameters():
            p.requires_grad_(False)


@MODELS.register_module()
class RBDCViT(_TimmBackbone):
    """A timm ViT/DeiT trunk as a detection backbone: patch-stride feature maps tapped from chosen blocks.

    Pair it with :class:`~rbdc.detection.neck.RBDCSimpleFPN`, which builds the 4-level pyramid (ViTDet, Li et al.
    2022, arXiv 2203.16527). The position embedding of the checkpoint's image size is resampled on the fly to each
    input's patch grid (timm ``dynamic_img_size``), so any input whose sides are multiples of the patch size works.

    Args:
        model_name: timm model name, e.g. ``deit_small_patch16_224`` or ``rbdc_deit_base_patch16_224_w2``.
        out_indices: blocks to tap (negative counts from the end). ``(-1,)`` taps the last block as in ViTDet; four
            indices feed one pyramid level each. Blocks after the last tap are not run and are frozen (their keys stay,
            so checkpoints still load strictly, and DDP sees no unused trainable parameter).
        norm: apply the trunk's final LayerNorm to the tapped features.
        img_size: the image size of the position embedding in the checkpoint (default: the model's).
        drop_path_rate: stochastic depth for fine-tuning.
        with_cp: gradient checkpointing through timm (saves memory at 1333x800).
        timm_kwargs: more ``timm.create_model`` arguments.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH, prefix=None)`` to load weights strictly.
    """

    def __init__(
        self,
        model_name: str,
        out_indices: Sequence[int] = (-1,),
        norm: bool = True,
        img_size: int | Sequence[int] | None = None,
        drop_path_rate: float = 0.1,
        with_cp: bool = False,
        timm_kwargs: dict | None = None,
        init_cfg: dict | None = None,
    ):
        super().__init__(init_cfg=init_cfg)
        kwargs = dict(timm_kwargs or {})
        if img_size is not None:
            kwargs["img_size"] = img_size
        check_timm_model(model_name, "RBDCViT")
        self.trunk = timm.create_model(
            model_name, pretrained=False, num_classes=0, dynamic_img_size=True, drop_path_rate=drop_path_rate, **kwargs
        )
        if not isinstance(self.trunk, VisionTransformer):
            raise ValueError(
                f"RBDCViT: {model_name} is a {type(self.trunk).__name__}, not a timm VisionTransformer; "
                f"use RBDCResNet for ResNets"
            )
        depth = len(self.trunk.blocks)
        idx = [i + depth if i < 0 else i for i in out_indices]
        if not idx or any(not 0 <= i < depth for i in idx) or idx != sorted(set(idx)):
            raise ValueError(
                f"RBDCViT: out_indices {tuple(out_indices)} must be increasing block indices of "
                f"{model_name}, which has {depth} blocks"
            )
        self.out_indices = idx
        self.norm = norm
        self.patch_size = tuple(self.trunk.patch_embed.patch_size)
        self.embed_dim = self.trunk.embed_dim
        for blk in self.trunk.blocks[idx[-1] + 1 :]:
            self._freeze(blk)
        for name in ("fc_norm", "head", "attn_pool") + (() if norm else ("norm",)):
            if isinstance(getattr(self.trunk, name, None), nn.Module):
                self._freeze(getattr(self.trunk, name))
        if with_cp:
            self.trunk.set_grad_checkpointing(True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h, w = x.shape[-2:]
        if h % self.patch_size[0] or w % self.patch_size[1]:
            raise ValueError(
                f"RBDCViT: input {h}x{w} is not a multiple of the patch size {self.patch_size}; set "
                f"data_preprocessor.pad_size_divisor to a multiple of it (32 for patch 16)"
            )
        feats = self.trunk.forward_intermediates(
            x, indices=self.out_indices, norm=self.norm, stop_early=True, output_fmt="NCHW", intermediates_only=True
        )
        return tuple(feats)


@MODELS.register_module()
class RBDCResNet(_TimmBackbone):
    """A timm ResNet trunk as a detection backbone (stage outputs at strides 4, 8, 16, 32), for a standard FPN.

    Args:
        model_name: timm model name, e.g. ``resnet50`` or ``rbdc_resnet50_w2``.
        out_indices: timm feature indices (0 = stem at stride 2, 1-4 = layer1-layer4).
        frozen_stages: freeze the stem and the first ``frozen_stages`` stages (-1: nothing, 0: stem), as MMDetection's
            ResNet; frozen parts also stay in eval mode.
        norm_eval: keep every BatchNorm in eval mode (running statistics of the pretrained model), as MMDetection's
            ResNet does for detection batch sizes.
        with_cp: gradient checkpointing through timm.
        timm_kwargs: more ``timm.create_model`` arguments.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH, prefix=None)`` to load weights strictly.
    """

    def __init__(
        self,
        model_name: str,
        out_indices: Sequence[int] = (1, 2, 3, 4),
        frozen_stages: int = 1,
        norm_eval: bool = True,
        drop_path_rate: float = 0.0,
        with_cp: bool = False,
        timm_kwargs: dict | None = None,
        init_cfg: dict | None = None,
    ):
        super().__init__(init_cfg=init_cfg)
        check_timm_model(model_name, "RBDCResNet")
        self.trunk = timm.create_model(
            model_name, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate, **(timm_kwargs or {})
        )
        if not isinstance(self.trunk, ResNet):
            raise ValueError(
                f"RBDCResNet: {model_name} is a {type(self.trunk).__name__}, not a timm ResNet; use RBDCViT for ViTs"
            )
        idx = list(out_indices)
        if not idx or any(not 0 <= i <= 4 for i in idx) or idx != sorted(set(idx)):
            raise ValueError(f"RBDCResNet: out_indices {tuple(out_indices)} must be increasing, in 0..4")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"RBDCResNet: frozen_stages={frozen_stages} must be in -1..4")
        self.out_indices = idx
        self.out_channels = [self.trunk.feature_info[i]["num_chs"] for i in idx]
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        for m in self._frozen_modules():
            self._freeze(m)
        for blk in (f"layer{i}" for i in range(max(idx) + 1, 5)):  # never run: frozen, keys kept
            self._freeze(getattr(self.trunk, blk))
        if with_cp:
            self.trunk.set_grad_checkpointing(True)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        stem = [self.trunk.conv1, self.trunk.bn1]
        return stem + [getattr(self.trunk, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def train(self, mode: bool = True) -> "RBDCResNet":
        super().train(mode)
        if mode:
            for m in self._frozen_modules():
                m.eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.trunk.forward_intermediates(
            x, indices=self.out_indices, stop_early=True, output_fmt="NCHW", intermediates_only=True
        )
        return tuple(feats)
