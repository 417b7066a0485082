"""``mixturegrowth``: rbdc's level plan at depth 1 with two half-width template members, grown into the target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch.nn as nn

from .base import BuildContext, Built, PlanData, Protocol, Stage, register
from .keys import NONNEG, NUM, Range, key
from .rbdc import level_plan
from ..growth import mixture_grow, mixture_member
from ..nets.checkpoint import load_weights

if TYPE_CHECKING:
    from ..recipe import Recipe


@dataclass
class MixtureGrowthKeys:
    """mixturegrowth's keys in the ``growth:`` section (its levels: the ``rbdc:`` section's, at depth 1)."""

    coefs: str = key("orthogonal", (str,), None, "mixturegrowth: template coefficients")
    noise: float = key(1.0, NUM, NONNEG, "mixturegrowth")
    num_templates: int = key(2, (int,), Range(1), "mixturegrowth")
    norm: str = key(
        "plain",
        (str,),
        ("plain", "grouped"),
        "mixturegrowth: LayerNorm of the grown model (a recipe "
        "that sets rbdc.norm and not this: rbdc.norm's value, as before this key existed)",
    )


def _member(ctx: BuildContext, seed: int) -> nn.Module:
    rec = ctx.recipe
    return mixture_member(rec.model, 1, rec.growth.num_templates, seed=seed, **ctx.timm_kwargs)


@register
class MixtureGrowth(Protocol):
    name = "mixturegrowth"
    section, keys = "growth", MixtureGrowthKeys
    sections = ("rbdc",)
    color = "#9467bd"

    def upgrade(self, raw: dict, recipe: dict) -> None:
        """Before growth.norm existed, mixturegrowth read rbdc.norm: a recipe (or an older run's recipe.yaml)
        that sets rbdc.norm and not growth.norm keeps that meaning."""
        growth, levels = raw.get("growth"), raw.get("rbdc")
        if isinstance(levels, dict) and "norm" in levels and not (isinstance(growth, dict) and "norm" in growth):
            recipe["growth"]["norm"] = levels["norm"]

    def plan(self, recipe: Recipe, data: PlanData) -> list[Stage]:
        return level_plan(recipe, data, 1, 2)

    def init(self, stage: Stage, ctx: BuildContext) -> nn.Module:
        return _member(ctx, stage.seed)

    def grow(self, stage: Stage, parents: list[Path], ctx: BuildContext) -> Built:
        g = ctx.recipe.growth
        parts = []
        for p, path in zip(stage.parents, parents):
            m = _member(ctx, ctx.stage(p).seed)
            m.load_state_dict(load_weights(path)[0])
            parts.append(m)
        model = mixture_grow(parts[0], parts[1], coefs=g.coefs, noise=g.noise, norm=g.norm, seed=stage.seed)
        ctx.log(
            f"[{stage.id}] {', '.join(stage.parents)} -> {stage.model_name}: mixture_grow (coefs={g.coefs}, "
            f"noise={g.noise})"
        )
        return Built(model)
