"""Width-scaled variants of timm model families (their registered names: :mod:`rbdc.nets.variants`).

RBDC (arXiv 2605.23656) couples k models of width w/k into one of width w. ``scaled(name, factor)`` builds the timm
model ``name`` with every width multiplied by ``factor`` and every other hyper-parameter unchanged:

* ViT/DeiT (``VisionTransformer``): ``embed_dim`` and ``num_heads`` scaled, ``head_dim`` kept, so
  DeiT-B/2 has DeiT-S dims and DeiT-B/4 DeiT-Ti dims.
* ResNet (``BasicBlock``/``Bottleneck``): every stage width (and so the bottleneck width and expansion output) and
  the stem. timm's single-conv stem is fixed at 64 channels whatever ``stem_width`` says, so it is rebuilt here.

The model remembers how it was built (``model.rbdc_arch``) so that :func:`rbdc.couple` can build its k x wider twin.
"""

from __future__ import annotations

import importlib
from fractions import Fraction

import torch
import torch.nn as nn
import timm
from timm.models import ResNet, VisionTransformer

__all__ = [
    "narrow",
    "scaled",
    "arch_of",
    "describe",
    "family_of",
    "settings",
    "check_supported",
    "import_path",
    "from_import_path",
]


def family_of(model: nn.Module) -> str:
    if isinstance(model, VisionTransformer):
        return "vit"
    if isinstance(model, ResNet):
        return "resnet"
    raise ValueError(
        f"{type(model).__name__} is not a supported family: RBDC handles timm VisionTransformer and ResNet"
    )


# --- which layers RBDC can scale and couple ------------------------------------------------------------------------


def _layer_types() -> tuple[type, ...]:
    """Module types with a coupling rule (see rbdc.coupling): every tensor they own is per-channel or a dense map
    between channel spaces that block-diagonalises (packed projections: see ``rbdc.coupling.packed_chunks``), and
    they mix no channels (squeeze-excitation pools each channel on its own)."""
    from timm.layers import (
        Attention,
        AttentionPoolLatent,
        DropBlock2d,
        DropPath,
        GluMlp,
        LayerNorm,
        LayerScale,
        Mlp,
        PatchDropout,
        PatchEmbed,
        SelectAdaptivePool2d,
        SEModule,
        SwiGLU,
    )
    from timm.models.resnet import BasicBlock, Bottleneck
    from timm.models.vision_transformer import Block, ResPostBlock

    return (
        VisionTransformer,
        ResNet,
        PatchEmbed,
        Block,
        ResPostBlock,
        Attention,
        AttentionPoolLatent,
        Mlp,
        GluMlp,
        SwiGLU,
        LayerScale,
        BasicBlock,
        Bottleneck,
        SEModule,
        SelectAdaptivePool2d,
        nn.Linear,
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.LayerNorm,
        LayerNorm,
        nn.Identity,
        nn.Sequential,
        nn.ModuleList,
        nn.Flatten,
        nn.AdaptiveAvgPool2d,
        nn.MaxPool2d,
        nn.AvgPool2d,
        nn.Dropout,
        DropPath,
        DropBlock2d,
        PatchDropout,
    )  # training-time noise, identity in eval mode


_ACTIVATION_MODULES = ("torch.nn.modules.activation", "timm.layers.activations", "timm.layers.activations_me")
_NOT_ELEMENTWISE = ("Softmax", "Softmin", "LogSoftmax", "Softmax2d", "GLU", "MultiheadAttention")


def _has_rule(module: nn.Module) -> bool:
    if type(module).__module__ in _ACTIVATION_MODULES:  # elementwise and parameter-free: acts per channel
        return type(module).__name__ not in _NOT_ELEMENTWISE and not any(True for _ in module.parameters(False))
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return False
    return type(module) in _layer_types() or type(module).__name__ == "PartLayerNorm"


