"""The learning rate per step (rbdc.training.lr.LRSchedule): warm-up, one cosine to min_lr, continued along a
lineage."""

import pytest
import torch
from timm.scheduler import CosineLRScheduler

from rbdc.training.lr import LRSchedule
from rbdc.protocols import Stage
from rbdc.recipe import DEFAULTS, Recipe

RECIPE = {"min_lr": 1e-5, "warmup_lr": 1e-6, "anneal_to_end": True}


def schedule(steps, warmup, sched_total=None, anneal_to_end=True, lr=2e-3):
    stage = Stage("s", "m", steps, seed=0, lr=lr, warmup_steps=warmup, sched_total=sched_total)
    return LRSchedule.for_stage(stage, Recipe.from_dict({**DEFAULTS, **RECIPE, "anneal_to_end": anneal_to_end}))


@pytest.mark.parametrize(
    "steps,warmup,total,anneal",
    [
        (40, 0, None, True),
        (40, 5, None, True),
        (7, 3, None, True),
        (40, 5, None, False),
        (30, 4, 90, True),
        (1, 0, None, True),
        (12, 6, 12, False),
    ],
)
def test_the_rate_of_every_step_equals_timms_cosine_scheduler_bit_for_bit(steps, warmup, total, anneal):
    """Runs made when timm's scheduler set the rate keep their exact rates (and so their weights)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    span = total or steps
    timm_sched = CosineLRScheduler(
        opt,
        t_initial=max(1, span - warmup) if anneal else span,
        lr_min=RECIPE["min_lr"],
        warmup_t=warmup,
        warmup_lr_init=RECIPE["warmup_lr"],
        warmup_prefix=True,
        t_in_epochs=False,
    )
    ours = schedule(steps, warmup, total, anneal)
    for t in range(span + 3):
        timm_sched.step_update(t)
        assert ours.lr_at(t) == opt.param_groups[0]["lr"], t


def test_warm_up_rises_linearly_to_the_peak_then_the_cosine_falls_to_min_lr_at_the_stage_end():
    s = schedule(40, 5)
    assert s.lr_at(0) == RECIPE["warmup_lr"] and s.lr_at(5) == 2e-3
    rates = [s.lr_at(t) for t in range(41)]
    assert rates[:6] == sorted(rates[:6]) and rates[5:] == sorted(rates[5:], reverse=True)
    assert rates[40] == RECIPE["min_lr"] and rates[39] < RECIPE["min_lr"] + 1e-5  # the last step anneals fully


def test_anneal_to_end_false_keeps_the_cosine_that_ended_warm_up_steps_short_of_min_lr():
    new, old = schedule(20, 10), schedule(20, 10, anneal_to_end=False)
    assert new.lr_at(20) == RECIPE["min_lr"] < old.lr_at(20) and new.lr_at(19) < old.lr_at(19) / 10
    assert old.lr_at(30) == RECIPE["min_lr"]  # its cosine ends at step 30, warm-up steps beyond the stage


def test_a_continued_schedule_is_one_cosine_along_the_lineage():
    first, second = schedule(30, 4, sched_total=60), schedule(30, 4, sched_total=60)
    lineage = [first.lr_at(t) for t in range(30)] + [second.lr_at(30 + t) for t in range(30)]
    assert lineage[4:] == sorted(lineage[4:], reverse=True) and lineage[30] < lineage[29]  # no second warm-up
    assert schedule(30, 4).lr_at(0) == RECIPE["warmup_lr"]  # a restarted one warms up again
