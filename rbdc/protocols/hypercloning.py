"""``hypercloning``: one narrow model trained for the narrow phase's whole budget of RBDC depth 1 (all k parts'
steps), expanded symmetrically to the target width by HyperCloning (:func:`rbdc.growth.hypercloning.hyperclone`,
function-preserving), then trained on as RBDC's coupled stage is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .base import BuildContext, Built, PlanData, Protocol, Stage, register
from .keys import NUM, key
from .rbdc import single_source_plan
from ..nets.checkpoint import load_model
from ..growth.hypercloning import hyperclone

if TYPE_CHECKING:
    from ..recipe import Recipe


@dataclass
class HyperCloningKeys:
    """hypercloning's key in the ``growth:`` section (its plan: the ``rbdc:`` section's depth 1, k x the width)."""

    snr_db: float | None = key(
        None,
        (*NUM, None),
        None,
        "hypercloning: function-preserving noise at this "
        "signal-to-noise ratio in dB (null: none; the copies then stay identical)",
    )


@register
class HyperCloning(Protocol):
    name = "hypercloning"
    section, keys = "growth", HyperCloningKeys
    sections = ("rbdc",)
    color = "#8c564b"

    def plan(self, recipe: Recipe, data: PlanData) -> list[Stage]:
        return single_source_plan(recipe, data)

    def grow(self, stage: Stage, parents: list[Path], ctx: BuildContext) -> Built:
        k, snr = ctx.recipe.rbdc.k, ctx.recipe.growth.snr_db
        model = hyperclone(load_model(parents[0]), k, snr_db=snr, seed=stage.seed)
        ctx.log(f"[{stage.id}] {parents[0].parent.name} -> {stage.model_name}: hypercloned x{k} (snr_db={snr})")
        return Built(model)
