"""What trains a model besides the model, built by :func:`build_training` from timm's pieces: the optimizer (timm's
factory, with RBDC's carried AdamW moments), the learning-rate schedule (:mod:`rbdc.training.lr`), EMA,
Mixup/CutMix and the soft-target / label-smoothing loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3

from ..protocols import Stage
from .lr import LRSchedule


def build_optimizer(model: nn.Module, recipe: dict, lr: float, device: torch.device):
    # timm's factory already excludes norms, biases and no_weight_decay() tokens (pos_embed, cls_token) from decay.
    fused = recipe.fused if recipe.fused is not None else device.type == "cuda"
    kwargs = {"fused": True} if fused and recipe.opt == "adamw" else {}
    return create_optimizer_v2(
        model, opt=recipe.opt, lr=lr, weight_decay=recipe.weight_decay, eps=recipe.opt_eps, **kwargs
    )


def build_mixup(recipe: dict, num_classes: int) -> Mixup | None:
    if recipe.mixup > 0 or recipe.cutmix > 0:
        return Mixup(
            mixup_alpha=recipe.mixup,
            cutmix_alpha=recipe.cutmix,
            prob=recipe.mixup_prob,
            switch_prob=recipe.mixup_switch_prob,
            label_smoothing=recipe.smoothing,
            num_classes=num_classes,
        )
    return None


def build_criterion(recipe: dict, mixup: bool) -> nn.Module:
    """The training loss: soft-target cross-entropy on mixed targets (which carry the label smoothing), else
    label-smoothing or plain cross-entropy."""
    if mixup:
        return SoftTargetCrossEntropy()
    if recipe.smoothing > 0:
        return LabelSmoothingCrossEntropy(recipe.smoothing)
    return nn.CrossEntropyLoss()


@dataclass
class TrainState:
    """What trains a stage's model besides the model: built by :func:`build_training`."""

    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    ema: ModelEmaV3 | None
    mixup: Mixup | None
    criterion: nn.Module


def build_training(
    model: nn.Module, recipe: dict, stage: Stage, device: torch.device, optimizer_state: dict | None = None
) -> TrainState:
    """The optimizer (with ``optimizer_state``: name-keyed per-parameter state, RBDC's carried AdamW moments), the
    learning-rate schedule, EMA, Mixup/CutMix and the loss of training ``model`` (on ``device``) for ``stage``."""
    opt = build_optimizer(model, recipe, stage.lr, device)
    if optimizer_state is not None:
        for name, p in model.named_parameters():
            if name in optimizer_state:
                opt.state[p] = {k: v.to(device) for k, v in optimizer_state[name].items()}
    ema = ModelEmaV3(model, decay=recipe.ema_decay) if recipe.ema else None
    mix = build_mixup(recipe, model.num_classes)
    return TrainState(opt, LRSchedule.for_stage(stage, recipe), ema, mix, build_criterion(recipe, mix is not None))
