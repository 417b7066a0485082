"""``ReLU1``: a ReLU whose derivative is 1 at 0 (growneuron's ``relu1``), so new units of zero input get gradients."""

from __future__ import annotations

import torch
import torch.nn as nn


class _ReLU1Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x >= 0).to(grad.dtype)


class ReLU1(nn.Module):
    """ReLU whose derivative at 0 is 1 (growneuron's ``relu1``).

    A unit with zero fan-in sits exactly at 0; with torch's ReLU (derivative 0 there) it would never receive a
    gradient and stay dead. The forward pass is ReLU's, so swapping it in changes no output and no state dict.
    """

    def __init__(self, inplace: bool = False):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ReLU1Fn.apply(x)


def use_relu1(model: nn.Module, names: list[str]) -> None:
    """Replace the ReLU modules ``names`` of ``model`` with :class:`ReLU1` (in place)."""
    for name in names:
        mod = model.get_submodule(name)
        if isinstance(mod, ReLU1):
            continue
        if not isinstance(mod, nn.ReLU):
            raise ValueError(f"{name}: expected a ReLU to give derivative 1 at 0, got {type(mod).__name__}")
        model.set_submodule(name, ReLU1())
