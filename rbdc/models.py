"""Width-scaled variants of timm model families, registered in timm's registry.

RBDC (arXiv 2605.23656) couples k models of width w/k into one of width w. ``scaled(name, factor)`` builds the timm
model ``name`` with every width multiplied by ``factor`` and every other hyper-parameter unchanged:

* ViT/DeiT (``VisionTransformer``): ``embed_dim`` and ``num_heads`` scaled, ``head_dim`` kept, so
  DeiT-B/2 has DeiT-S dims and DeiT-B/4 DeiT-Ti dims.
* ResNet (``BasicBlock``/``Bottleneck``): every stage width (and so the bottleneck width and expansion output) and
  the stem. timm's single-conv stem is fixed at 64 channels whatever ``stem_width`` says, so it is rebuilt here.

The model remembers how it was built (``model.rbdc_arch``) so that :func:`rbdc.couple` can build its k x wider twin.
"""
from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn as nn
import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import ResNet, VisionTransformer, generate_default_cfgs, register_model

from .errors import UserError

__all__ = ["narrow", "scaled", "widen_name", "arch_of", "describe", "family_of"]


def family_of(model: nn.Module) -> str:
    if isinstance(model, VisionTransformer):
        return "vit"
    if isinstance(model, ResNet):
        return "resnet"
    raise ValueError(f"{type(model).__name__} is not a supported family: RBDC handles timm VisionTransformer and "
                     f"ResNet")


def _meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs)


def _divide(value: int, factor: Fraction, what: str, name: str) -> int:
    out = value * factor
    if out.denominator != 1 or out < 1:
        raise ValueError(f"{name}: {what}={value} is not divisible by {1 / factor} (width factor {factor}); "
                         f"choose a divisor that divides it")
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
    first.conv1 = nn.Conv2d(stem_chs, old_in.out_channels, old_in.kernel_size, old_in.stride, old_in.padding,
                            bias=old_in.bias is not None)
    nn.init.kaiming_normal_(first.conv1.weight, mode="fan_out", nonlinearity="relu")
    # Same rule as timm's make_blocks: layer1 has stride 1, so a projection exists iff the channel counts differ.
    if stem_chs == out_chs:
        first.downsample = None
    else:
        from timm.models.resnet import downsample_avg, downsample_conv
        ref = model.layer2[0].downsample  # layer2 always projects: copy its kind (avg-down or not) and kernel
        ref_conv = next(m for m in ref.modules() if isinstance(m, nn.Conv2d))
        make = downsample_avg if any(isinstance(m, nn.AvgPool2d) for m in ref.modules()) else downsample_conv
        first.downsample = make(stem_chs, out_chs, ref_conv.kernel_size[0], stride=1,
                                norm_layer=type(model.bn1))


def scaled(name: str, factor: Fraction | int | float = 1, **kwargs) -> nn.Module:
    """Build timm model ``name`` with every width multiplied by ``factor``.

    Args:
        name: a timm model name of the ViT or ResNet family (or one of this package's registered variants).
        factor: width factor, e.g. ``Fraction(1, 2)`` for half width, 2 for double width.
        **kwargs: passed to ``timm.create_model`` (num_classes, img_size, drop_path_rate, ...).
    """
    factor = Fraction(factor).limit_denominator(1024)
    if not timm.is_model(name):
        raise ValueError(f"unknown model {name!r}: pick a name from timm.list_models() or rbdc's registered variants")
    kwargs.pop("pretrained", None)
    meta = _meta_model(name, **kwargs)
    family = family_of(meta)
    if factor == 1:
        model = timm.create_model(name, pretrained=False, **kwargs)
    elif family == "vit":
        heads = meta.blocks[0].attn.num_heads
        model = timm.create_model(name, pretrained=False, **{
            **kwargs, "embed_dim": _divide(meta.embed_dim, factor, "embed_dim", name),
            "num_heads": _divide(heads, factor, "num_heads", name)})
    else:
        if any(getattr(m, "groups", 1) != 1 for m in meta.modules() if isinstance(m, nn.Conv2d)):
            raise ValueError(f"{name}: grouped convolutions (ResNeXt-style) cannot be width-scaled block-diagonally")
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
    """How ``model`` was built: ``{"name", "factor", "kwargs"}`` (a plain timm model counts as factor 1)."""
    arch = getattr(model, "rbdc_arch", None)
    if arch is not None:
        return arch
    name = model.pretrained_cfg.get("architecture") if getattr(model, "pretrained_cfg", None) else None
    if not name:
        raise ValueError(f"cannot tell which timm model this {type(model).__name__} is: build it with "
                         f"timm.create_model or rbdc.narrow")
    return {"name": name, "factor": Fraction(1), "kwargs": {"num_classes": model.num_classes}}


