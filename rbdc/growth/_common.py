"""Shared machinery of the growth operators: channel spaces, tensor remapping, resizing, MACs, optimizer state.

A *channel space* is a set of tensor dimensions that index the same units: e.g. in a ResNet Bottleneck, the output
channels of ``conv1``, the four ``bn1`` vectors and the input channels of ``conv2``. Growing a network means choosing,
for every space, which old unit each new unit comes from (or none: a brand-new unit), then applying that choice to
every *producer* dimension (the unit's own fan-in rows, biases, norm parameters, embeddings) and every *consumer*
dimension (the fan-out columns of the layers that read the unit). Spaces are discovered from the module structure of
timm ``ResNet`` (BasicBlock/Bottleneck, single or deep stem) and ``VisionTransformer`` (pre-norm ``Block`` with fused
``qkv``); every state-dict entry must belong to a space or be width-free, so an unknown layer is refused by name.
"""
from __future__ import annotations

import copy
import types
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from timm.models import ResNet, VisionTransformer

__all__ = ["Space", "spaces", "inner_spaces", "inner_widths", "unit_to_channel", "remap", "build_like",
           "count_macs", "count_flops_by_hooks", "ReLU1", "use_relu1", "grow_optimizer_state", "batch_images"]

Op = tuple  # (dim, channel index new->old with -1 for a new unit, split, divisor or None)


@dataclass
class Space:
    """Tensor dimensions indexing the same units.

    Attributes:
        name: ``"stem"``, ``"embed"``, a residual stage (``"layer2.0"``: the stream starting at that block), or the
            module that creates the units of an inner space (``"layer1.0.conv1"``, ``"blocks.0.mlp"``,
            ``"blocks.0.attn"``).
        kind: ``"residual"`` (ResNet stem/stage stream, ViT embedding) or ``"inner"`` (hidden units inside a block:
            bottleneck width, BasicBlock mid channels, MLP hidden units, attention heads).
        unit: channels per unit (``head_dim`` for attention heads, else 1).
        producers: ``(state key, dim, split)`` copied per unit; ``split`` = 3 for the fused qkv ([q | k | v]).
        consumers: ``(state key, dim, split)`` of the layers reading the units (fan-out columns).
        fan_in: module creating the units (inner spaces): conv/linear, or the ``qkv`` of a heads space.
        fan_out: module reading them (inner spaces).
        norm: per-channel BatchNorm between ``fan_in`` and the activation (ResNet inner spaces).
        act: activation module applied to the units (inner spaces).
    """

    name: str
    kind: str
    unit: int = 1
    producers: list = field(default_factory=list)
    consumers: list = field(default_factory=list)
    fan_in: str | None = None
    fan_out: str | None = None
    norm: str | None = None
    act: str | None = None

    def size(self, sd: dict) -> int:
        key, dim, split = self.producers[0]
        return sd[key].shape[dim] // split // self.unit


# Width-free entries: classifier biases, per-head-dim q/k norms.
_FIXED_SUFFIXES = ("num_batches_tracked", "q_norm.weight", "q_norm.bias", "k_norm.weight", "k_norm.bias")


def _norm_keys(keys, prefix: str) -> list:
    return [(f"{prefix}.{s}", 0, 1) for s in ("weight", "bias", "running_mean", "running_var", "gamma")
            if f"{prefix}.{s}" in keys]


