"""The training engine: one model, one stage, a fixed number of optimizer steps, resumable at epoch boundaries.

Built on timm's pieces (optimizer factory, Mixup/CutMix, soft-target / label-smoothing losses, EMA), put together by
:func:`build_training`; the learning rate of each step is :mod:`rbdc.lr`'s; DeiT recipe defaults live in
:mod:`rbdc.recipe`. Stages are step-based so that a FLOPs budget is met to
within one optimizer step; an epoch is one pass of the (drop-last) loader, and the last epoch of a stage may be
partial. The global batch is fixed: gradient accumulation makes up what does not fit one process.
"""
from __future__ import annotations

import os
import random
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3, accuracy
from tqdm import tqdm

from timm.models import ResNet

from . import bf16, preempt
from .errors import RunFailed
from .flops import Ledger
from .lr import LRSchedule
from .perf import mfu_fields
from .protocols import Stage, get as get_protocol, lr_for

__all__ = ["Dist", "Stage", "TrainState", "build_training", "build_criterion", "build_mixup", "build_optimizer",
           "Diverged", "train_stage", "train_step", "evaluate", "autocast_for", "peak_mem_mb", "lr_for"]


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def init(cls) -> "Dist":
        """Join the process group that torchrun describes (RANK/WORLD_SIZE/LOCAL_RANK); single process otherwise."""
        world = int(os.environ.get("WORLD_SIZE", 1))
        if world == 1:
            return cls()
        _die_with_launcher()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        local = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
        return cls(dist.get_rank(), dist.get_world_size(), local)


class Diverged(RunFailed):
    """The training loss went non-finite: AdamW then writes NaN into every weight, so no later step recovers."""

    def __init__(self, stage: str, step: int, loss: float):
        super().__init__(f"stage {stage} diverged: training loss {loss} at step {step}; lower lr_base or set "
                         f"clip_grad (e.g. --set clip_grad=1.0), as a new run (another --name or --output)",
                         stage=stage, step=step, diverged=True)


def autocast_for(recipe: dict, device: torch.device):
    amp = recipe["amp"]
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "fp32"
    if amp == "bf16":
        if bf16.needed(device):
            bf16.install()
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def set_attention_path(model: nn.Module, recipe: dict) -> nn.Module:
    """Pick the attention kernel of every timm attention module (``recipe["fused_attn"]``; None keeps timm's)."""
    if recipe["fused_attn"] is not None:
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = bool(recipe["fused_attn"])
    return model


def peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def reset_peak_mem(device: torch.device) -> None:
    """Start a new high-water mark, so peak memory is per stage and not the whole process's history."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 to clear_refs resets the peak RSS that getrusage reports
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _die_with_launcher() -> None:
    """Under torchrun every trainer runs in a session of its own (torch.distributed.elastic starts it with
    start_new_session=True): have the kernel SIGKILL it when its launcher dies, so that kill -9 of the launcher's
    process group (a study's, a shell job's) cannot leave trainers writing into the run directory (Linux only)."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import ctypes
    import signal
    if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
        return
    if os.getppid() == 1:  # the launcher died before the request took effect
        os._exit(1)


def _rng_states(d: "Dist") -> dict:
    """The checkpoint's RNG fields: this rank's states ("rng", what a 1-process run reads) and, when distributed,
    every rank's ("rng_by_rank"), so that each rank resumes its own streams (drop-path, Mixup/CutMix)."""
    mine = _rng_state()
    if d.world == 1:
        return {"rng": mine}
    every = [None] * d.world
    dist.all_gather_object(every, mine)
    return {"rng": mine, "rng_by_rank": every}


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate(model: nn.Module, loader, recipe: dict, device: torch.device, d: Dist = Dist(),
             channels_last: bool = False) -> dict:
    set_attention_path(model, recipe).eval()
    tot = torch.zeros(3, device=device)  # loss sum, top1 count, top5 count: stay on the device until the end
    n = 0
    crit = nn.CrossEntropyLoss(reduction="sum")
    with autocast_for(recipe, device):
        for x, y in loader:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = model(x).float()
            top1, top5 = accuracy(out, y, topk=(1, min(5, out.shape[-1])))
            tot += torch.stack([crit(out, y), top1 * y.numel() / 100, top5 * y.numel() / 100])
            n += y.numel()
    tot = torch.cat([tot, torch.tensor([float(n)], device=device)])
    if d.world > 1:
        dist.all_reduce(tot)
    loss, c1, c5, n = tot.tolist()
    return {"eval_loss": loss / max(n, 1), "eval_top1": 100 * c1 / max(n, 1), "eval_top5": 100 * c5 / max(n, 1)}


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=not (enabled and sys.stderr.isatty()))