def widen_name(name: str, factor: Fraction) -> str | None:
    """Registered timm name of ``name`` at ``factor`` x its width, or None (``rbdc_X_w4``, 2 -> ``rbdc_X_w2``)."""
    base, div = VARIANTS.get(name, (name, 1))
    f = Fraction(1, div) * factor
    if f == 1:
        return base
    if f.numerator == 1:
        return next((v for v, bd in VARIANTS.items() if bd == (base, f.denominator)), None)
    return None


def describe(model: nn.Module) -> dict:
    """The structural facts that must agree for models to be coupled (family, depth, widths, input, classes)."""
    fam = family_of(model)
    d = {"family": fam, "num_classes": model.num_classes}
    if fam == "vit":
        pe = model.patch_embed
        d.update(depth=len(model.blocks), patch_size=tuple(pe.patch_size), img_size=tuple(pe.img_size),
                 width=model.embed_dim, heads=model.blocks[0].attn.num_heads,
                 mlp_hidden=model.blocks[0].mlp.fc1.out_features, class_token=model.cls_token is not None,
                 reg_tokens=model.num_reg_tokens, global_pool=model.global_pool)
    else:
        d.update(depth=tuple(len(getattr(model, f"layer{i}")) for i in range(1, 5)),
                 block=type(model.layer1[0]).__name__, width=tuple(_block_out(getattr(model, f"layer{i}")[-1])
                                                                   for i in range(1, 5)),
                 stem=_resnet_widths(model)[1])
    return d


# --- registry -----------------------------------------------------------------------------------------------------
# Every entrypoint builds through timm's build_model_with_cfg, so the variants honour timm's model contract: a
# pretrained_cfg of their own, ``features_only`` (ResNet: FeatureListNet; ViT: FeatureGetterNet, as timm's ViTs) and
# ``pretrained=True, pretrained_cfg_overlay=dict(file=...)`` loading a checkpoint.

def _test_cfg(size: int, first_conv: str, classifier: str, pool: int | None = None) -> dict:
    return {"num_classes": 10, "input_size": (3, size, size), "pool_size": (pool, pool) if pool else None,
            "crop_pct": 1.0, "interpolation": "bilinear", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
            "first_conv": first_conv, "classifier": classifier}


# A narrow variant keeps what its base's cfg says about inputs and layer names, not where weights come from.
_CFG_KEYS = ("num_classes", "input_size", "pool_size", "crop_pct", "crop_mode", "interpolation", "mean", "std",
             "first_conv", "classifier", "fixed_input_size")


def _variant_cfg(base: str) -> dict:
    cfg = timm.models.get_pretrained_cfg(base).to_dict()
    return {k: cfg[k] for k in _CFG_KEYS if k in cfg}


def _require_weights(variant: str, pretrained: bool, kwargs: dict) -> None:
    """timm only warns when ``pretrained=True`` finds no weights; these variants have none unless a file is given."""
    if not pretrained:
        return
    from timm.models import resolve_pretrained_cfg
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                 pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"))
    if not (cfg.file or cfg.url or cfg.hf_hub_id or cfg.state_dict):
        raise UserError(f"{variant} has no published weights: pass pretrained_cfg_overlay=dict(file=CHECKPOINT) "
                        f"(a .safetensors file rbdc wrote), or train it with rbdc")


def _build_vit(variant: str, pretrained: bool, args: dict, kwargs: dict) -> VisionTransformer:
    _require_weights(variant, pretrained, kwargs)
    depth = kwargs.get("depth", args["depth"])
    args = dict(args, out_indices=min(3, depth))  # timm's ViT default (the last 3 blocks) needs depth >= 3
    return timm.models.vision_transformer._create_vision_transformer(variant, pretrained, **dict(args, **kwargs))


def _build_resnet(variant: str, pretrained: bool, args: dict, kwargs: dict) -> ResNet:
    from timm.models.resnet import _create_resnet
    _require_weights(variant, pretrained, kwargs)
    return _create_resnet(variant, pretrained, **dict(args, **kwargs))


# timm's register_model reads this module-level name for the entrypoints defined here.
default_cfgs = generate_default_cfgs({
    "test_rbdc_vit": _test_cfg(32, "patch_embed.proj", "head"),
    "rbdc_vit_mini_patch8_64": _test_cfg(64, "patch_embed.proj", "head"),
    "rbdc_vit_nano_patch4_32": _test_cfg(32, "patch_embed.proj", "head"),
    "test_rbdc_resnet": _test_cfg(64, "conv1", "fc", pool=2),
    "test_rbdc_resnet_basic": _test_cfg(64, "conv1", "fc", pool=2),
})


