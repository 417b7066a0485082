"""``mixturegrowth``: rbdc's level plan at depth 1 with two half-width template members, grown into the target."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from .base import BuildContext, Built, PlanData, Protocol, Stage, register
from .rbdc import level_plan


def _member(ctx: BuildContext, seed: int) -> nn.Module:
    from ..growth import mixture_member
    rec = ctx.recipe
    return mixture_member(rec["model"], 1, rec["growth"]["num_templates"], seed=seed, **ctx.timm_kwargs)


@register
class MixtureGrowth(Protocol):
    name = "mixturegrowth"
    sections = ("rbdc", "growth")
    color = "#9467bd"

    def plan(self, recipe: dict, data: PlanData) -> list[Stage]:
        return level_plan(recipe, data, 1, 2)

    def init(self, stage: Stage, ctx: BuildContext) -> nn.Module:
        return _member(ctx, stage.seed)

    def grow(self, stage: Stage, parents: list[Path], ctx: BuildContext) -> Built:
        from ..nets.checkpoint import load_weights
        from ..growth import mixture_grow
        g = ctx.recipe["growth"]
        parts = []
        for p, path in zip(stage.parents, parents):
            m = _member(ctx, ctx.stage(p).seed)
            m.load_state_dict(load_weights(path)[0])
            parts.append(m)
        model = mixture_grow(parts[0], parts[1], coefs=g["coefs"], noise=g["noise"], norm=ctx.recipe["rbdc"]["norm"],
                             seed=stage.seed)
        ctx.log(f"[{stage.id}] {', '.join(stage.parents)} -> {stage.model_name}: mixture_grow (coefs={g['coefs']}, "
                f"noise={g['noise']})")
        return Built(model)
