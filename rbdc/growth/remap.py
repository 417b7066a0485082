"""Growing tensors along channel spaces: remap each dimension new -> old unit, rebuild a module at new shapes."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .spaces import Space


def unit_to_channel(idx: torch.Tensor, unit: int) -> torch.Tensor:
    """Unit-level index (new -> old, -1 = new) to channel level, for spaces whose units span ``unit`` channels."""
    if unit == 1:
        return idx
    ch = idx[:, None] * unit + torch.arange(unit)
    ch[idx < 0] = -1
    return ch.flatten()


def remap(t: torch.Tensor, ops: list, fill: float = 0.0) -> torch.Tensor:
    """Apply ``(dim, index, split, divisor)`` ops: select old slices (``fill`` where the index is -1), divide."""
    for dim, idx, split, div in ops:
        new = (idx < 0).nonzero().flatten()  # before moving: `idx` may be bound for the meta device
        idx, new = idx.to(t.device), new.to(t.device)
        parts = []
        for chunk in t.chunk(split, dim) if split > 1 else (t,):
            o = chunk.index_select(dim, idx.clamp(min=0))
            if new.numel():
                o = o.index_fill(dim, new, fill)
            if div is not None:
                shape = [1] * o.ndim
                shape[dim] = -1
                o = o / div.to(o).view(shape)
            parts.append(o)
        t = torch.cat(parts, dim) if split > 1 else parts[0]
    return t


def fill_value(key: str, t: torch.Tensor) -> float:
    """Identity initialisation of a new unit's entry: norm scales and running variances 1, everything else 0."""
    if key.endswith("running_var") or key.endswith(".gamma"):
        return 1.0
    if key.endswith(".weight") and t.ndim == 1:  # BatchNorm / LayerNorm scale
        return 1.0
    return 0.0


def ops_for(
    space_list: list[Space], indices: dict[str, torch.Tensor], divisors: dict[str, torch.Tensor] | None = None
) -> dict[str, list]:
    """Per state key, the remap ops that give every space its new unit index (unit level, new -> old)."""
    ops: dict[str, list] = {}
    for s in space_list:
        if s.name not in indices:
            continue
        ch = unit_to_channel(indices[s.name], s.unit)
        div = None if divisors is None or s.name not in divisors else divisors[s.name]
        for key, dim, split in s.producers:
            ops.setdefault(key, []).append((dim, ch, split, None))
        for key, dim, split in s.consumers:
            ops.setdefault(key, []).append((dim, ch, split, None if div is None else unit_to_div(div, s.unit)))
    return ops


def unit_to_div(div: torch.Tensor, unit: int) -> torch.Tensor:
    return div if unit == 1 else div.repeat_interleave(unit)


def _resized(mod: nn.Module, shapes: dict[str, torch.Size]) -> nn.Module:
    """A module like ``mod`` whose parameters have ``shapes`` (conv/linear/norm only)."""
    w = shapes["weight"]
    dd = {"device": mod.weight.device, "dtype": mod.weight.dtype}
    if isinstance(mod, nn.Conv2d):
        new = nn.Conv2d(
            w[1] * mod.groups,
            w[0],
            mod.kernel_size,
            mod.stride,
            mod.padding,
            mod.dilation,
            mod.groups,
            bias=mod.bias is not None,
            padding_mode=mod.padding_mode,
            **dd,
        )
    elif isinstance(mod, nn.Linear):
        new = nn.Linear(w[1], w[0], bias=mod.bias is not None, **dd)
    elif isinstance(mod, nn.BatchNorm2d):
        new = type(mod)(
            w[0],
            eps=mod.eps,
            momentum=mod.momentum,
            affine=mod.affine,
            track_running_stats=mod.track_running_stats,
            **dd,
        )
    elif isinstance(mod, nn.LayerNorm):
        new = type(mod)(w[0], eps=mod.eps, elementwise_affine=mod.elementwise_affine, **dd)
    else:
        raise ValueError(f"{type(mod).__name__} cannot be resized by the growth operators")
    new.train(mod.training)
    return new


def build_like(model: nn.Module, sd: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` whose layers have the shapes of ``sd``, with ``sd`` loaded (strict)."""
    new = copy.deepcopy(model)
    for name, mod in list(new.named_modules()):
        own = {k: v for k, v in mod.named_parameters(recurse=False)}
        if not own or "weight" not in own:
            continue
        shapes = {k: sd[f"{name}.{k}"].shape for k in own}
        if any(shapes[k] != own[k].shape for k in own):
            new.set_submodule(name, _resized(mod, shapes))
    for mod in new.modules():
        if hasattr(mod, "qkv") and hasattr(mod, "num_heads"):  # timm Attention: heads follow the qkv rows
            mod.attn_dim = mod.qkv.out_features // 3
            mod.num_heads = mod.attn_dim // mod.head_dim
    new.load_state_dict(sd)
    return new
