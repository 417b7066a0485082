"""A recipe's stages: the budget the recipe asks for, handed to its protocol's plan; the plan as a table."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from ..runs import rundir
from ..errors import UserError
from ..units import human_flops
from .base import PlanData, Stage, get, target_fpi

if TYPE_CHECKING:
    from ..recipe import Recipe

__all__ = ["plan_stages", "describe_plan", "matched_budget", "lr_for"]


def lr_for(recipe: Recipe) -> float:
    """The peak learning rate: ``lr_base`` scaled to the global batch (DeiT's rule)."""
    return recipe.lr_base * recipe.batch_size / 512


def matched_budget(run_dir: str | Path) -> float:
    path = Path(run_dir) / rundir.RESULTS
    if not path.is_file():
        raise UserError(f"--match {run_dir}: no {rundir.RESULTS} there; point it at a finished rbdc run directory")
    return float(json.loads(path.read_text())["total_train_flops"])


def plan_stages(recipe: Recipe, train_size: int, num_classes: int) -> list[Stage]:
    """The stages of the recipe's protocol, with steps derived from epochs or the FLOPs budget."""
    batch = recipe.batch_size
    steps_per_epoch = train_size // batch
    if steps_per_epoch < 1:
        raise UserError(f"batch_size {batch} exceeds the {train_size} training images; lower batch_size")
    budget = recipe.budget if recipe.match is None else matched_budget(recipe.match)
    if recipe.budget_epochs is not None and budget is None:
        budget = recipe.budget_epochs * steps_per_epoch * batch * target_fpi(recipe, Fraction(1), num_classes)
    data = PlanData(
        train_size, num_classes, steps_per_epoch, round(recipe.warmup_epochs * steps_per_epoch), lr_for(recipe), budget
    )
    return get(recipe.protocol).plan(recipe, data)


def stage_flops(stages: list[Stage], batch: int) -> list[int]:
    """Training FLOPs each stage spends: its steps of ``batch`` images, plus what building it cost."""
    return [s.steps * batch * s.flops_per_image + s.extra_flops for s in stages]


def describe_plan(recipe: Recipe, stages: list[Stage], train_size: int, num_classes: int) -> str:
    batch = recipe.batch_size
    spe = train_size // batch
    flops = stage_flops(stages, batch)
    total = sum(flops)
    lines = [
        f"{'stage':>8} {'model':>38} {'parents':>14} {'steps':>7} {'epochs':>7} {'GFLOPs/img':>10} {'train FLOPs':>11}"
    ]
    for s, f in zip(stages, flops):
        lines.append(
            f"{s.id:>8} {s.model_name:>38} {','.join(s.parents) or '-':>14} {s.steps:>7} "
            f"{s.steps / spe:>7.2f} {s.flops_per_image / 1e9:>10.3f} {human_flops(f):>11}"
        )
    lines.append(
        f"total training FLOPs: {human_flops(total)} ({total:.4e}) over {train_size:,} images/epoch, "
        f"global batch {batch}"
    )
    if recipe.epochs or recipe.budget_epochs:
        epochs = recipe.epochs or recipe.budget_epochs
        ref = target_fpi(recipe, Fraction(1), num_classes) * round(epochs * spe) * batch
        lines.append(
            f"scratch {recipe.model} for {epochs} epochs: {human_flops(ref)} -> this plan is {total / ref:.3f}x of it"
        )
    return "\n".join(lines)