def _resnet_spaces(model: ResNet) -> list[Space]:
    keys = set(model.state_dict())
    out: list[Space] = []
    if isinstance(model.conv1, nn.Sequential):  # deep stem: conv-bn-act chain, the last conv feeds model.bn1
        cur = None
        for i, m in enumerate(model.conv1):
            name = f"conv1.{i}"
            if isinstance(m, nn.Conv2d):
                if cur is not None:
                    cur.consumers.append((f"{name}.weight", 1, 1))
                cur = Space(name, "residual", producers=[(f"{name}.weight", 0, 1)])
                out.append(cur)
            elif isinstance(m, nn.BatchNorm2d):
                cur.producers += _norm_keys(keys, name)
        cur.name = "stem"
        cur.producers += _norm_keys(keys, "bn1")
    else:
        cur = Space("stem", "residual", producers=[("conv1.weight", 0, 1)] + _norm_keys(keys, "bn1"))
        out.append(cur)
    for s in range(1, 5):
        for b, block in enumerate(getattr(model, f"layer{s}")):
            p = f"layer{s}.{b}"
            if getattr(block, "se", None) is not None or not isinstance(getattr(block, "aa", nn.Identity()),
                                                                        nn.Identity):
                raise ValueError(f"{p}: squeeze-excite / anti-aliasing blocks have no growth rule; use a plain "
                                 f"timm ResNet (BasicBlock or Bottleneck)")
            bottleneck = hasattr(block, "conv3")
            cur.consumers.append((f"{p}.conv1.weight", 1, 1))
            last_conv, last_bn = ("conv3", "bn3") if bottleneck else ("conv2", "bn2")
            if block.downsample is not None:
                nxt = Space(p, "residual")
                for name, m in block.downsample.named_modules():
                    full = f"{p}.downsample.{name}"
                    if isinstance(m, nn.Conv2d):
                        cur.consumers.append((f"{full}.weight", 1, 1))
                        nxt.producers.append((f"{full}.weight", 0, 1))
                    elif isinstance(m, nn.BatchNorm2d):
                        nxt.producers += _norm_keys(keys, full)
                out.append(nxt)
                cur = nxt
            cur.producers += [(f"{p}.{last_conv}.weight", 0, 1)] + _norm_keys(keys, f"{p}.{last_bn}")
            inner = [("conv1", "bn1", "act1", "conv2")] + ([("conv2", "bn2", "act2", "conv3")] if bottleneck else [])
            for conv, bn, act, nxt_conv in inner:
                out.append(Space(f"{p}.{conv}", "inner",
                                 producers=[(f"{p}.{conv}.weight", 0, 1)] + _norm_keys(keys, f"{p}.{bn}"),
                                 consumers=[(f"{p}.{nxt_conv}.weight", 1, 1)], fan_in=f"{p}.{conv}",
                                 fan_out=f"{p}.{nxt_conv}", norm=f"{p}.{bn}", act=f"{p}.{act}"))
    cur.consumers.append(("fc.weight", 1, 1))
    _check_covered(out, keys, fixed={"fc.bias"})
    return out


def _vit_spaces(model: VisionTransformer) -> list[Space]:
    from timm.layers import Mlp
    from timm.layers.attention import Attention
    from timm.models.vision_transformer import Block

    keys = set(model.state_dict())
    emb = Space("embed", "residual", producers=[("patch_embed.proj.weight", 0, 1)])
    emb.producers += [(k, 0, 1) for k in ("patch_embed.proj.bias",) if k in keys]
    emb.producers += _norm_keys(keys, "patch_embed.norm") + _norm_keys(keys, "norm_pre")
    emb.producers += [(k, 2, 1) for k in ("cls_token", "reg_token", "dist_token", "pos_embed") if k in keys]
    out = [emb]
    for i, blk in enumerate(model.blocks):
        p = f"blocks.{i}"
        if type(blk) is not Block or type(blk.attn) is not Attention or type(blk.mlp) is not Mlp:
            raise ValueError(f"{p}: only timm's pre-norm Block with fused-qkv Attention and Mlp can grow, got "
                             f"{type(blk).__name__}/{type(blk.attn).__name__}/{type(blk.mlp).__name__}")
        if blk.attn.gate is not None:
            raise ValueError(f"{p}.attn: gated attention has no growth rule")
        emb.producers += _norm_keys(keys, f"{p}.norm1") + _norm_keys(keys, f"{p}.norm2")
        emb.producers += _norm_keys(keys, f"{p}.ls1") + _norm_keys(keys, f"{p}.ls2")
        emb.producers += [(f"{p}.{m}.{s}", 0, 1) for m in ("attn.proj", "mlp.fc2") for s in ("weight", "bias")
                          if f"{p}.{m}.{s}" in keys]
        emb.consumers += [(f"{p}.attn.qkv.weight", 1, 1), (f"{p}.mlp.fc1.weight", 1, 1)]
        heads = Space(f"{p}.attn", "inner", unit=blk.attn.head_dim,
                      producers=[(f"{p}.attn.qkv.{s}", 0, 3) for s in ("weight", "bias") if f"{p}.attn.qkv.{s}" in keys]
                      + _norm_keys(keys, f"{p}.attn.norm"),
                      consumers=[(f"{p}.attn.proj.weight", 1, 1)], fan_in=f"{p}.attn.qkv", fan_out=f"{p}.attn.proj")
        mlp = Space(f"{p}.mlp", "inner",
                    producers=[(f"{p}.mlp.fc1.{s}", 0, 1) for s in ("weight", "bias") if f"{p}.mlp.fc1.{s}" in keys]
                    + _norm_keys(keys, f"{p}.mlp.norm"),
                    consumers=[(f"{p}.mlp.fc2.weight", 1, 1)], fan_in=f"{p}.mlp.fc1", fan_out=f"{p}.mlp.fc2",
                    act=f"{p}.mlp.act")
        out += [heads, mlp]
    emb.producers += _norm_keys(keys, "norm") + _norm_keys(keys, "fc_norm")
    emb.consumers += [(f"{h}.weight", 1, 1) for h in ("head", "head_dist") if f"{h}.weight" in keys]
    _check_covered(out, keys, fixed={"head.bias", "head_dist.bias"})
    return out


