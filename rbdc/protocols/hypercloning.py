"""``hypercloning``: one narrow model trained for the narrow phase's whole budget of RBDC depth 1 (all k parts'
steps), expanded symmetrically to the target width by HyperCloning (:func:`rbdc.growth.hypercloning.hyperclone`,
function-preserving), then trained on as RBDC's coupled stage is."""
from __future__ import annotations

from pathlib import Path

from .base import BuildContext, Built, PlanData, Protocol, Stage, register
from .rbdc import single_source_plan


@register
class HyperCloning(Protocol):
    name = "hypercloning"
    sections = ("rbdc", "growth")
    color = "#8c564b"

    def plan(self, recipe: dict, data: PlanData) -> list[Stage]:
        return single_source_plan(recipe, data)

    def grow(self, stage: Stage, parents: list[Path], ctx: BuildContext) -> Built:
        from ..nets.checkpoint import load_model
        from ..growth.hypercloning import hyperclone
        k, snr = ctx.recipe["rbdc"]["k"], ctx.recipe["growth"]["snr_db"]
        model = hyperclone(load_model(parents[0]), k, snr_db=snr, seed=stage.seed)
        ctx.log(f"[{stage.id}] {parents[0].parent.name} -> {stage.model_name}: hypercloned x{k} (snr_db={snr})")
        return Built(model)
