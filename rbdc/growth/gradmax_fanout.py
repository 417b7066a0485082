"""GradMax's fan-out directions (:mod:`rbdc.growth.gradmax`): the gradient pass over one batch, the matrix M of each
inner space (exact for convolutions, mean-centred under train-mode BatchNorm, per head for attention) and its top
right-singular vectors, scaled to the new units' fan-out norm. Writing them into the grown model is gradmax.py's part.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LossFn", "batch_images", "gradient_pass", "new_fanout"]

LossFn = Callable[[nn.Module, object], torch.Tensor]


def _conv_m(
    h: torch.Tensor, conv_l: nn.Conv2d, conv_next: nn.Conv2d, delta: torch.Tensor, center: bool, chunk: int = 16
) -> torch.Tensor:
    """Exact GradMax matrix of a conv pair: (C_in k1^2) x (C_out k2^2), float64."""
    k1, k2 = conv_l.kernel_size, conv_next.kernel_size
    n, c_out = delta.shape[:2]
    m = torch.zeros(h.shape[1] * k1[0] * k1[1], c_out * k2[0] * k2[1], dtype=torch.float64, device=h.device)
    p_sum = torch.zeros(m.shape[0], dtype=torch.float64, device=h.device)
    positions = 0
    for i in range(0, n, chunk):
        hi, di = h[i : i + chunk].double(), delta[i : i + chunk].double()
        cols = F.unfold(hi, k1, dilation=conv_l.dilation, padding=conv_l.padding, stride=conv_l.stride)
        grid = _out_hw(hi.shape[-2:], conv_l)
        img = cols.view(hi.shape[0], -1, *grid)
        mt = torch.nn.grad.conv2d_weight(
            img,
            (c_out, img.shape[1], *k2),
            di,
            stride=conv_next.stride,
            padding=conv_next.padding,
            dilation=conv_next.dilation,
        )
        m += mt.permute(1, 0, 2, 3).reshape(m.shape)
        p_sum += cols.sum(dim=(0, 2))
        positions += cols.shape[0] * cols.shape[2]
    # Train-mode BN centres the new channel's gradient: sum_x (P_x - mean P) D_x = M - mean(P) (sum_x D_x), and
    # sum_x D_x is the weight gradient of an all-ones map.
    if center:
        ones = torch.ones(n, 1, *grid, dtype=torch.float64, device=h.device)
        s = torch.nn.grad.conv2d_weight(
            ones,
            (c_out, 1, *k2),
            delta.double(),
            stride=conv_next.stride,
            padding=conv_next.padding,
            dilation=conv_next.dilation,
        )
        m -= torch.outer(p_sum / positions, s.reshape(-1))
    return m


def _out_hw(hw, conv: nn.Conv2d) -> tuple[int, int]:
    return tuple(
        (hw[i] + 2 * conv.padding[i] - conv.dilation[i] * (conv.kernel_size[i] - 1) - 1) // conv.stride[i] + 1
        for i in range(2)
    )


def _with_ones(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)


def _directions(m: torch.Tensor, k: int, gen: torch.Generator) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Top-k right singular vectors of m (rows), random unit vectors beyond what exists; and the singular values."""
    dim = m.shape[1]
    full = k > min(m.shape)
    _, s, vh = torch.linalg.svd(m, full_matrices=full)
    dirs = vh[: min(k, dim)]
    # Singular vectors have no sign; fix it (largest entry positive) so that growth is reproducible across devices,
    # memory formats and data-parallel ranks.
    dirs = dirs * dirs.gather(1, dirs.abs().argmax(1, keepdim=True)).sign()
    extra = k - dirs.shape[0]
    if extra > 0:
        r = torch.randn(extra, dim, generator=gen, dtype=m.dtype).to(m.device)
        dirs = torch.cat([dirs, r / r.norm(dim=1, keepdim=True)])
    return dirs, max(0, k - min(m.shape)), s[:k]