def _check_covered(out: list[Space], keys: set, fixed: set) -> None:
    covered = {k for s in out for k, _, _ in s.producers + s.consumers} | fixed
    missing = sorted(k for k in keys if k not in covered and not k.endswith(_FIXED_SUFFIXES))
    if missing:
        raise ValueError(f"no growth rule for {missing[:5]}: this layer kind is not supported by the growth "
                         f"operators (timm ResNet BasicBlock/Bottleneck and plain ViT/DeiT are)")


def spaces(model: nn.Module) -> list[Space]:
    """All channel spaces of a timm ResNet or VisionTransformer (see module docstring)."""
    if isinstance(model, ResNet):
        return _resnet_spaces(model)
    if isinstance(model, VisionTransformer):
        return _vit_spaces(model)
    raise ValueError(f"{type(model).__name__}: growth operators handle timm ResNet and VisionTransformer only")


def inner_spaces(model: nn.Module) -> list[Space]:
    return [s for s in spaces(model) if s.kind == "inner"]


def inner_widths(model: nn.Module) -> dict[str, int]:
    """Units of every inner space: bottleneck / mid channels, MLP hidden units, attention heads (in heads)."""
    sd = model.state_dict()
    return {s.name: s.size(sd) for s in inner_spaces(model)}


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
        for chunk in (t.chunk(split, dim) if split > 1 else (t,)):
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


def ops_for(space_list: list[Space], indices: dict[str, torch.Tensor],
            divisors: dict[str, torch.Tensor] | None = None) -> dict[str, list]:
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
        new = nn.Conv2d(w[1] * mod.groups, w[0], mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.groups,
                        bias=mod.bias is not None, padding_mode=mod.padding_mode, **dd)
    elif isinstance(mod, nn.Linear):
        new = nn.Linear(w[1], w[0], bias=mod.bias is not None, **dd)
    elif isinstance(mod, nn.BatchNorm2d):
        new = type(mod)(w[0], eps=mod.eps, momentum=mod.momentum, affine=mod.affine,
                        track_running_stats=mod.track_running_stats, **dd)
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
    for name, mod in new.named_modules():
        if hasattr(mod, "qkv") and hasattr(mod, "num_heads"):  # timm Attention: heads follow the qkv rows
            mod.attn_dim = mod.qkv.out_features // 3
            mod.num_heads = mod.attn_dim // mod.head_dim
    new.load_state_dict(sd)
    return new


def count_macs(model: nn.Module, img_size: int | None = None) -> int:
    """Forward MACs of one image, counted with hooks on the real ``model`` (any layer shapes, batch 1, eval mode).

    Same rules as :func:`rbdc.flops.forward_macs` (conv, linear, the two attention matmuls), but it needs no
    ``rbdc_arch``: use it for grown models whose widths no registered timm name describes. Attention matmuls are
    counted at the attention width ``attn_dim`` (= the embedding width for a stock ViT).
    """
    from .mixturegrowth import TemplateConv2d, TemplateLinear
    from ..flops import count_macs as flops_count_macs

    size = img_size or model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    p = next(model.parameters())
    was = model.training
    try:
        return flops_count_macs(model, lambda: model.eval()(torch.zeros(1, 3, size, size, device=p.device,
                                                                          dtype=p.dtype)),
                                conv_types=(TemplateConv2d,), linear_types=(TemplateLinear,))
    finally:
        model.train(was)


