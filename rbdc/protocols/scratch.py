"""``scratch``: the target alone, for ``epochs`` or for a FLOPs ``budget`` (``match``: another run's total)."""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING

from ..errors import UserError
from .base import PlanData, Protocol, Stage, register, target_fpi, whole_steps

if TYPE_CHECKING:
    from ..recipe import Recipe


@register
class Scratch(Protocol):
    name = "scratch"
    color = "#4d4d4d"

    def plan(self, recipe: Recipe, data: PlanData) -> list[Stage]:
        fpi = target_fpi(recipe, Fraction(1), data.num_classes)
        if data.budget is not None:
            steps = whole_steps(data.budget / (recipe.batch_size * fpi), data.budget_text)
        elif recipe.epochs:
            steps = data.steps_for(recipe.epochs)
        else:
            raise UserError("scratch needs `epochs`, `budget` (training FLOPs) or `match` (a run dir)")
        return [
            Stage(
                "scratch",
                recipe.model,
                steps,
                recipe.seed,
                data.lr,
                flops_per_image=fpi,
                warmup_steps=min(data.warmup_steps, steps // 2),
            )
        ]
