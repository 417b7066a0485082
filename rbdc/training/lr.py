"""The learning rate of every optimizer step: linear warm-up, then one cosine to ``min_lr``, then ``min_lr``.

The cosine's period is the stage's steps after its warm-up (``anneal_to_end: true``; ``false``: the stage's steps,
which ends warm-up steps short of ``min_lr``; older runs, see CHANGELOG.md). A schedule that continues
along a lineage (``rbdc.schedule: continue``, GradMax) is one schedule over the lineage's steps, each stage reading
it from its offset. The arithmetic is timm's ``CosineLRScheduler`` (``warmup_prefix=True``, one cycle) operation for
operation, so that runs keep their exact learning rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["LRSchedule"]


@dataclass(frozen=True)
class LRSchedule:
    lr: float  # the peak, reached at the end of the warm-up
    min_lr: float
    warmup_steps: int
    warmup_lr: float  # the rate of step 0 of a warm-up
    cosine_steps: int  # the cosine's period: it reaches min_lr at step warmup_steps + cosine_steps

    @classmethod
    def for_stage(cls, stage, recipe: dict) -> "LRSchedule":
        """The schedule of ``stage`` (:class:`rbdc.protocols.Stage`), in steps of its lineage."""
        total = stage.sched_total or stage.steps
        cosine = max(1, total - stage.warmup_steps) if recipe.anneal_to_end else total
        return cls(stage.lr, recipe.min_lr, stage.warmup_steps, recipe.warmup_lr, cosine)

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based, counted along the lineage)."""
        if step < self.warmup_steps:
            return self.warmup_lr + step * ((self.lr - self.warmup_lr) / self.warmup_steps)
        t = step - self.warmup_steps
        if t >= self.cosine_steps:
            return self.min_lr
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t / self.cosine_steps))
