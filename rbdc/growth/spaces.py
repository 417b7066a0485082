"""Channel spaces: the tensor dimensions of a model that index the same units (what growing a network widens).

A *channel space* is a set of tensor dimensions that index the same units: e.g. in a ResNet Bottleneck, the output
channels of ``conv1``, the four ``bn1`` vectors and the input channels of ``conv2``. Growing a network means choosing,
for every space, which old unit each new unit comes from (or none: a brand-new unit), then applying that choice to
every *producer* dimension (the unit's own fan-in rows, biases, norm parameters, embeddings) and every *consumer*
dimension (the fan-out columns of the layers that read the unit). Spaces are discovered from the module structure of
timm ``ResNet`` (BasicBlock/Bottleneck, single or deep stem) and ``VisionTransformer`` (pre-norm ``Block`` with fused
``qkv``); every state-dict entry must belong to a space or be width-free, so an unknown layer is refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn
from timm.models import ResNet, VisionTransformer


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
    return [
        (f"{prefix}.{s}", 0, 1)
        for s in ("weight", "bias", "running_mean", "running_var", "gamma")
        if f"{prefix}.{s}" in keys
    ]


def _stem_spaces(model: ResNet, keys: set) -> list[Space]:
    """The stem's spaces; the last one (``"stem"``) is the residual stream the first block reads."""
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
    return out


def _resnet_spaces(model: ResNet) -> list[Space]:
    keys = set(model.state_dict())
    out = _stem_spaces(model, keys)
    cur = out[-1]  # the residual stream the next block reads
    for s in range(1, 5):
        for b, block in enumerate(getattr(model, f"layer{s}")):
            p = f"layer{s}.{b}"
            if getattr(block, "se", None) is not None or not isinstance(
                getattr(block, "aa", nn.Identity()), nn.Identity
            ):
                raise ValueError(
                    f"{p}: squeeze-excite / anti-aliasing blocks have no growth rule; use a plain "
                    f"timm ResNet (BasicBlock or Bottleneck)"
                )
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
                out.append(
                    Space(
                        f"{p}.{conv}",
                        "inner",
                        producers=[(f"{p}.{conv}.weight", 0, 1)] + _norm_keys(keys, f"{p}.{bn}"),
                        consumers=[(f"{p}.{nxt_conv}.weight", 1, 1)],
                        fan_in=f"{p}.{conv}",
                        fan_out=f"{p}.{nxt_conv}",
                        norm=f"{p}.{bn}",
                        act=f"{p}.{act}",
                    )
                )
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
            raise ValueError(
                f"{p}: only timm's pre-norm Block with fused-qkv Attention and Mlp can grow, got "
                f"{type(blk).__name__}/{type(blk.attn).__name__}/{type(blk.mlp).__name__}"
            )
        if blk.attn.gate is not None:
            raise ValueError(f"{p}.attn: gated attention has no growth rule")
        emb.producers += _norm_keys(keys, f"{p}.norm1") + _norm_keys(keys, f"{p}.norm2")
        emb.producers += _norm_keys(keys, f"{p}.ls1") + _norm_keys(keys, f"{p}.ls2")
        emb.producers += [
            (f"{p}.{m}.{s}", 0, 1)
            for m in ("attn.proj", "mlp.fc2")
            for s in ("weight", "bias")
            if f"{p}.{m}.{s}" in keys
        ]
        emb.consumers += [(f"{p}.attn.qkv.weight", 1, 1), (f"{p}.mlp.fc1.weight", 1, 1)]
        heads = Space(
            f"{p}.attn",
            "inner",
            unit=blk.attn.head_dim,
            producers=[(f"{p}.attn.qkv.{s}", 0, 3) for s in ("weight", "bias") if f"{p}.attn.qkv.{s}" in keys]
            + _norm_keys(keys, f"{p}.attn.norm"),
            consumers=[(f"{p}.attn.proj.weight", 1, 1)],
            fan_in=f"{p}.attn.qkv",
            fan_out=f"{p}.attn.proj",
        )
        mlp = Space(
            f"{p}.mlp",
            "inner",
            producers=[(f"{p}.mlp.fc1.{s}", 0, 1) for s in ("weight", "bias") if f"{p}.mlp.fc1.{s}" in keys]
            + _norm_keys(keys, f"{p}.mlp.norm"),
            consumers=[(f"{p}.mlp.fc2.weight", 1, 1)],
            fan_in=f"{p}.mlp.fc1",
            fan_out=f"{p}.mlp.fc2",
            act=f"{p}.mlp.act",
        )
        out += [heads, mlp]
    emb.producers += _norm_keys(keys, "norm") + _norm_keys(keys, "fc_norm")
    emb.consumers += [(f"{h}.weight", 1, 1) for h in ("head", "head_dist") if f"{h}.weight" in keys]
    _check_covered(out, keys, fixed={"head.bias", "head_dist.bias"})
    return out


def _check_covered(out: list[Space], keys: set, fixed: set) -> None:
    covered = {k for s in out for k, _, _ in s.producers + s.consumers} | fixed
    missing = sorted(k for k in keys if k not in covered and not k.endswith(_FIXED_SUFFIXES))
    if missing:
        raise ValueError(
            f"no growth rule for {missing[:5]}: this layer kind is not supported by the growth "
            f"operators (timm ResNet BasicBlock/Bottleneck and plain ViT/DeiT are)"
        )


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