def check_supported(model: nn.Module) -> None:
    """Refuse (``ValueError``) a model with a layer RBDC has no width-scaling/coupling rule for, naming it."""
    family_of(model)
    for name, module in model.named_modules():
        if not _has_rule(module):
            what = "grouped convolution (ResNeXt-style)" if isinstance(module, nn.Conv2d) else type(module).__name__
            raise ValueError(
                f"{name}: {what} has no RBDC coupling rule (supported: timm ViT blocks with Attention, "
                f"Mlp/GluMlp/SwiGLU, LayerScale, attention pooling; ResNet Basic/Bottleneck blocks, "
                f"squeeze-excitation); build the model without it"
            )


# --- settings: what must agree between parts, and between the parts and the coupled model --------------------------

# runtime switches and init-only options (LayerScale's init_values: its gamma is a weight): they do not change
# what the model computes
_NOT_SETTINGS = {"training", "fused_attn", "grad_checkpointing", "weight_init_mode", "fix_init", "init_values"}
_SKIP = object()


def import_path(obj) -> str:
    """``module.QualName`` of a class or function, for storing class-valued settings as text."""
    path = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
    try:
        if from_import_path(path) is obj:
            return path
    except (ImportError, AttributeError, ValueError):
        pass
    raise ValueError(
        f"setting {obj!r} is not an importable class or function: pass it by name or as a class defined at module level"
    )


def from_import_path(path: str):
    module, _, qualname = path.rpartition(".")
    if not module:
        raise ValueError(f"{path!r} is not an import path (module.Name)")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _plain(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        items = tuple(_plain(v) for v in value)
        return _SKIP if any(v is _SKIP for v in items) else items
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return _SKIP


def settings(model: nn.Module) -> dict[str, object]:
    """Every module's type, plain attributes (eps, kernel size, pooling, heads...) and tensors (dtype, or None where
    the layer has none, e.g. ``qkv_bias=False``), keyed ``"<module>.<attr>"``: equal for models built alike."""
    out: dict[str, object] = {}
    for name, module in model.named_modules():
        prefix = name or "model"
        # timm's LayerNorm computes nn.LayerNorm; PartLayerNorm's grouping is a coupling choice, not a setting
        is_ln = isinstance(module, nn.LayerNorm)
        out[f"{prefix}.type"] = _plain(nn.LayerNorm if is_ln else type(module))
        for attr, value in vars(module).items():
            if attr.startswith("_") or attr in _NOT_SETTINGS or (is_ln and attr == "parts"):
                continue
            value = _plain(value)
            if value is not _SKIP:
                out[f"{prefix}.{attr}"] = value
        for attr, t in [*module._parameters.items(), *module._buffers.items()]:
            out[f"{prefix}.{attr}"] = None if t is None else str(t.dtype)
    return out


def _meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs)


def _divide(value: int, factor: Fraction, what: str, name: str) -> int:
    out = value * factor
    if out.denominator != 1 or out < 1:
        raise ValueError(
            f"{name}: {what}={value} is not divisible by {1 / factor} (width factor {factor}); "
            f"choose a divisor that divides it"
        )
    return int(out)