def _train_flops_per_image(self: nn.Module, img_size: int | None = None) -> int:
    from ..flops import TRAIN_FLOPS_PER_FORWARD

    return TRAIN_FLOPS_PER_FORWARD * 2 * count_macs(self, img_size)


def count_flops_by_hooks(model: nn.Module) -> nn.Module:
    """Give ``model`` a ``train_flops_per_image(img_size)`` method backed by :func:`count_macs` (in place).

    The training engine uses that method when a model has it, so models whose widths ``rbdc_arch`` cannot describe
    (GradMax's intermediate widths) are still counted right. It is a bound method, so ``copy.deepcopy`` rebinds it.
    """
    model.train_flops_per_image = types.MethodType(_train_flops_per_image, model)
    return model


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


def grow_optimizer_state(opt: torch.optim.Optimizer, old_model: nn.Module, new_model: nn.Module,
                         mapping: dict[str, list]) -> torch.optim.Optimizer:
    """Move ``opt`` onto ``new_model``'s parameters, carrying its state; slots of new units are zero.

    The optimizer is updated in place (so LR schedulers holding it keep working) and returned. Parameters are
    matched by name; every per-element state tensor (SGD ``momentum_buffer``, Adam/AdamW ``exp_avg``,
    ``exp_avg_sq``, ``max_exp_avg_sq``) is remapped with ``mapping`` (the ``info["mapping"]`` of a growth operator:
    state key -> ops) and filled with 0 where a unit is new; scalars such as ``step`` are kept.

    Raises:
        ValueError: when ``opt`` holds a tensor that is not a parameter of ``old_model``, or the two models'
            parameter names differ.
    """
    old_names = {id(p): n for n, p in old_model.named_parameters()}
    new_params = dict(new_model.named_parameters())
    if set(new_params) != set(old_names.values()):
        raise ValueError(f"parameter names differ between the old and new model: "
                         f"{sorted(set(new_params) ^ set(old_names.values()))[:5]}")
    for group in opt.param_groups:
        moved = []
        for p in group["params"]:
            if id(p) not in old_names:
                raise ValueError("the optimizer holds a tensor that is not a parameter of old_model: pass the model "
                                 "the optimizer was built for")
            name = old_names[id(p)]
            q = new_params[name]
            state = opt.state.pop(p, None)
            if state:
                opt.state[q] = _grow_slots(state, p.shape, mapping.get(name, []))
            moved.append(q)
        group["params"] = moved
    return opt


def grow_named_state(state: dict[str, dict], old_model: nn.Module, mapping: dict[str, list]) -> dict[str, dict]:
    """:func:`grow_optimizer_state` for name-keyed state (``rbdc.coupling.named_optimizer_state``, as checkpoints
    hold it): ``{parameter name: {slot: tensor}}`` of ``old_model`` -> the same for the grown model."""
    shapes = {n: p.shape for n, p in old_model.named_parameters()}
    return {n: _grow_slots(st, shapes[n], mapping.get(n, [])) for n, st in state.items()}


def _grow_slots(state: dict, shape: torch.Size, ops: list) -> dict:
    """Per-element slots (parameter-shaped tensors) remapped, new units 0 and never divided; scalars kept."""
    ops = [(d, i, s, None) for d, i, s, _ in ops]
    return {k: remap(v, ops, 0.0) if torch.is_tensor(v) and v.shape == shape else v for k, v in state.items()}


def batch_images(batch) -> torch.Tensor:
    """The image tensor of a batch: the batch itself, or the first element of a (images, targets, ...) tuple."""
    if torch.is_tensor(batch):
        return batch
    if isinstance(batch, (list, tuple)) and batch and torch.is_tensor(batch[0]):
        return batch[0]
    if isinstance(batch, dict) and torch.is_tensor(batch.get("image")):
        return batch["image"]
    raise ValueError(f"cannot find the images in a batch of type {type(batch).__name__}: pass a tensor or an "
                     f"(images, targets) tuple")
