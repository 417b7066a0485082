"""``gradmax``: one lineage ``G0 ... Gn`` that starts at ``growth.start_factor`` x every inner width and grows
``growth.grow_steps`` times, at evenly spaced points of ``growth.grow_span`` (fractions of the training steps), to
the target; one stage per width, AdamW moments carried (new slots zero).

One cosine schedule spans all stages (growneuron never restarts it). A FLOPs budget fixes the total steps: the
narrower stages are cheaper, so GradMax gets more steps than scratch (growneuron's ``adjust_epochs``), and each
growth's gradient pass (one forward and backward of a batch on the pre-growth model) is charged too.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from ..errors import UserError
from .base import BuildContext, Built, PlanData, Protocol, Stage, register, stage_seed, whole_steps
from .keys import NUM, POS, UNIT, Range, key
from ..growth import gradmax_grow, gradmax_model, gradmax_schedule, gradmax_start, gradmax_widths, grow_named_state
from ..nets.checkpoint import load_model

if TYPE_CHECKING:
    from ..recipe import Recipe


@dataclass
class GradMaxKeys:
    """gradmax's keys in the ``growth:`` section (growneuron's CIFAR config: 0.25, 12, 10k..37.5k of 78k, 0.5)."""

    start_factor: float = key(0.25, NUM, Range(0, 1, False), "gradmax: starting fraction of the inner widths")
    grow_steps: int = key(12, (int,), Range(1), "gradmax")
    grow_span: list = key(
        [0.125, 0.5], (list,), None, "gradmax: [first, last] growth as fractions of the steps", items=UNIT
    )
    scale: float = key(0.5, NUM, POS, "gradmax: fan-out norm of new units relative to the existing ones")


def _factors(g: GradMaxKeys) -> list[Fraction]:
    """The inner-width factor of every stage: ``start_factor``, then one per growth step up to 1."""
    n, (first, last) = g.grow_steps, g.grow_span
    if not (n >= 1 and 0 < first <= last < 1):
        raise UserError(
            f"gradmax needs growth.grow_steps >= 1 and 0 < grow_span[0] <= grow_span[1] < 1, got {n} and {g.grow_span}"
        )
    factors = [Fraction(g.start_factor).limit_denominator(4096)]
    try:
        factors += gradmax_schedule(factors[0], 1, n)
    except ValueError as e:
        raise UserError(f"growth.start_factor: {e}") from e
    return factors


def _stage_steps(
    g: GradMaxKeys, batch: int, fpis: list, grow_flops: list, budget: float | None, total: int | None
) -> list[int]:
    """Steps of every stage: ``total`` split at the growth points, or the most that ``budget`` FLOPs pay for."""
    n, (first, last) = g.grow_steps, g.grow_span

    def lengths(t: int) -> list[int]:
        marks = [round(t * (first + (last - first) * i / max(n - 1, 1))) for i in range(n)]
        return [b - a for a, b in zip([0] + marks, marks + [t])]

    def cost(t: int) -> float:
        return sum(st * batch * f for st, f in zip(lengths(t), fpis)) + sum(grow_flops)

    if budget is not None:
        lo, hi = 1, max(2, round(budget / (batch * fpis[-1])))
        while cost(hi) < budget:
            hi *= 2
        while hi - lo > 1:  # the largest total whose plan stays within the budget
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid)
        steps = lengths(lo)
        spent = cost(lo) - steps[-1] * batch * fpis[-1]
        # the last stage absorbs the rounding
        steps[-1] = whole_steps((budget - spent) / (batch * fpis[-1]), f"the budget of {budget:.4g} FLOPs")
    elif total is not None:
        steps = lengths(total)
    else:
        raise UserError("gradmax needs `epochs` (total, all widths), `budget` or `match`")
    if min(steps) < 1:
        raise UserError(
            f"gradmax: {sum(steps)} steps cannot hold {n} growth steps spread over {g.grow_span} "
            f"of training with at least one step between them; lower growth.grow_steps or train "
            f"longer"
        )
    return steps


@register
class GradMax(Protocol):
    name = "gradmax"
    section, keys = "growth", GradMaxKeys
    color = "#2ca02c"
    evaluates_growth = False  # its growth is exact by construction, and too frequent for an evaluation each time

    def plan(self, recipe: Recipe, data: PlanData) -> list[Stage]:
        total = data.steps_for(recipe.epochs) if recipe.epochs else None
        factors = _factors(recipe.growth)
        kw = dict(num_classes=data.num_classes, **recipe.model_kwargs)
        with torch.device("meta"):
            fpis = [
                gradmax_model(recipe.model, gradmax_widths(recipe.model, f, **kw), **kw).train_flops_per_image(
                    recipe.img_size
                )
                for f in factors
            ]
        grow_flops = [recipe.batch_size * f for f in fpis[:-1]]  # growth i runs on the model of stage i
        steps = _stage_steps(recipe.growth, recipe.batch_size, fpis, grow_flops, data.budget, total)
        stages, offset = [], 0
        for i, (f, st, fpi) in enumerate(zip(factors, steps, fpis)):
            name = recipe.model if f == 1 else f"{recipe.model}@inner{float(f):g}"
            stages.append(
                Stage(
                    f"G{i}",
                    name,
                    st,
                    stage_seed(recipe, i, 0),
                    data.lr,
                    level=i,
                    factor=f,
                    parents=[f"G{i - 1}"] if i else [],
                    flops_per_image=fpi,
                    sched_total=sum(steps),
                    sched_offset=offset,
                    warmup_steps=min(data.warmup_steps, sum(steps) // 2),
                    extra_flops=grow_flops[i - 1] if i else 0,
                )
            )
            offset += st
        return stages

    def carries_optimizer(self, recipe: Recipe) -> bool:
        return True

    def init(self, stage: Stage, ctx: BuildContext) -> nn.Module:
        return gradmax_start(ctx.recipe.model, stage.factor, **ctx.timm_kwargs)

    def grow(self, stage: Stage, parents: list[Path], ctx: BuildContext) -> Built:
        """Grow the parent stage's model to this stage's widths with GradMax: the gradient of plain cross-entropy
        (no mixup) on the first batch of this stage's loader, one per process, in training mode."""
        g, name = ctx.recipe.growth, ctx.recipe.model
        parent = ctx.stage(stage.parents[0])
        old = load_model(parents[0])  # its metadata holds the inner widths
        old.to(ctx.device).train()
        ctx.train_loader.set_epoch(0)
        batch = next(iter(ctx.train_loader))
        # under DDP every rank grows the same units from the global batch's matrix
        reduce = (lambda m: (torch.distributed.all_reduce(m), m)[1]) if ctx.world > 1 else None
        cuda = [ctx.device.index or 0] if ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(stage.seed)  # the gradient pass's drop-path masks: the same again on a resume
            model, info = gradmax_grow(
                old,
                batch,
                widths=gradmax_widths(name, stage.factor, **ctx.timm_kwargs),
                scale=g.scale,
                seed=stage.seed,
                reduce=reduce,
            )
        named = ctx.optimizer_state(parent.id)
        ctx.log(
            f"[{stage.id}] {parent.id} -> {stage.model_name}: GradMax, +{sum(info['n_new'].values())} units in "
            f"{len(info['n_new'])} spaces (scale {g.scale}, {info['random_units']} random directions), "
            f"optimizer state carried"
        )
        cost = (f"{parent.model_name} (GradMax gradient pass)", info["images"] * ctx.world, parent.flops_per_image)
        return Built(model, grow_named_state(named, old, info["mapping"]), cost)

    def train_flops_per_image(self, model: nn.Module, img_size: int) -> int:
        return model.train_flops_per_image(img_size)  # GradMax's models count their (growable) layers by hooks