@register_model
def test_rbdc_vit(pretrained=False, **kwargs) -> VisionTransformer:
    """Tiny ViT for CPU tests: 32 px, patch 8, width 64, 4 heads (head_dim 16), depth 2; divisible by 2 and 4."""
    args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=10)
    return _build_vit("test_rbdc_vit", pretrained, args, kwargs)


@register_model
def rbdc_vit_mini_patch8_64(pretrained=False, **kwargs) -> VisionTransformer:
    """DeiT-style ViT sized for CPU studies on 64-px Imagenette: width 192, 6 heads (head_dim 32), depth 6."""
    args = dict(img_size=64, patch_size=8, embed_dim=192, depth=6, num_heads=6, num_classes=10)
    return _build_vit("rbdc_vit_mini_patch8_64", pretrained, args, kwargs)


@register_model
def rbdc_vit_nano_patch4_32(pretrained=False, **kwargs) -> VisionTransformer:
    """DeiT-style ViT for the quickstart at 32 px: width 64, 4 heads (head_dim 16), depth 4."""
    args = dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, num_classes=10)
    return _build_vit("rbdc_vit_nano_patch4_32", pretrained, args, kwargs)


@register_model
def test_rbdc_resnet(pretrained=False, **kwargs) -> ResNet:
    """Tiny Bottleneck ResNet for CPU tests: one block per stage, stage widths 16/32/64/128 (x4 expansion)."""
    from timm.models.resnet import Bottleneck
    args = dict(block=Bottleneck, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), num_classes=10)
    return _build_resnet("test_rbdc_resnet", pretrained, args, kwargs)


@register_model
def test_rbdc_resnet_basic(pretrained=False, **kwargs) -> ResNet:
    """Tiny BasicBlock ResNet for CPU tests: one block per stage, stage widths 16/32/64/128 (stem 64, as in timm)."""
    from timm.models.resnet import BasicBlock
    args = dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), num_classes=10)
    return _build_resnet("test_rbdc_resnet_basic", pretrained, args, kwargs)


VARIANTS: dict[str, tuple[str, int]] = {}  # registered narrow name -> (base model, divisor)


def _build_narrow(variant: str, pretrained: bool, kwargs: dict) -> nn.Module:
    from timm.models import build_model_with_cfg
    base, divisor = VARIANTS[variant]
    _require_weights(variant, pretrained, kwargs)
    meta = _meta_model(base)
    extra = {}
    if family_of(meta) == "vit":  # what timm's _create_vision_transformer passes
        from timm.models.vision_transformer import checkpoint_filter_fn
        extra = dict(pretrained_filter_fn=checkpoint_filter_fn, feature_cfg=dict(
            out_indices=kwargs.pop("out_indices", min(3, len(meta.blocks))), feature_cls="getter"))
    return build_model_with_cfg(lambda **kw: narrow(base, divisor, **kw), variant, pretrained, **extra, **kwargs)


def _register_narrow(base: str, divisor: int) -> None:
    variant = f"{base}_w{divisor}" if base.startswith(("test_", "rbdc_")) else f"rbdc_{base}_w{divisor}"
    VARIANTS[variant] = (base, divisor)
    default_cfgs.update(generate_default_cfgs({variant: _variant_cfg(base)}))

    def entrypoint(pretrained=False, **kwargs):
        return _build_narrow(variant, pretrained, kwargs)

    entrypoint.__name__ = variant
    entrypoint.__qualname__ = variant
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"{base} at 1/{divisor} width (RBDC narrow variant)."
    register_model(entrypoint)


NARROW_VARIANTS = {
    "deit_small_patch16_224": (2,),
    "deit_base_patch16_224": (2, 4),
    "vit_base_patch16_224": (2, 4),
    "resnet18": (2, 4),
    "resnet26": (2, 4),
    "resnet50": (2, 4),
    "test_rbdc_vit": (2, 4),
    "rbdc_vit_mini_patch8_64": (2,),
    "rbdc_vit_nano_patch4_32": (2, 4),
    "test_rbdc_resnet": (2, 4),
    "test_rbdc_resnet_basic": (2, 4),
}
for _base, _divisors in NARROW_VARIANTS.items():
    for _d in _divisors:
        _register_narrow(_base, _d)
