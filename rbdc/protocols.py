"""Training protocols as stage plans: what to train, from what, for how many steps, at which FLOPs.

* ``scratch``: the target for ``epochs``, or for a FLOPs ``budget`` (``match``: another run's total).
* ``net2net`` / ``mixturegrowth``: ``rbdc``'s plan at depth 1 (one / two half-width models, then grow).
* ``gradmax``: one lineage growing its inner widths during training (see :func:`_gradmax_stages`).
* ``rbdc``: recursion depth r and k: level 0 holds k**r models of 1/k**r width trained independently (own seeds);
  each level couples groups of k models of the level below (``rbdc.couple``) and trains on; level r is the target.
  Epochs per level are given (``rbdc.epochs: [E0, ..., Er]``) or derived from a total ``budget`` and the
  **training ratio** ``rbdc.ratio`` (the paper's definition is unknown, methods.md section 3), read as:

  - ``ratio_type: epochs`` (default): E_l = ratio * E_{l+1} (narrow models train ratio x longer than their parent);
  - ``ratio_type: flops``: FLOPs spent on level l = ratio * FLOPs spent on level l+1.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from .errors import UserError
from .flops import train_flops_per_image
from .models import scaled, widen_name
from .units import human_flops


@dataclass
class Stage:
    id: str
    level: int
    factor: Fraction
    model_name: str
    steps: int
    seed: int
    parents: list[str] = field(default_factory=list)
    flops_per_image: int = 0
    sched_total: int | None = None
    sched_offset: int = 0
    warmup_steps: int = 0
    extra_flops: int = 0   # spent building the stage's model (GradMax's gradient pass), not in its steps


_FPI_CACHE: dict[str, int] = {}


def _fpi(recipe: dict, factor: Fraction, num_classes: int) -> int:
    import torch
    key = json.dumps([recipe["model"], str(factor), num_classes, recipe["model_kwargs"], recipe["img_size"]],
                     sort_keys=True, default=str)
    if key not in _FPI_CACHE:  # a study plans hundreds of runs of a few models
        with torch.device("meta"):
            m = scaled(recipe["model"], factor, num_classes=num_classes, **recipe["model_kwargs"])
        _FPI_CACHE[key] = train_flops_per_image(m, recipe["img_size"])
    return _FPI_CACHE[key]


def _stage_seed(recipe: dict, level: int, index: int) -> int:
    """Seed of stage ``index`` of ``level``: runs of different seeds share no stage (a stride of 1, the rule before
    2026-11-23, made seed s's L0.1 the same model as seed s+1's L0.0)."""
    return recipe["seed"] * recipe["seed_stride"] + 1000 * level + index


def _name(target: str, factor: Fraction) -> str:
    return widen_name(target, factor) or (target if factor == 1 else f"{target}@{factor}")


def _whole_steps(steps: float, what: str) -> int:
    """``steps`` rounded; a plan of less than one optimizer step is refused (it would train one step silently)."""
    if round(steps) < 1:
        raise UserError(f"{what} buys {steps:.3g} optimizer steps, less than one; raise it or lower batch_size")
    return round(steps)


def matched_budget(run_dir: str | Path) -> float:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise UserError(f"--match {run_dir}: no results.json there; point it at a finished rbdc run directory")
    return float(json.loads(path.read_text())["total_train_flops"])


def plan_stages(recipe: dict, train_size: int, num_classes: int) -> list[Stage]:
    """The stages of the recipe's protocol, with steps derived from epochs or the FLOPs budget."""
    batch = recipe["batch_size"]
    steps_per_epoch = train_size // batch
    if steps_per_epoch < 1:
        raise UserError(f"batch_size {batch} exceeds the {train_size} training images; lower batch_size")
    warm = round(recipe["warmup_epochs"] * steps_per_epoch)
    seed = recipe["seed"]
    budget = recipe["budget"] if recipe["match"] is None else matched_budget(recipe["match"])
    if recipe["budget_epochs"] is not None and budget is None:
        budget = recipe["budget_epochs"] * steps_per_epoch * batch * _fpi(recipe, Fraction(1), num_classes)

    def steps_for(epochs: float) -> int:
        return _whole_steps(epochs * steps_per_epoch, f"{epochs:g} epochs of {steps_per_epoch} steps")

    what = f"the budget of {budget:.4g} FLOPs" if budget is not None else ""

    if recipe["protocol"] == "scratch":
        fpi = _fpi(recipe, Fraction(1), num_classes)
        if budget is not None:
            steps = _whole_steps(budget / (batch * fpi), what)
        elif recipe["epochs"]:
            steps = steps_for(recipe["epochs"])
        else:
            raise UserError("scratch needs `epochs`, `budget` (training FLOPs) or `match` (a run dir)")
        stages = [Stage("scratch", 0, Fraction(1), recipe["model"], steps, seed, flops_per_image=fpi,
                        warmup_steps=min(warm, steps // 2))]
    elif recipe["protocol"] == "diffusionblocks":
        # One step trains one of B blocks (~1/B of a full pass); the method's "epochs" are B x ours: equal
        # iterations per block. A FLOPs budget is met directly with the model's own per-image training FLOPs.
        from .diffusionblocks import build_model
        import torch
        with torch.device("meta"):
            dbm = build_model(recipe, num_classes)
        fpi = dbm.train_flops_per_image(recipe["img_size"])
        if budget is not None:
            steps = _whole_steps(budget / (batch * fpi), what)
        elif recipe["epochs"]:
            steps = steps_for(recipe["epochs"] * dbm.num_blocks)
        else:
            raise UserError("diffusionblocks needs `epochs` (x blocks, equal iterations per block), `budget` or "
                            "`match`")
        stages = [Stage("dblock", 0, Fraction(1), recipe["model"], steps, seed, flops_per_image=fpi,
                        warmup_steps=min(warm * dbm.num_blocks, steps // 2))]
    elif recipe["protocol"] == "gradmax":
        stages = _gradmax_stages(recipe, num_classes, budget, steps_for(recipe["epochs"]) if recipe["epochs"] else None,
                                 warm)
    else:
        r, k = recipe["rbdc"]["depth"], recipe["rbdc"]["k"]
        if recipe["protocol"] != "rbdc":  # growth baselines: half width -> target, from 1 or 2 models
            r, k = 1, 2
        if r < 1 or k < 2:
            raise UserError(f"rbdc needs depth >= 1 and k >= 2 (got depth={r}, k={k})")
        widths = [k ** (r - lvl) for lvl in range(r + 1)]  # width divisor per level
        counts = [1, 1] if recipe["protocol"] == "net2net" else widths
        fpis = [_fpi(recipe, Fraction(1, w), num_classes) for w in widths]
        epochs = recipe["rbdc"]["epochs"]
        if epochs is not None:
            if len(epochs) != r + 1:
                raise UserError(f"rbdc.epochs needs {r + 1} entries (one per level 0..{r}), got {epochs}")
            level_steps = [steps_for(e) for e in epochs]
        elif budget is not None:
            ratio = recipe["rbdc"]["ratio"]
            weights = [ratio ** (r - lvl) for lvl in range(r + 1)]
            if recipe["rbdc"]["ratio_type"] == "epochs":
                unit = budget / sum(w * c * f * batch for w, c, f in zip(weights, counts, fpis))
                level_steps = [_whole_steps(w * unit, f"{what} (level {lvl})") for lvl, w in enumerate(weights)]
            elif recipe["rbdc"]["ratio_type"] == "flops":
                per_level = [budget * w / sum(weights) for w in weights]
                level_steps = [_whole_steps(b / (c * f * batch), f"{what} (level {lvl})")
                               for lvl, (b, c, f) in enumerate(zip(per_level, counts, fpis))]
            else:
                raise UserError(f"rbdc.ratio_type must be epochs or flops, got {recipe['rbdc']['ratio_type']!r}")
            # the last level absorbs the rounding of the others, so the total lands within half a final step
            spent = sum(st * c * f * batch for st, c, f in zip(level_steps[:-1], counts, fpis))
            level_steps[-1] = _whole_steps((budget - spent) / (counts[-1] * fpis[-1] * batch), f"{what} (level {r})")
        else:
            raise UserError("rbdc needs rbdc.epochs (one per level) or a `budget`/`match`")
        cont = recipe["rbdc"]["schedule"] == "continue"
        if recipe["rbdc"]["schedule"] not in ("restart", "continue"):
            raise UserError(f"rbdc.schedule must be restart or continue, got {recipe['rbdc']['schedule']!r}")
        lineage = sum(level_steps)
        stages = []
        ids: list[list[str]] = []
        for lvl, (c, f, st) in enumerate(zip(counts, fpis, level_steps)):
            factor = Fraction(1, widths[lvl])
            offset = sum(level_steps[:lvl])
            ids.append([f"L{lvl}" if c == 1 else f"L{lvl}.{i}" for i in range(c)])
            for i in range(c):
                sid = ids[lvl][i]
                per = len(ids[lvl - 1]) // c if lvl else 0
                parents = ids[lvl - 1][i * per:(i + 1) * per] if lvl else []
                stages.append(Stage(
                    sid, lvl, factor, _name(recipe["model"], factor), st, _stage_seed(recipe, lvl, i), parents, f,
                    sched_total=lineage if cont else None, sched_offset=offset if cont else 0,
                    warmup_steps=min(warm, st // 2) if (lvl == 0 or not cont) else min(warm, level_steps[0] // 2)))
    return stages


def _gradmax_stages(recipe: dict, num_classes: int, budget: float | None, total: int | None,
                    warm: int) -> list[Stage]:
    """GradMax: one lineage that starts at ``start_factor`` x every inner width and grows ``grow_steps`` times, at
    evenly spaced points of ``grow_span`` (fractions of the training steps), to the target; one stage per width.

    One cosine schedule spans all stages (growneuron never restarts it). A FLOPs budget fixes the total steps:
    the narrower stages are cheaper, so GradMax gets more steps than scratch (growneuron's ``adjust_epochs``), and
    each growth's gradient pass (one forward and backward of a batch on the pre-growth model) is charged too.
    """
    from .growth import gradmax_model, gradmax_schedule, gradmax_widths
    import torch
    g = recipe["growth"]
    n, (first, last) = g["grow_steps"], g["grow_span"]
    if not (n >= 1 and 0 < first <= last < 1):
        raise UserError(f"gradmax needs growth.grow_steps >= 1 and 0 < grow_span[0] <= grow_span[1] < 1, got "
                        f"{n} and {g['grow_span']}")
    factors = [Fraction(g["start_factor"]).limit_denominator(4096)]
    try:
        factors += gradmax_schedule(factors[0], 1, n)
    except ValueError as e:
        raise UserError(f"growth.start_factor: {e}") from e
    kw = dict(num_classes=num_classes, **recipe["model_kwargs"])
    with torch.device("meta"):
        fpis = [gradmax_model(recipe["model"], gradmax_widths(recipe["model"], f, **kw), **kw)
                .train_flops_per_image(recipe["img_size"]) for f in factors]
    batch = recipe["batch_size"]
    grow_flops = [batch * f for f in fpis[:-1]]  # growth i runs on the model of stage i

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
        steps[-1] = _whole_steps((budget - spent) / (batch * fpis[-1]), f"the budget of {budget:.4g} FLOPs")
    elif total is not None:
        steps = lengths(total)
    else:
        raise UserError("gradmax needs `epochs` (total, all widths), `budget` or `match`")
    if min(steps) < 1:
        raise UserError(f"gradmax: {sum(steps)} steps cannot hold {n} growth steps spread over {g['grow_span']} of "
                        f"training with at least one step between them; lower growth.grow_steps or train longer")
    stages, offset = [], 0
    for i, (f, st, fpi) in enumerate(zip(factors, steps, fpis)):
        name = recipe["model"] if f == 1 else f"{recipe['model']}@inner{float(f):g}"
        stages.append(Stage(f"G{i}", i, f, name, st, _stage_seed(recipe, i, 0), [f"G{i - 1}"] if i else [], fpi,
                            sched_total=sum(steps), sched_offset=offset, warmup_steps=min(warm, sum(steps) // 2),
                            extra_flops=grow_flops[i - 1] if i else 0))
        offset += st
    return stages


def describe_plan(recipe: dict, stages: list[Stage], train_size: int, num_classes: int) -> str:
    batch = recipe["batch_size"]
    spe = train_size // batch
    flops = [s.steps * batch * s.flops_per_image + s.extra_flops for s in stages]
    total = sum(flops)
    lines = [f"{'stage':>8} {'model':>38} {'parents':>14} {'steps':>7} {'epochs':>7} {'GFLOPs/img':>10} "
             f"{'train FLOPs':>11}"]
    for s, f in zip(stages, flops):
        lines.append(f"{s.id:>8} {s.model_name:>38} {','.join(s.parents) or '-':>14} {s.steps:>7} "
                     f"{s.steps / spe:>7.2f} {s.flops_per_image / 1e9:>10.3f} {human_flops(f):>11}")
    lines.append(f"total training FLOPs: {human_flops(total)} ({total:.4e}) over {train_size:,} images/epoch, "
                 f"global batch {batch}")
    if recipe["epochs"] or recipe["budget_epochs"]:
        epochs = recipe["epochs"] or recipe["budget_epochs"]
        ref = _fpi(recipe, Fraction(1), num_classes) * round(epochs * spe) * batch
        lines.append(f"scratch {recipe['model']} for {epochs} epochs: {human_flops(ref)} -> this plan is "
                     f"{total / ref:.3f}x of it")
    return "\n".join(lines)
