"""``rbdc``: recursion depth r and k. Level 0 holds k**r models of 1/k**r width trained independently (own seeds);
each level couples groups of k models of the level below (``rbdc.couple``) and trains on; level r is the target.

Epochs per level are given (``rbdc.epochs: [E0, ..., Er]``) or derived from a total ``budget`` and the **training
ratio** ``rbdc.ratio`` (the paper's definition is unknown, methods.md section 3), read as:

- ``ratio_type: epochs`` (default): E_l = ratio * E_{l+1} (narrow models train ratio x longer than their parent);
- ``ratio_type: flops``: FLOPs spent on level l = ratio * FLOPs spent on level l+1.

:func:`level_plan` is also the plan of the growth baselines that grow once from half width (net2net, mixturegrowth).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from .base import (
    BuildContext,
    Built,
    PlanData,
    Protocol,
    Stage,
    register,
    stage_name,
    stage_seed,
    target_fpi,
    whole_steps,
)
from .keys import NONNEG, NUM, POS, Range, key
from ..nets.checkpoint import load_model
from ..coupling import couple, couple_state

if TYPE_CHECKING:
    from ..recipe import Recipe


@dataclass
class RBDCKeys:
    """The ``rbdc:`` section: the RBDC protocol's keys; net2net, mixturegrowth and hypercloning plan their levels
    with them too (``Protocol.sections``)."""

    depth: int = key(1, (int,), Range(1), "recursive coupling steps")
    k: int = key(2, (int,), Range(2), "parts coupled per step")
    epochs: list | None = key(
        None,
        (list, None),
        None,
        "epochs per level [E0, ..., Er], level 0 the narrowest; default: from the budget and ratio",
        items=POS,
    )
    ratio: float = key(
        1.5,
        NUM,
        POS,
        "training ratio: E_l = ratio x E_(l+1) (ratio_type epochs) or FLOPs of level "
        "l = ratio x those of level l+1 (ratio_type flops)",
    )
    ratio_type: str = key("epochs", (str,), ("epochs", "flops"))
    head: str = key("mean", (str,), ("mean", "sum"), "how the coupled head combines the parts' logits")
    norm: str = key("plain", (str,), ("plain", "grouped"), "LayerNorm of the coupled model")
    offdiag_std: float = key(0.0, NUM, NONNEG, "init std of the off-diagonal blocks")
    optimizer: str = key("fresh", (str,), ("fresh", "carried"), "AdamW state after coupling")
    schedule: str = key("restart", (str,), ("restart", "continue"), "lr schedule after coupling")
    jobs: int = key(1, (int,), Range(1), "train a level's independent parts in this many processes")
    parts: str = key(
        "independent",
        (str,),
        ("independent", "copies"),
        "independent: k narrow models from their own "
        "seeds (RBDC); copies: one narrow model trained for all their steps, coupled with k-1 copies of "
        "itself (depth 1; the ablation beside HyperCloning)",
    )
    narrow_lr_scale: float = key(
        1.0, NUM, POS, "peak lr of level 0 (the independently trained narrow parts) as a multiple of the recipe's"
    )
    coupled_lr_scale: float = key(1.0, NUM, POS, "peak lr of the coupled levels 1..depth as a multiple of the recipe's")
    coupled_warmup_epochs: float | None = key(
        None, (*NUM, None), NONNEG, "warm-up of the coupled levels; default: warmup_epochs"
    )


def _level_steps(recipe: Recipe, data: PlanData, r: int, counts: list[int], fpis: list) -> list[int]:
    """Steps of each level 0..r: from ``rbdc.epochs``, or the budget split by the training ratio."""
    c = recipe.rbdc
    batch, budget, what = recipe.batch_size, data.budget, data.budget_text
    if c.epochs is not None:
        if len(c.epochs) != r + 1:
            raise UserError(f"rbdc.epochs needs {r + 1} entries (one per level 0..{r}), got {c.epochs}")
        level_steps = [data.steps_for(e) for e in c.epochs]
    elif budget is not None:
        weights = [c.ratio ** (r - lvl) for lvl in range(r + 1)]
        if c.ratio_type == "epochs":
            unit = budget / sum(w * n * f * batch for w, n, f in zip(weights, counts, fpis))
            level_steps = [whole_steps(w * unit, f"{what} (level {lvl})") for lvl, w in enumerate(weights)]
        elif c.ratio_type == "flops":
            per_level = [budget * w / sum(weights) for w in weights]
            level_steps = [
                whole_steps(b / (n * f * batch), f"{what} (level {lvl})")
                for lvl, (b, n, f) in enumerate(zip(per_level, counts, fpis))
            ]
        else:
            raise UserError(f"rbdc.ratio_type must be epochs or flops, got {c.ratio_type!r}")
        # the last level absorbs the rounding of the others, so the total lands within half a final step
        spent = sum(st * n * f * batch for st, n, f in zip(level_steps[:-1], counts, fpis))
        level_steps[-1] = whole_steps((budget - spent) / (counts[-1] * fpis[-1] * batch), f"{what} (level {r})")
    else:
        raise UserError("rbdc needs rbdc.epochs (one per level) or a `budget`/`match`")
    return level_steps


def level_plan(recipe: Recipe, data: PlanData, r: int, k: int, counts: list[int] | None = None) -> list[Stage]:
    """Levels 0..r of width 1/k**(r-l), ``counts[l]`` models each (default k**(r-l)); the models of level l grow from
    equal consecutive groups of level l-1."""
    if r < 1 or k < 2:
        raise UserError(f"rbdc needs depth >= 1 and k >= 2 (got depth={r}, k={k})")
    c = recipe.rbdc
    widths = [k ** (r - lvl) for lvl in range(r + 1)]  # width divisor per level
    counts = counts or widths
    fpis = [target_fpi(recipe, Fraction(1, w), data.num_classes) for w in widths]
    level_steps = _level_steps(recipe, data, r, counts, fpis)
    cont = c.schedule == "continue"
    if c.schedule not in ("restart", "continue"):
        raise UserError(f"rbdc.schedule must be restart or continue, got {c.schedule!r}")
    warm = data.warmup_steps
    coupled_warm = warm if c.coupled_warmup_epochs is None else round(c.coupled_warmup_epochs * data.steps_per_epoch)
    lrs = [data.lr * (c.narrow_lr_scale if lvl == 0 else c.coupled_lr_scale) for lvl in range(r + 1)]
    lineage = sum(level_steps)
    stages: list[Stage] = []
    ids: list[list[str]] = []
    for lvl, (n, f, st) in enumerate(zip(counts, fpis, level_steps)):
        factor = Fraction(1, widths[lvl])
        ids.append([f"L{lvl}" if n == 1 else f"L{lvl}.{i}" for i in range(n)])
        per = len(ids[lvl - 1]) // n if lvl else 0
        for i in range(n):
            stages.append(
                Stage(
                    ids[lvl][i],
                    stage_name(recipe.model, factor),
                    st,
                    stage_seed(recipe, lvl, i),
                    lrs[lvl],
                    level=lvl,
                    factor=factor,
                    parents=ids[lvl - 1][i * per : (i + 1) * per] if lvl else [],
                    flops_per_image=f,
                    sched_total=lineage if cont else None,
                    sched_offset=sum(level_steps[:lvl]) if cont else 0,
                    warmup_steps=(
                        min(warm, st // 2)
                        if lvl == 0
                        else min(coupled_warm, st // 2)
                        if not cont
                        else min(warm, level_steps[0] // 2)
                    ),
                )
            )
    return stages


def single_source_plan(recipe: Recipe, data: PlanData) -> list[Stage]:
    """RBDC depth 1's plan with its k narrow parts replaced by one narrow model trained for all their steps (the
    narrow phase's whole budget), then grown into the target: HyperCloning and RBDC's ``copies`` ablation spend
    exactly RBDC's FLOPs per level."""
    c = recipe.rbdc
    if c.depth != 1 or c.schedule != "restart":
        raise UserError(
            f"one narrow source (protocol {recipe.protocol}, rbdc.parts {c.parts}) is planned at "
            f"rbdc.depth 1 with rbdc.schedule restart, got depth {c.depth}, schedule {c.schedule}"
        )
    parts = level_plan(recipe, data, 1, c.k)
    narrow, target = [s for s in parts if s.level == 0], parts[-1]
    steps = sum(s.steps for s in narrow)
    source = replace(narrow[0], id="L0", steps=steps, warmup_steps=min(data.warmup_steps, steps // 2))
    return [source, replace(target, parents=["L0"])]


@register
class RBDC(Protocol):
    name = "rbdc"
    section, keys = "rbdc", RBDCKeys
    color = "#d62728"
    subject = True

    def plan(self, recipe: Recipe, data: PlanData) -> list[Stage]:
        if recipe.rbdc.parts == "copies":
            return single_source_plan(recipe, data)
        return level_plan(recipe, data, recipe.rbdc.depth, recipe.rbdc.k)

    def carries_optimizer(self, recipe: Recipe) -> bool:
        return recipe.rbdc.optimizer == "carried"

    def grow(self, stage: Stage, parents: list[Path], ctx: BuildContext) -> Built:
        c = ctx.recipe.rbdc
        parts = [load_model(p) for p in parents]
        if c.parts == "copies":  # the ablation: k copies of one trained model, coupled block-diagonally
            parts = [load_model(parents[0]) for _ in range(c.k)]
        model = couple(parts, head=c.head, norm=c.norm, offdiag_std=c.offdiag_std, seed=stage.seed)
        opt_state = None
        if self.carries_optimizer(ctx.recipe):
            opt_state = couple_state(parts, [ctx.optimizer_state(p) for p in stage.parents], model, head=c.head)
        ctx.log(
            f"[{stage.id}] {', '.join(stage.parents)} -> {stage.model_name}: coupled (head={c.head}, "
            f"norm={c.norm}, optimizer={c.optimizer})"
        )
        return Built(model, opt_state)
