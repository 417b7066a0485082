"""``net2net``: rbdc's level plan at depth 1 with one half-width model, widened by Net2WiderNet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .base import BuildContext, Built, PlanData, Protocol, Stage, register
from .keys import NONNEG, NUM, key
from .rbdc import level_plan
from ..nets.checkpoint import load_model
from ..growth import net2wider

if TYPE_CHECKING:
    from ..recipe import Recipe


@dataclass
class Net2NetKeys:
    """net2net's keys in the ``growth:`` section (its levels: the ``rbdc:`` section's, at depth 1)."""

    mode: str = key("uniform", (str,), None, "net2net: how new units copy old ones")
    noise_std: float = key(0.01, NUM, NONNEG, "net2net: symmetry-breaking noise")


@register
class Net2Net(Protocol):
    name = "net2net"
    section, keys = "growth", Net2NetKeys
    sections = ("rbdc",)
    color = "#1f77b4"

    def plan(self, recipe: Recipe, data: PlanData) -> list[Stage]:
        return level_plan(recipe, data, 1, 2, counts=[1, 1])

    def grow(self, stage: Stage, parents: list[Path], ctx: BuildContext) -> Built:
        g = ctx.recipe.growth
        model = net2wider(load_model(parents[0]), 2, mode=g.mode, noise_std=g.noise_std, seed=stage.seed)
        ctx.log(
            f"[{stage.id}] {', '.join(stage.parents)} -> {stage.model_name}: net2wider (mode={g.mode}, "
            f"noise_std={g.noise_std})"
        )
        return Built(model)