def build_optimizer(model: nn.Module, recipe: dict, lr: float, device: torch.device):
    # timm's factory already excludes norms, biases and no_weight_decay() tokens (pos_embed, cls_token) from decay.
    fused = recipe["fused"] if recipe["fused"] is not None else device.type == "cuda"
    kwargs = {"fused": True} if fused and recipe["opt"] == "adamw" else {}
    return create_optimizer_v2(model, opt=recipe["opt"], lr=lr, weight_decay=recipe["weight_decay"],
                               eps=recipe["opt_eps"], **kwargs)


def build_mixup(recipe: dict, num_classes: int) -> Mixup | None:
    if recipe["mixup"] > 0 or recipe["cutmix"] > 0:
        return Mixup(mixup_alpha=recipe["mixup"], cutmix_alpha=recipe["cutmix"], prob=recipe["mixup_prob"],
                     switch_prob=recipe["mixup_switch_prob"], label_smoothing=recipe["smoothing"],
                     num_classes=num_classes)
    return None


def build_criterion(recipe: dict, mixup: bool) -> nn.Module:
    """The training loss: soft-target cross-entropy on mixed targets (which carry the label smoothing), else
    label-smoothing or plain cross-entropy."""
    if mixup:
        return SoftTargetCrossEntropy()
    if recipe["smoothing"] > 0:
        return LabelSmoothingCrossEntropy(recipe["smoothing"])
    return nn.CrossEntropyLoss()


@dataclass
class TrainState:
    """What trains a stage's model besides the model: built by :func:`build_training`."""

    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    ema: ModelEmaV3 | None
    mixup: Mixup | None
    criterion: nn.Module


def build_training(model: nn.Module, recipe: dict, stage: Stage, device: torch.device,
                   optimizer_state: dict | None = None) -> TrainState:
    """The optimizer (with ``optimizer_state``: name-keyed per-parameter state, RBDC's carried AdamW moments), the
    learning-rate schedule, EMA, Mixup/CutMix and the loss of training ``model`` (on ``device``) for ``stage``."""
    opt = build_optimizer(model, recipe, stage.lr, device)
    if optimizer_state is not None:
        for name, p in model.named_parameters():
            if name in optimizer_state:
                opt.state[p] = {k: v.to(device) for k, v in optimizer_state[name].items()}
    ema = ModelEmaV3(model, decay=recipe["ema_decay"]) if recipe["ema"] else None
    mix = build_mixup(recipe, model.num_classes)
    return TrainState(opt, LRSchedule.for_stage(stage, recipe), ema, mix, build_criterion(recipe, mix is not None))


def train_step(net: nn.Module, batches, opt: torch.optim.Optimizer, crit, recipe: dict, device: torch.device, *,
               loss_sum: torch.Tensor, step: int = 0, accum: int = 1, step_fn=None, model: nn.Module | None = None,
               mix=None, channels_last: bool = False, ema=None, custom_loss=None) -> torch.Tensor:
    """One optimizer step of the engine: ``accum`` micro-batches forward and backward, clipping, update, EMA.

    The hot loop of :func:`train_stage`, and what the ``train-step`` benchmark times. Nothing here waits for the
    device: the loss is accumulated into ``loss_sum`` on the device.

    Args:
        net: the module that syncs gradients in backward (the DDP wrapper when distributed, else the model).
        batches: iterator of ``(images, targets)`` micro-batches on ``device``; ``accum`` of them are drawn.
        opt: the optimizer (see :func:`build_optimizer`).
        crit: the loss, ``crit(logits, targets)``.
        recipe: reads ``amp`` (see :func:`autocast_for`) and ``clip_grad``.
        device: where the step runs.
        loss_sum: scalar tensor on ``device``; every micro-batch adds its ``loss / accum`` in place.
        step: index of this optimizer step (EMA warm-up).
        accum: micro-batches per optimizer step (gradient accumulation).
        step_fn: computes the logits (``torch.compile(net)`` when compiling); default ``net``.
        model: the unwrapped model (clipping, EMA); default ``net``.
        mix: timm ``Mixup`` applied to each micro-batch, or None.
        channels_last: convert the images to channels-last memory format.
        ema: timm ``ModelEmaV3`` updated after the step, or None.
        custom_loss: set for models with their own objective (DiffusionBlocks): ``step_fn(x, y)`` is then the loss.

    Returns:
        ``loss_sum``.
    """
    step_fn = net if step_fn is None else step_fn
    model = net if model is None else model
    ddp = isinstance(net, nn.parallel.DistributedDataParallel)
    for a in range(accum):
        x, y = next(batches)
        if mix is not None:
            x, y = mix(x, y)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        sync = net.no_sync() if ddp and a < accum - 1 else nullcontext()  # all-reduce once, on the last micro-batch
        with sync, autocast_for(recipe, device):
            # a model with its own objective returns its loss from forward(x, y), called through the (DDP) wrapper
            # so that gradients are synchronised
            loss = (step_fn(x, y) if custom_loss else crit(step_fn(x), y)) / accum
        loss.backward()
        loss_sum += loss.detach()
    if recipe["clip_grad"]:
        nn.utils.clip_grad_norm_(model.parameters(), recipe["clip_grad"])
    opt.step()
    opt.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(model, step=step)
    return loss_sum


