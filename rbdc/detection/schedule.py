"""Shorter runs of a config's schedule: ``det-train --iters N`` and ``--epochs N``.

A shorter run by hand needs ``train_cfg.max_epochs`` and every scheduler's ``milestones``/``end`` changed together.
Here the epoch-based schedulers are rescaled to the new length, each point at the same fraction of training (24 epochs
with milestones [16, 22] -> 12 epochs with [8, 11]). Iteration-based ones (the warm-up) keep their length in
iterations, cut at the end of the run.
"""

from __future__ import annotations

from rbdc.errors import UserError

__all__ = ["shorten"]

EPOCH_KEYS = ("begin", "end", "T_max")  # scheduler fields counted in epochs when by_epoch


def _schedulers(cfg) -> list:
    sched = cfg.get("param_scheduler") or []
    return [sched] if isinstance(sched, dict) else list(sched)


def _rescale(sched, old: int, new: int, to_iters: bool) -> None:
    def at(epoch):
        return min(new, round(epoch * new / old))

    for key in EPOCH_KEYS:
        if key in sched and sched[key] is not None:
            sched[key] = at(sched[key])
    if sched.get("milestones") is not None:
        sched["milestones"] = sorted({max(1, at(m)) for m in sched["milestones"]})
    if to_iters:
        sched["by_epoch"] = False


def shorten(cfg, epochs: int | None = None, iters: int | None = None) -> None:
    """Fit ``cfg``'s epoch-based training into ``epochs`` epochs or ``iters`` iterations (in place).

    ``iters`` switches to MMEngine's ``IterBasedTrainLoop`` with validation and one checkpoint at the end; with
    ``epochs`` the loop validates and checkpoints at its last epoch as at every interval.
    """
    loop = cfg.get("train_cfg") or {}
    if loop.get("type", "EpochBasedTrainLoop") != "EpochBasedTrainLoop" or not loop.get("max_epochs"):
        raise UserError(
            f"--iters/--epochs rescale an epoch-based schedule; this config's train_cfg is {dict(loop)}: "
            f"change it with --cfg-options instead"
        )
    new = iters if iters is not None else epochs
    if new < 1:
        raise UserError(f"--{'iters' if iters is not None else 'epochs'} {new}: give a positive number")
    old = loop["max_epochs"]
    for sched in _schedulers(cfg):
        if sched.get("by_epoch", True):  # MMEngine's default
            _rescale(sched, old, new, to_iters=iters is not None)
        elif iters is not None:
            for key in ("begin", "end"):
                if sched.get(key) is not None:
                    sched[key] = min(sched[key], iters)
    if epochs is not None:  # MMEngine's loop validates and checkpoints at the last epoch whatever the intervals
        cfg.train_cfg.max_epochs = epochs
        return
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=iters)
    hooks = cfg.get("default_hooks") or {}
    if hooks.get("checkpoint"):
        hooks.checkpoint.by_epoch, hooks.checkpoint.interval = False, iters
    if hooks.get("logger"):
        hooks.logger.interval = min(hooks.logger.get("interval", 50), iters)
    cfg.log_processor = {**(cfg.get("log_processor") or {}), "by_epoch": False}