def _resnet_widths(model: ResNet) -> tuple[tuple[int, ...], int, bool]:
    stages = [getattr(model, f"layer{i}") for i in range(1, 5)]
    expansion = type(stages[0][0]).expansion
    channels = tuple(_block_out(s[-1]) // expansion for s in stages)
    deep_stem = isinstance(model.conv1, nn.Sequential)
    stem = model.conv1[3].out_channels if deep_stem else model.conv1.out_channels
    return channels, stem, deep_stem


def _block_out(block: nn.Module) -> int:
    return (block.conv3 if hasattr(block, "conv3") else block.conv2).out_channels


def _rebuild_stem(model: ResNet, stem_chs: int) -> None:
    """Give a single-conv-stem ResNet a stem of ``stem_chs`` channels (timm hard-codes 64)."""
    old = model.conv1
    model.conv1 = nn.Conv2d(old.in_channels, stem_chs, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.bn1 = type(model.bn1)(stem_chs)
    model.feature_info[0]["num_chs"] = stem_chs
    first = model.layer1[0]
    out_chs = _block_out(first)
    old_in = first.conv1
    first.conv1 = nn.Conv2d(
        stem_chs, old_in.out_channels, old_in.kernel_size, old_in.stride, old_in.padding, bias=old_in.bias is not None
    )
    nn.init.kaiming_normal_(first.conv1.weight, mode="fan_out", nonlinearity="relu")
    # Same rule as timm's make_blocks: layer1 has stride 1, so a projection exists iff the channel counts differ.
    if stem_chs == out_chs:
        first.downsample = None
    else:
        from timm.models.resnet import downsample_avg, downsample_conv

        ref = model.layer2[0].downsample  # layer2 always projects: copy its kind (avg-down or not) and kernel
        ref_conv = next(m for m in ref.modules() if isinstance(m, nn.Conv2d))
        make = downsample_avg if any(isinstance(m, nn.AvgPool2d) for m in ref.modules()) else downsample_conv
        first.downsample = make(stem_chs, out_chs, ref_conv.kernel_size[0], stride=1, norm_layer=type(model.bn1))


def scaled(name: str, factor: Fraction | int | float = 1, **kwargs) -> nn.Module:
    """Build timm model ``name`` with every width multiplied by ``factor``.

    Args:
        name: a timm model name of the ViT or ResNet family (or one of this package's registered variants).
        factor: width factor, e.g. ``Fraction(1, 2)`` for half width, 2 for double width.
        **kwargs: passed to ``timm.create_model`` (num_classes, img_size, drop_path_rate, ...).
    """
    from .variants import register_width_name  # the registry builds on scaled(): imported here, or a cycle

    factor = Fraction(factor).limit_denominator(1024)
    if not timm.is_model(name) and not register_width_name(name):
        raise ValueError(f"unknown model {name!r}: pick a name from timm.list_models() or rbdc's registered variants")
    kwargs.pop("pretrained", None)
    meta = _meta_model(name, **kwargs)
    family = family_of(meta)
    if factor != 1:  # at factor 1 it is timm's own model, whatever its layers
        check_supported(meta)
    if factor == 1:
        model = timm.create_model(name, pretrained=False, **kwargs)
    elif family == "vit":
        heads = meta.blocks[0].attn.num_heads
        model = timm.create_model(
            name,
            pretrained=False,
            **{
                **kwargs,
                "embed_dim": _divide(meta.embed_dim, factor, "embed_dim", name),
                "num_heads": _divide(heads, factor, "num_heads", name),
            },
        )
    else:
        channels, stem, deep_stem = _resnet_widths(meta)
        chs = tuple(_divide(c, factor, "stage width", name) for c in channels)
        stem_chs = _divide(stem, factor, "stem width", name)
        extra = {"channels": chs}
        if deep_stem:  # timm honours stem_width for deep stems (the width read above; the stem outputs twice it)
            extra["stem_width"] = stem_chs
        model = timm.create_model(name, pretrained=False, **{**kwargs, **extra})
        if not deep_stem and model.conv1.out_channels != stem_chs:
            _rebuild_stem(model, stem_chs)
    model.rbdc_arch = {"name": name, "factor": factor, "kwargs": dict(kwargs)}
    return model


def narrow(model_name: str, divisor: int, **timm_kwargs) -> nn.Module:
    """Return timm model ``model_name`` at 1/``divisor`` width (see module docstring for what is divided)."""
    if divisor < 1 or int(divisor) != divisor:
        raise ValueError(f"divisor must be a positive integer, got {divisor!r}")
    return scaled(model_name, Fraction(1, int(divisor)), **timm_kwargs)


def arch_of(model: nn.Module) -> dict:
    """How ``model`` was built: ``{"name", "factor", "kwargs"}``.

    A plain timm model counts as factor 1, with the settings read back from its layers (:func:`stock_kwargs`):
    timm does not record the keyword arguments a model was created with.
    """
    arch = getattr(model, "rbdc_arch", None)
    if arch is not None:
        return arch
    name = model.pretrained_cfg.get("architecture") if getattr(model, "pretrained_cfg", None) else None
    if not name:
        raise ValueError(
            f"cannot tell which timm model this {type(model).__name__} is: build it with "
            f"timm.create_model or rbdc.narrow"
        )
    return {"name": name, "factor": Fraction(1), "kwargs": stock_kwargs(model)}


def stock_kwargs(model: nn.Module) -> dict:
    """The ``timm.create_model`` keyword arguments that rebuild a plain timm ViT/ResNet's structure, as far as its
    layers tell; :func:`rbdc.couple` checks the rebuilt model's :func:`settings` and refuses what this misses.
    Only ``num_classes`` for a model with layers RBDC has no rule for (``couple`` refuses it anyway)."""
    kw: dict = {"num_classes": model.num_classes}
    if not isinstance(model, (ResNet, VisionTransformer)) or not all(_has_rule(m) for m in model.modules()):
        return kw
    if isinstance(model, ResNet):
        kw.update(act_layer=type(model.act1), global_pool=model.global_pool.pool_type, drop_rate=model.drop_rate)
        last = model.layer4[-1].drop_path
        if isinstance(last, timm.layers.DropPath):  # timm's rates rise linearly to drop_path_rate at the last block
            kw["drop_path_rate"] = last.drop_prob
        return kw
    blk, pe = model.blocks[0], model.patch_embed
    kw.update(
        img_size=tuple(pe.img_size),
        patch_size=tuple(pe.patch_size),
        in_chans=pe.proj.in_channels,
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=blk.attn.num_heads,
        qkv_bias=blk.attn.qkv.bias is not None,
        qk_norm=not isinstance(blk.attn.q_norm, nn.Identity),
        class_token=model.has_class_token,
        reg_tokens=model.num_reg_tokens,
        no_embed_class=model.no_embed_class,
        global_pool=model.global_pool,
        dynamic_img_size=model.dynamic_img_size,
        pre_norm=not isinstance(model.norm_pre, nn.Identity),
        fc_norm=not isinstance(model.fc_norm, nn.Identity),
        block_fn=type(blk),
        mlp_layer=type(blk.mlp),
        act_layer=type(blk.mlp.act),
        mlp_ratio=_mlp_hidden(blk.mlp, packed=True) / model.embed_dim,
    )
    if not isinstance(getattr(blk, "ls1", nn.Identity()), nn.Identity):
        kw["init_values"] = 1.0  # any value builds LayerScale; its gamma is a weight
    last = getattr(model.blocks[-1], "drop_path1", None)
    if isinstance(last, timm.layers.DropPath):  # timm's rates rise linearly to drop_path_rate at the last block
        kw["drop_path_rate"] = last.drop_prob
    return kw


def _mlp_hidden(mlp: nn.Module, packed: bool = False) -> int:
    """The MLP's hidden width (``packed``: as ViT's ``mlp_ratio`` counts it, both halves of a GluMlp's fc1)."""
    from timm.layers import GluMlp

    return mlp.fc2.in_features * (2 if packed and isinstance(mlp, GluMlp) else 1)


def describe(model: nn.Module) -> dict:
    """The structural facts that must agree for models to be coupled (family, depth, widths, input, classes)."""
    fam = family_of(model)
    d = {"family": fam, "num_classes": model.num_classes}
    if fam == "vit":
        pe = model.patch_embed
        d.update(
            depth=len(model.blocks),
            patch_size=tuple(pe.patch_size),
            img_size=tuple(pe.img_size),
            width=model.embed_dim,
            heads=model.blocks[0].attn.num_heads,
            mlp_hidden=_mlp_hidden(model.blocks[0].mlp),
            class_token=model.cls_token is not None,
            reg_tokens=model.num_reg_tokens,
            global_pool=model.global_pool,
        )
    else:
        d.update(
            depth=tuple(len(getattr(model, f"layer{i}")) for i in range(1, 5)),
            block=type(model.layer1[0]).__name__,
            width=tuple(_block_out(getattr(model, f"layer{i}")[-1]) for i in range(1, 5)),
            stem=_resnet_widths(model)[1],
        )
    return d