def train_stage(model: nn.Module, spec: Stage, recipe: dict, train_loader, val_loader, device: torch.device,
                ledger: Ledger, on_epoch, state: dict | None = None, optimizer_state: dict | None = None,
                d: Dist = Dist(), log=print, on_preempt=None) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Train ``model`` for ``spec.steps`` optimizer steps.

    Args:
        on_epoch: called after every epoch with ``(row, checkpoint)``: the summary row (dict) and a dict holding
            everything needed to resume (model/optimizer/EMA state, step, epoch, RNG states, ledger); the caller
            writes them (atomically) before training goes on.
        state: a checkpoint dict from ``on_epoch`` or ``on_preempt`` to resume from.
        on_preempt: called with a checkpoint dict (``in_epoch``: the position inside the epoch) when a preemption
            signal (:mod:`rbdc.preempt`) stops the stage between two steps of an epoch; then
            :class:`rbdc.preempt.Preempted` is raised.
        optimizer_state: initial optimizer state (RBDC's carried AdamW moments after coupling).
    """
    world_batch = recipe["batch_size"]
    micro = recipe["micro_batch"] or world_batch // d.world
    accum = world_batch // (micro * d.world)
    if accum * micro * d.world != world_batch:
        raise ValueError(f"global batch {world_batch} is not micro_batch {micro} x world {d.world} x an integer "
                         f"number of accumulation steps; pick a micro_batch that divides it")
    protocol = get_protocol(recipe["protocol"])
    fpi = protocol.train_flops_per_image(model, recipe["img_size"])
    own_objective = protocol.own_objective  # DiffusionBlocks: forward(x, y) is the loss
    set_attention_path(model, recipe).to(device)
    channels_last = recipe["channels_last"] if recipe["channels_last"] != "auto" else (
        device.type == "cuda" and isinstance(protocol.backbone(model), ResNet))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    ts = build_training(model, recipe, spec, device, optimizer_state)
    opt, ema, mix, crit = ts.optimizer, ts.ema, ts.mixup, ts.criterion
    step, epoch, wall = 0, 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        step, epoch, wall = state["step"], state["epoch"], state["wall_s"]
        by_rank = state.get("rng_by_rank")
        _set_rng_state(by_rank[d.rank] if by_rank and len(by_rank) == d.world else state["rng"])
    else:
        # a custom objective draws its randomness (DiffusionBlocks: which block) from the global RNG: same on all ranks
        seed_everything(spec.seed + (0 if own_objective else d.rank))
    reset_peak_mem(device)
    net = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if device.type == "cuda" else None,
                                                  find_unused_parameters=own_objective)
    step_fn = torch.compile(net) if recipe["compile"] else net
    steps_per_epoch = len(train_loader) // accum
    if steps_per_epoch < 1:
        raise ValueError(f"the training set gives {len(train_loader)} micro-batches per epoch, fewer than one "
                         f"optimizer step of {world_batch} images; lower batch_size")
    log(f"[{spec.id}] {spec.model_name}: {spec.steps} steps ({spec.steps / steps_per_epoch:.2f} epochs) of global "
        f"batch {world_batch} = {micro} x {d.world} proc x {accum} accum | lr {spec.lr:.3g} | "
        f"{fpi / 1e9:.3f} train GFLOPs/img" + (f" | resumed at step {step}" if step else ""))
    images_per_step = world_batch
    in_epoch = (state or {}).get("in_epoch")  # a preempted epoch's position: its first steps are trained already
    while step < spec.steps:
        train_loader.set_epoch(epoch)
        net.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        it = iter(train_loader)
        n_steps, partial_s = _skip_trained(it, in_epoch, accum, loss_sum)
        wall -= partial_s  # wall: the seconds before this epoch; partial_s: this epoch's before a preemption
        in_epoch = None
        epoch_steps = min(steps_per_epoch, spec.steps - step + n_steps)
        bar = _progress(epoch_steps - n_steps, f"{spec.id} ep{epoch}", d.main)
        for _ in range(n_steps, epoch_steps):
            if preempt.requested(d, device):  # between two steps of the epoch: stop here
                bar.close()
                _preempt_inside_epoch(on_preempt, model, opt, ema, step, epoch, wall,
                                      partial_s + time.perf_counter() - t0, n_steps, loss_sum, spec, d)
            lr = ts.schedule.lr_at(spec.sched_offset + step)
            for group in opt.param_groups:
                group["lr"] = lr
            train_step(net, it, opt, crit, recipe, device, loss_sum=loss_sum, step=step, accum=accum,
                       step_fn=step_fn, model=model, mix=mix, channels_last=channels_last, ema=ema,
                       custom_loss=own_objective)
            step += 1
            # a non-finite loss keeps the epoch's sum non-finite: this finds the first such step (one host sync per
            # step, as timm's own loop does to log the loss)
            if not torch.isfinite(loss_sum):
                bar.close()
                raise Diverged(spec.id, step, loss_sum.item())
            n_steps += 1
            bar.update(1)
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0 + partial_s
        wall += dt
        images = n_steps * images_per_step
        ledger.add(spec.id, spec.model_name, images, fpi)
        row = {"stage": spec.id, "model": spec.model_name, "epoch": epoch,
               "train_loss": (loss_sum / max(n_steps, 1)).item(), "lr": opt.param_groups[0]["lr"],
               # the stage's training images (not a growth step's, e.g. GradMax's gradient pass, booked to it too)
               "images_seen": sum(e.images for e in ledger.entries if e.stage == spec.id
                                  and e.model == spec.model_name),
               "train_flops": images * fpi, "cum_train_flops": ledger.total, "wall_s": round(wall, 3),
               "img_per_s": images / dt, "model_tflops_per_s": images * fpi / dt / 1e12}
        row.update(mfu_fields(row["model_tflops_per_s"], device))  # GPU only: {"mfu": ...} against the bf16 peak
        last = step >= spec.steps
        if val_loader is not None and ((epoch + 1) % recipe["eval_every"] == 0 or last):
            row.update(evaluate(model, val_loader, recipe, device, d, channels_last))
            if ema is not None:
                row["ema_top1"] = evaluate(ema.module, val_loader, recipe, device, d, channels_last)["eval_top1"]
        row["peak_mem_mb"] = round(peak_mem_mb(device), 1)
        epoch += 1
        log(f"[{spec.id}] epoch {epoch - 1} step {step}/{spec.steps} loss {row['train_loss']:.4f} "
            f"top1 {row.get('eval_top1', float('nan')):.2f} lr {row['lr']:.2e} {row['img_per_s']:.0f} img/s")
        on_epoch(row, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                       "ema": ema.state_dict() if ema is not None else None, "step": step, "epoch": epoch,
                       "wall_s": wall, **_rng_states(d), "done": last})
        if not last and preempt.requested(d, device):  # at an epoch's end: its checkpoint is written already
            raise preempt.Preempted(spec.id, step, preempt.requested())
    return model, opt


def _skip_trained(it, in_epoch: dict | None, accum: int, loss_sum: torch.Tensor) -> tuple[int, float]:
    """Resume inside a preempted epoch: draw (and drop) the micro-batches its trained steps used, so the loader
    continues where it was; restore the epoch's loss sum. Returns (steps done in the epoch, seconds they took)."""
    if not in_epoch:
        return 0, 0.0
    for _ in range(in_epoch["n_steps"] * accum):
        next(it)
    loss_sum += in_epoch["loss_sum"].to(loss_sum.device)
    return in_epoch["n_steps"], in_epoch["wall_s"]


def _preempt_inside_epoch(on_preempt, model, opt, ema, step: int, epoch: int, wall: float, epoch_s: float,
                          n_steps: int, loss_sum: torch.Tensor, spec: Stage, d: Dist = Dist()) -> None:
    """Hand the checkpoint of a stop between two steps to ``on_preempt`` and raise :class:`Preempted`."""
    if on_preempt is not None:
        on_preempt({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None, "step": step, "epoch": epoch,
                    "wall_s": wall + epoch_s, **_rng_states(d), "done": False,
                    "in_epoch": {"n_steps": n_steps, "loss_sum": loss_sum.detach().cpu(), "wall_s": epoch_s}})
    raise preempt.Preempted(spec.id, step, preempt.requested())
