"""One step's computation: the forward's precision and attention kernel, one optimizer step (:func:`train_step`,
the engine's hot loop) and one evaluation pass (:func:`evaluate`)."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn as nn
from timm.utils import accuracy

from . import bf16
from ..recipe import Recipe
from .runtime import Dist


def autocast_for(recipe: Recipe, device: torch.device):
    """The recipe's precision (``amp``) as a context for the forward pass."""
    return autocast(recipe.amp, device)


def autocast(amp: str, device: torch.device):
    """``auto`` (bf16 on CUDA, fp32 on a CPU), ``bf16`` or ``fp32`` as a context for the forward pass."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" else "fp32"
    if amp == "bf16":
        if bf16.needed(device):
            bf16.install()
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def set_attention_path(model: nn.Module, recipe: Recipe) -> nn.Module:
    """Pick the attention kernel of every timm attention module (``recipe.fused_attn``; None keeps timm's)."""
    return set_fused_attn(model, recipe.fused_attn)


def set_fused_attn(model: nn.Module, fused: bool | None) -> nn.Module:
    """timm's fused SDPA (True) or its explicit attention (False) in every attention module; None keeps timm's."""
    if fused is not None:
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = bool(fused)
    return model


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, recipe: dict, device: torch.device, d: Dist = Dist(), channels_last: bool = False
) -> dict:
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


def train_step(
    net: nn.Module,
    batches,
    opt: torch.optim.Optimizer,
    crit,
    recipe: dict,
    device: torch.device,
    *,
    loss_sum: torch.Tensor,
    step: int = 0,
    accum: int = 1,
    step_fn=None,
    model: nn.Module | None = None,
    mix=None,
    channels_last: bool = False,
    ema=None,
    custom_loss=None,
) -> torch.Tensor:
    """One optimizer step of the engine: ``accum`` micro-batches forward and backward, clipping, update, EMA.

    The hot loop of :func:`rbdc.training.engine.train_stage`, and what the ``train-step`` benchmark times. Nothing
    here waits for the device: the loss is accumulated into ``loss_sum`` on the device.

    Args:
        net: the module that syncs gradients in backward (the DDP wrapper when distributed, else the model).
        batches: iterator of ``(images, targets)`` micro-batches on ``device``; ``accum`` of them are drawn.
        opt: the optimizer (see :func:`rbdc.training.build.build_optimizer`).
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
        x, y = _next_batch(batches, mix, channels_last)
        sync = net.no_sync() if ddp and a < accum - 1 else nullcontext()  # all-reduce once, on the last micro-batch
        with sync, autocast_for(recipe, device):
            # a model with its own objective returns its loss from forward(x, y), called through the (DDP) wrapper
            # so that gradients are synchronised
            loss = (step_fn(x, y) if custom_loss else crit(step_fn(x), y)) / accum
        loss.backward()
        loss_sum += loss.detach()
    _update(model, opt, recipe.clip_grad, ema, step)
    return loss_sum


def _next_batch(batches, mix, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The next micro-batch, mixed (Mixup/CutMix) and in channels-last memory format where asked."""
    x, y = next(batches)
    if mix is not None:
        x, y = mix(x, y)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def _update(model: nn.Module, opt: torch.optim.Optimizer, clip_grad: float | None, ema, step: int) -> None:
    """The step's update once its gradients are summed: clipping, the optimizer, EMA."""
    if clip_grad:
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(model, step=step)
