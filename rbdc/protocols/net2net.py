"""``net2net``: rbdc's level plan at depth 1 with one half-width model, widened by Net2WiderNet."""
from __future__ import annotations

from pathlib import Path

from .base import BuildContext, Built, PlanData, Protocol, Stage, register
from .rbdc import level_plan


@register
class Net2Net(Protocol):
    name = "net2net"
    sections = ("rbdc", "growth")
    color = "#1f77b4"

    def plan(self, recipe: dict, data: PlanData) -> list[Stage]:
        return level_plan(recipe, data, 1, 2, counts=[1, 1])

    def grow(self, stage: Stage, parents: list[Path], ctx: BuildContext) -> Built:
        from ..nets.checkpoint import load_model
        from ..growth import net2wider
        g = ctx.recipe["growth"]
        model = net2wider(load_model(parents[0]), 2, mode=g["mode"], noise_std=g["noise_std"], seed=stage.seed)
        ctx.log(f"[{stage.id}] {', '.join(stage.parents)} -> {stage.model_name}: net2wider (mode={g['mode']}, "
                f"noise_std={g['noise_std']})")
        return Built(model)