def batch_images(batch) -> torch.Tensor:
    """The image tensor of a batch: the batch itself, or the first element of a (images, targets, ...) tuple."""
    if torch.is_tensor(batch):
        return batch
    if isinstance(batch, (list, tuple)) and batch and torch.is_tensor(batch[0]):
        return batch[0]
    if isinstance(batch, dict) and torch.is_tensor(batch.get("image")):
        return batch["image"]
    raise ValueError(
        f"cannot find the images in a batch of type {type(batch).__name__}: pass a tensor or an (images, targets) tuple"
    )


def gradient_pass(model: nn.Module, batch, loss_fn: LossFn, grow: list) -> tuple[dict, dict, tuple[int, int]]:
    """One forward and backward of ``batch``: the fan-in layers' inputs and the gradients at the fan-out layers'
    outputs of the spaces in ``grow``, and (images, image size). BatchNorm statistics are restored afterwards."""
    acts, outs, shape = {}, {}, {}

    def record_input(mod, args):
        shape.setdefault("x", tuple(args[0].shape))

    handles = [model.register_forward_pre_hook(record_input)]
    for s in grow:
        handles.append(
            model.get_submodule(s.fan_in).register_forward_hook(
                lambda m, a, o, n=s.name: acts.__setitem__(n, a[0].detach())
            )
        )
        handles.append(
            model.get_submodule(s.fan_out).register_forward_hook(lambda m, a, o, n=s.name: outs.__setitem__(n, o))
        )
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    try:
        with torch.enable_grad():
            loss = loss_fn(model, batch)
            grads = dict(zip(outs, torch.autograd.grad(loss, list(outs.values()))))
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
    if "x" not in shape:
        shape["x"] = tuple(batch_images(batch).shape)
    return acts, grads, (shape["x"][0], shape["x"][-1])


def new_fanout(
    model: nn.Module,
    s,
    h: torch.Tensor,
    delta: torch.Tensor,
    k: int,
    gen: torch.Generator,
    scale: float,
    random_fanout: bool,
    reduce,
) -> tuple[torch.Tensor, list[float], int, int]:
    """The fan-out vectors of the ``k`` units space ``s`` gains (GradMax's top singular directions of M, or random
    ones), scaled to ``scale`` x the mean fan-out norm of its units; the singular values, how many directions were
    random, and the FLOPs of M and its SVD."""
    fan_in, fan_out = model.get_submodule(s.fan_in), model.get_submodule(s.fan_out)
    if isinstance(fan_in, nn.Conv2d):
        bn = model.get_submodule(s.norm) if s.norm else None
        m = _conv_m(h, fan_in, fan_out, delta, center=bool(bn is not None and bn.training))
        units, rows = k, h.shape[0] * math.prod(_out_hw(h.shape[-2:], fan_in))
    elif s.unit > 1:  # heads: uniform attention of the new heads
        tokens = h.shape[1]
        m = tokens * _with_ones(h.double().mean(1)).T @ delta.double().mean(1)
        units, rows = k * s.unit, h.shape[0]
    else:
        m = _with_ones(h.double().flatten(0, -2)).T @ delta.double().flatten(0, -2)
        units, rows = k, h.shape[:-1].numel()
    if reduce is not None:
        m = reduce(m)
    # M products (rows x fan-in x fan-out MACs) and a dense SVD (~4 m n min(m, n))
    linalg = 2 * rows * m.shape[0] * m.shape[1] + 4 * m.shape[0] * m.shape[1] * min(m.shape)
    if random_fanout:
        r = torch.randn(units, m.shape[1], generator=gen, dtype=m.dtype).to(m.device)
        dirs, extra, sv = r / r.norm(dim=1, keepdim=True), 0, torch.zeros(0)
    else:
        dirs, extra, sv = _directions(m, units, gen)
    w_out = fan_out.weight.detach()
    cols = w_out.transpose(0, 1).flatten(1)  # one row per existing unit channel: its fan-out vector
    magnitude = scale * cols.double().norm(dim=1).mean()
    return (dirs * magnitude).to(w_out.dtype), sv.float().cpu().tolist(), extra, linalg
