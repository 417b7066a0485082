"""``diffusionblocks``: one stage training the blocks of :class:`rbdc.nets.diffusionblocks.DiffusionBlocksViT`.

One step trains one of B blocks (~1/B of a full pass); the method's "epochs" are B x ours: equal iterations per
block. A FLOPs budget is met directly with the model's own per-image training FLOPs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from ..errors import UserError
from .base import BuildContext, PlanData, Protocol, Stage, register, whole_steps
from .keys import key
from ..nets.diffusionblocks import build_model

if TYPE_CHECKING:
    from ..recipe import Recipe


@register
class DiffusionBlocks(Protocol):
    name = "diffusionblocks"
    # one free-form mapping: its options are checked by the model (rbdc.nets.diffusionblocks.OPTIONS) when it is built
    section = "diffusionblocks"
    keys = key({}, (dict,), None, "options of the diffusionblocks protocol (rbdc.nets.diffusionblocks)")
    color = "#ff7f0e"
    own_objective = True

    def plan(self, recipe: Recipe, data: PlanData) -> list[Stage]:
        with torch.device("meta"):
            dbm = build_model(recipe, data.num_classes)
        fpi = dbm.train_flops_per_image(recipe.img_size)
        if data.budget is not None:
            steps = whole_steps(data.budget / (recipe.batch_size * fpi), data.budget_text)
        elif recipe.epochs:
            steps = data.steps_for(recipe.epochs * dbm.num_blocks)
        else:
            raise UserError(
                "diffusionblocks needs `epochs` (x blocks, equal iterations per block), `budget` or `match`"
            )
        return [
            Stage(
                "dblock",
                recipe.model,
                steps,
                recipe.seed,
                data.lr,
                flops_per_image=fpi,
                warmup_steps=min(data.warmup_steps * dbm.num_blocks, steps // 2),
            )
        ]

    def init(self, stage: Stage, ctx: BuildContext) -> nn.Module:
        return self.target(ctx.recipe, ctx.num_classes)

    def target(self, recipe: Recipe, num_classes: int) -> nn.Module:
        return build_model(recipe, num_classes)

    def train_flops_per_image(self, model: nn.Module, img_size: int) -> int:
        return model.train_flops_per_image(img_size)

    def backbone(self, model: nn.Module) -> nn.Module:
        return model.trunk
