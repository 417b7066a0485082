"""The training engine: one model, one stage, a fixed number of optimizer steps, resumable at epoch boundaries.

Built on timm's pieces (optimizer factory, Mixup/CutMix, soft-target / label-smoothing losses, EMA), put together by
:func:`rbdc.training.build.build_training`; one optimizer step is :func:`rbdc.training.step.train_step`; the learning
rate of each step is :mod:`rbdc.training.lr`'s; DeiT recipe defaults live in :mod:`rbdc.recipe`. Stages are
step-based so that a FLOPs budget is met to within one optimizer step; an epoch is one pass of the (drop-last) loader,
and the last epoch of a stage may be partial. The global batch is fixed: gradient accumulation makes up what does not
fit one process.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn as nn
from timm.models import ResNet
from tqdm import tqdm

from . import bf16, preempt
from ..errors import RunFailed
from ..flops import Ledger
from ..cost.perf import gemm_probe_gflops, mfu_fields
from ..protocols import Protocol, Stage, lr_for
from .build import TrainState, build_criterion, build_mixup, build_optimizer, build_training
from .runtime import Dist, peak_mem_mb, reset_peak_mem, rng_states, seed_everything, set_rng_state
from .step import autocast, autocast_for, evaluate, set_attention_path, set_fused_attn, train_step

# The engine's public names: the stage loop's own, and those of the modules it is built from (rbdc.training.build,
# rbdc.training.step) that its callers, the benchmarks and rbdc.cost.estimate import from here. The loop calls
# build_training and train_step through this module's names (tests replace them here).
__all__ = [
    "Dist",
    "Stage",
    "TrainState",
    "build_training",
    "build_criterion",
    "build_mixup",
    "build_optimizer",
    "Diverged",
    "train_stage",
    "train_step",
    "evaluate",
    "autocast",
    "autocast_for",
    "set_attention_path",
    "set_fused_attn",
    "peak_mem_mb",
    "lr_for",
]


class Diverged(RunFailed):
    """The training loss went non-finite: AdamW then writes NaN into every weight, so no later step recovers."""

    def __init__(self, stage: str, step: int, loss: float):
        super().__init__(
            f"stage {stage} diverged: training loss {loss} at step {step}; lower lr_base or set "
            f"clip_grad (e.g. --set clip_grad=1.0), as a new run (another --name or --output)",
            stage=stage,
            step=step,
            diverged=True,
        )


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=not (enabled and sys.stderr.isatty()))


def train_stage(
    model: nn.Module,
    spec: Stage,
    recipe: dict,
    train_loader,
    val_loader,
    device: torch.device,
    ledger: Ledger,
    on_epoch,
    state: dict | None = None,
    optimizer_state: dict | None = None,
    d: Dist = Dist(),
    log=print,
    on_preempt=None,
    *,
    protocol: Protocol,
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """Train ``model`` for ``spec.steps`` optimizer steps.

    Args:
        on_epoch: called after every epoch with ``(row, checkpoint)``: the summary row (dict) and a dict holding
            everything needed to resume (model/optimizer/EMA state, step, epoch, RNG states, ledger); the caller
            writes them (atomically) before training goes on.
        state: a checkpoint dict from ``on_epoch`` or ``on_preempt`` to resume from.
        on_preempt: called with a checkpoint dict (``in_epoch``: the position inside the epoch) when a preemption
            signal (:mod:`rbdc.training.preempt`) stops the stage between two steps of an epoch; then
            :class:`rbdc.training.preempt.Preempted` is raised.
        optimizer_state: initial optimizer state (RBDC's carried AdamW moments after coupling).
        protocol: the run's protocol (:class:`rbdc.protocols.Protocol`): what an image costs the model, whether the
            model's forward is its own objective, its timm backbone.
    """
    loop = _StageLoop(model, spec, recipe, device, d, protocol, ledger, log)
    loop.start(train_loader, state, optimizer_state)
    in_epoch = (state or {}).get("in_epoch")  # a preempted epoch's position: its first steps are trained already
    while loop.step < spec.steps:
        row = loop.train_epoch(train_loader, in_epoch, on_preempt)
        in_epoch = None
        last = loop.step >= spec.steps
        if val_loader is not None and ((loop.epoch + 1) % recipe.eval_every == 0 or last):
            row.update(evaluate(model, val_loader, recipe, device, d, loop.channels_last))
            if loop.ts.ema is not None:
                row["ema_top1"] = evaluate(loop.ts.ema.module, val_loader, recipe, device, d, loop.channels_last)[
                    "eval_top1"
                ]
        row["peak_mem_mb"] = round(peak_mem_mb(device), 1)
        loop.epoch += 1
        log(
            f"[{spec.id}] epoch {loop.epoch - 1} step {loop.step}/{spec.steps} loss {row['train_loss']:.4f} "
            f"top1 {row.get('eval_top1', float('nan')):.2f} lr {row['lr']:.2e} {row['img_per_s']:.0f} img/s"
        )
        on_epoch(row, {**loop.checkpoint(loop.wall), "done": last})
        if not last and preempt.requested(d, device):  # at an epoch's end: its checkpoint is written already
            raise preempt.Preempted(spec.id, loop.step, preempt.requested())
    return model, loop.ts.optimizer


class _StageLoop:
    """The state of one stage's training between its epochs: the model and what trains it, the step, the epoch and
    the seconds trained so far."""

    def __init__(
        self,
        model: nn.Module,
        spec: Stage,
        recipe: dict,
        device: torch.device,
        d: Dist,
        protocol: Protocol,
        ledger: Ledger,
        log,
    ):
        self.model, self.spec, self.recipe, self.device, self.d, self.ledger, self.log = (
            model,
            spec,
            recipe,
            device,
            d,
            ledger,
            log,
        )
        world_batch = recipe.batch_size
        self.micro = recipe.micro_batch or world_batch // d.world
        self.accum = world_batch // (self.micro * d.world)
        if self.accum * self.micro * d.world != world_batch:
            raise ValueError(
                f"global batch {world_batch} is not micro_batch {self.micro} x world {d.world} x an "
                f"integer number of accumulation steps; pick a micro_batch that divides it"
            )
        self.fpi = protocol.train_flops_per_image(model, recipe.img_size)
        self.own_objective = protocol.own_objective  # DiffusionBlocks: forward(x, y) is the loss
        self.channels_last = (
            recipe.channels_last
            if recipe.channels_last != "auto"
            else (device.type == "cuda" and isinstance(protocol.backbone(model), ResNet))
        )
        self.step, self.epoch, self.wall = 0, 0, 0.0

    def start(self, train_loader, state: dict | None, optimizer_state: dict | None) -> None:
        """Put the model on the device, build what trains it, resume ``state`` (or seed a fresh start)."""
        model, spec, d, device = self.model, self.spec, self.d, self.device
        set_attention_path(model, self.recipe).to(device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.ts = build_training(model, self.recipe, spec, device, optimizer_state)
        if state is not None:
            model.load_state_dict(state["model"])
            self.ts.optimizer.load_state_dict(state["optimizer"])
            if self.ts.ema is not None and state.get("ema") is not None:
                self.ts.ema.load_state_dict(state["ema"])
            self.step, self.epoch, self.wall = state["step"], state["epoch"], state["wall_s"]
            by_rank = state.get("rng_by_rank")
            set_rng_state(by_rank[d.rank] if by_rank and len(by_rank) == d.world else state["rng"])
        else:
            # a custom objective draws its randomness (DiffusionBlocks: which block) from the global RNG: same on
            # all ranks
            seed_everything(spec.seed + (0 if self.own_objective else d.rank))
        reset_peak_mem(device)
        self.net = model
        if d.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[d.local_rank] if device.type == "cuda" else None,
                find_unused_parameters=self.own_objective,
            )
        self.step_fn = torch.compile(self.net) if self.recipe.compile else self.net
        self.steps_per_epoch = len(train_loader) // self.accum
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"the training set gives {len(train_loader)} micro-batches per epoch, fewer than one "
                f"optimizer step of {self.recipe.batch_size} images; lower batch_size"
            )
        self.log(
            f"[{spec.id}] {spec.model_name}: {spec.steps} steps ({spec.steps / self.steps_per_epoch:.2f} "
            f"epochs) of global batch {self.recipe.batch_size} = {self.micro} x {d.world} proc x "
            f"{self.accum} accum | lr {spec.lr:.3g} | {self.fpi / 1e9:.3f} train GFLOPs/img"
            + (f" | resumed at step {self.step}" if self.step else "")
        )

    def train_epoch(self, train_loader, in_epoch: dict | None, on_preempt) -> dict:
        """One epoch's steps (the rest of a preempted one); its summary row, before evaluation."""
        spec, device, opt = self.spec, self.device, self.ts.optimizer
        train_loader.set_epoch(self.epoch)
        self.net.train()
        t0, c0 = time.perf_counter(), time.process_time()
        loss_sum = torch.zeros((), device=device)
        it = iter(train_loader)
        n_steps, partial_s = _skip_trained(it, in_epoch, self.accum, loss_sum)
        partial_cpu = (in_epoch or {}).get("cpu_s", 0.0)
        self.wall -= partial_s  # wall: the seconds before this epoch; partial_s: this epoch's before a preemption
        epoch_steps = min(self.steps_per_epoch, spec.steps - self.step + n_steps)
        bar = _progress(epoch_steps - n_steps, f"{spec.id} ep{self.epoch}", self.d.main)
        for _ in range(n_steps, epoch_steps):
            if preempt.requested(self.d, device):  # between two steps of the epoch: stop here
                bar.close()
                cpu_s = partial_cpu + time.process_time() - c0
                self._preempt_inside_epoch(on_preempt, partial_s + time.perf_counter() - t0, n_steps, loss_sum, cpu_s)
            self._train_step(it, loss_sum)
            # a non-finite loss keeps the epoch's sum non-finite: this finds the first such step (one host sync per
            # step, as timm's own loop does to log the loss)
            if not torch.isfinite(loss_sum):
                bar.close()
                raise Diverged(spec.id, self.step, loss_sum.item())
            n_steps += 1
            bar.update(1)
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0 + partial_s
        self.wall += dt
        row = self._row(n_steps, loss_sum, dt, opt.param_groups[0]["lr"])
        if device.type == "cpu":
            # the process's CPU seconds over the same steps (every thread of it): below wall x threads when other jobs
            # took turns on its cores, so a wall can be read on the busy clock the cost model is fitted on (issue 35)
            row["cpu_s"] = round(partial_cpu + time.process_time() - c0, 3)
        return row

    def _train_step(self, it, loss_sum: torch.Tensor) -> None:
        opt, ts = self.ts.optimizer, self.ts
        lr = ts.schedule.lr_at(self.spec.sched_offset + self.step)
        for group in opt.param_groups:
            group["lr"] = lr
        train_step(
            self.net,
            it,
            opt,
            ts.criterion,
            self.recipe,
            self.device,
            loss_sum=loss_sum,
            step=self.step,
            accum=self.accum,
            step_fn=self.step_fn,
            model=self.model,
            mix=ts.mixup,
            channels_last=self.channels_last,
            ema=ts.ema,
            custom_loss=self.own_objective,
        )
        self.step += 1

    def _row(self, n_steps: int, loss_sum: torch.Tensor, dt: float, lr: float) -> dict:
        """The epoch's summary row; books its images in the ledger."""
        spec, fpi = self.spec, self.fpi
        images = n_steps * self.recipe.batch_size
        self.ledger.add(spec.id, spec.model_name, images, fpi)
        row = {
            "stage": spec.id,
            "model": spec.model_name,
            "epoch": self.epoch,
            "train_loss": (loss_sum / max(n_steps, 1)).item(),
            "lr": lr,
            # the stage's training images (not a growth step's, e.g. GradMax's gradient pass, booked to it too)
            "images_seen": sum(
                e.images for e in self.ledger.entries if e.stage == spec.id and e.model == spec.model_name
            ),
            "train_flops": images * fpi,
            "cum_train_flops": self.ledger.total,
            "wall_s": round(self.wall, 3),
            "img_per_s": images / dt,
            "model_tflops_per_s": images * fpi / dt / 1e12,
        }
        row.update(mfu_fields(row["model_tflops_per_s"], self.device))  # GPU only: {"mfu": ...} vs the bf16 peak
        if self.device.type == "cpu":  # the machine's speed state after the epoch, outside its wall time
            fast_bf16 = self.recipe.amp == "bf16" and not bf16.needed(self.device)
            row["gemm_gflops"] = round(gemm_probe_gflops(torch.bfloat16 if fast_bf16 else torch.float32), 1)
        return row

    def checkpoint(self, wall: float) -> dict:
        """Everything a resume needs (``wall``: the seconds trained, at this point)."""
        ema = self.ts.ema
        return {
            "model": self.model.state_dict(),
            "optimizer": self.ts.optimizer.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "step": self.step,
            "epoch": self.epoch,
            "wall_s": wall,
            **rng_states(self.d),
        }

    def _preempt_inside_epoch(
        self, on_preempt, epoch_s: float, n_steps: int, loss_sum: torch.Tensor, cpu_s: float = 0.0
    ) -> None:
        """Hand the checkpoint of a stop between two steps to ``on_preempt`` and raise :class:`Preempted`."""
        if on_preempt is not None:
            on_preempt(
                {
                    **self.checkpoint(self.wall + epoch_s),
                    "done": False,
                    "in_epoch": {
                        "n_steps": n_steps,
                        "loss_sum": loss_sum.detach().cpu(),
                        "wall_s": epoch_s,
                        "cpu_s": cpu_s,
                    },
                }
            )
        raise preempt.Preempted(self.spec.id, self.step, preempt.requested())


def _skip_trained(it, in_epoch: dict | None, accum: int, loss_sum: torch.Tensor) -> tuple[int, float]:
    """Resume inside a preempted epoch: draw (and drop) the micro-batches its trained steps used, so the loader
    continues where it was; restore the epoch's loss sum. Returns (steps done in the epoch, seconds they took)."""
    if not in_epoch:
        return 0, 0.0
    for _ in range(in_epoch["n_steps"] * accum):
        next(it)
    loss_sum += in_epoch["loss_sum"].to(loss_sum.device)
    return in_epoch["n_steps"], in_epoch["wall_s"]
