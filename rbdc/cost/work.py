"""What a run's stages do, epoch by epoch, in images: the one description that the wall-time estimate
(``rbdc train --dry-run --estimate``, a study's cost plan) and the cost model's check against the committed runs
(``benchmarks/costmodel_check.py``) both price, so that they cannot disagree.

A stage (:class:`rbdc.protocols.Stage`) trains ``steps`` optimizer steps of ``batch_size`` images in epochs of
``train_size // batch_size`` steps (the engine's count, :class:`rbdc.training.engine._StageLoop`), and at the end of
epoch ``e`` evaluates the split a run evaluates on (the tuning holdout with ``data.holdout``, else val) when
``(e + 1) % eval_every == 0`` or it is the stage's last epoch, once more for the EMA model (``ema``), and once before
training a grown model (``Protocol.evaluates_growth``: the coupled model's top-1 at epoch -1).

The run's ``summary.csv`` ``wall_s`` times the training steps only (the loader's batches included): evaluation,
checkpoint writes and the GEMM probe are outside it. :func:`predict_stage` therefore gives the two parts apart.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from fractions import Fraction

from ..data.for_recipe import eval_size
from ..protocols import get
from .costmodel import CostModel, family, features

__all__ = ["StageWork", "evaluations", "stage_work", "recipe_work", "predict_stage"]


@dataclass(frozen=True)
class StageWork:
    """One stage's work: its model, the images it trains on and the images its evaluations read."""

    stage: str
    model_name: str
    factor: Fraction
    epochs: int  # epochs begun (the last may be partial)
    train_images: int
    evaluations: int  # passes over the evaluation split (the EMA model's and a grown model's included)
    eval_images: int  # evaluations x the split's images


def evaluations(epochs: int, eval_every: int, ema: bool, grown: bool) -> int:
    """Passes over the evaluation split of a stage of ``epochs`` epochs (the engine's rule, module docstring)."""
    if epochs < 1 or eval_every < 1:
        raise ValueError(f"a stage has at least one epoch and eval_every >= 1, got {epochs} and {eval_every}")
    at_epoch_ends = epochs // eval_every + (1 if epochs % eval_every else 0)
    return at_epoch_ends * (2 if ema else 1) + (1 if grown else 0)


def stage_work(recipe, stages: list, train_size: int, eval_size: int, evaluates_growth: bool = True) -> list[StageWork]:
    """The work of each of ``stages`` (:func:`rbdc.protocols.plan_stages` of ``recipe``) on ``train_size`` training
    images per epoch, evaluating ``eval_size`` images per pass (:func:`rbdc.data.for_recipe.eval_size`)."""
    per_epoch = train_size // recipe.batch_size
    if per_epoch < 1:
        raise ValueError(f"{train_size} training images make no step of batch {recipe.batch_size}")
    out = []
    for s in stages:
        epochs = -(-s.steps // per_epoch)
        n = evaluations(epochs, recipe.eval_every, recipe.ema, bool(s.parents) and evaluates_growth)
        out.append(
            StageWork(s.id, s.model_name, Fraction(s.factor), epochs, s.steps * recipe.batch_size, n, n * eval_size)
        )
    return out


def recipe_work(recipe, stages: list, train_size: int) -> list[StageWork]:
    """:func:`stage_work` with the evaluation split's size read the way the run reads it and the recipe's protocol's
    rule for grown models: what the estimate and the check both call."""
    return stage_work(recipe, stages, train_size, eval_size(recipe), get(recipe.protocol).evaluates_growth)


def predict_stage(model: CostModel, work: StageWork, name: str, recipe, **kwargs) -> dict | None:
    """Seconds of a stage by the cost model: ``train_s`` (its steps and the in-memory loader's batches, what the
    run's ``wall_s`` times) and ``eval_s`` (its evaluations, forwards only; None where the model has no forward fit),
    or None without a fit for the recipe's precision and the model's family. ``name``: the recipe's model, which the
    stage runs at ``work.factor`` of its width."""
    amp = recipe.amp if recipe.amp != "auto" else "fp32"
    fam, terms = _terms(name, recipe.img_size, recipe.batch_size, work.factor, json.dumps(kwargs, sort_keys=True))
    if not model.has(amp, fam):
        return None
    loader = model.data_s_per_image.get(str(recipe.img_size), 0.0) if recipe.data.in_memory else 0.0
    train = work.train_images * (model.seconds_per_image(terms, amp, fam) + loader)
    per_eval = model.eval_seconds_per_image(terms, amp, fam)
    return {"train_s": train, "eval_s": None if per_eval is None else work.eval_images * per_eval}


@functools.lru_cache(maxsize=256)
def _terms(name: str, img_size: int, batch: int, factor: Fraction, kwargs: str) -> tuple[str, dict]:
    """The model's family and cost-model terms (a meta model built once per model: a check prices ~200 stages)."""
    kw = json.loads(kwargs)
    return family(name, factor, **kw), features(name, img_size, batch, factor, **kw)
