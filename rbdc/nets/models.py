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

import importlib
from fractions import Fraction

import torch
import torch.nn as nn
import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import ResNet, VisionTransformer, generate_default_cfgs, register_model

from ..errors import UserError

__all__ = ["narrow", "scaled", "widen_name", "arch_of", "describe", "family_of", "settings", "check_supported",
           "import_path", "from_import_path"]


def family_of(model: nn.Module) -> str:
    if isinstance(model, VisionTransformer):
        return "vit"
    if isinstance(model, ResNet):
        return "resnet"
    raise ValueError(f"{type(model).__name__} is not a supported family: RBDC handles timm VisionTransformer and "
                     f"ResNet")


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
    return (VisionTransformer, ResNet, PatchEmbed, Block, ResPostBlock, Attention, AttentionPoolLatent, Mlp, GluMlp,
            SwiGLU, LayerScale, BasicBlock, Bottleneck, SEModule, SelectAdaptivePool2d, nn.Linear, nn.Conv2d,
            nn.BatchNorm2d, nn.LayerNorm, LayerNorm, nn.Identity, nn.Sequential, nn.ModuleList, nn.Flatten,
            nn.AdaptiveAvgPool2d, nn.MaxPool2d, nn.AvgPool2d,
            nn.Dropout, DropPath, DropBlock2d, PatchDropout)  # training-time noise, identity in eval mode


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
            raise ValueError(f"{name}: {what} has no RBDC coupling rule (supported: timm ViT blocks with Attention, "
                             f"Mlp/GluMlp/SwiGLU, LayerScale, attention pooling; ResNet Basic/Bottleneck blocks, "
                             f"squeeze-excitation); build the model without it")


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
    raise ValueError(f"setting {obj!r} is not an importable class or function: pass it by name or as a class "
                     f"defined at module level")


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
        model = timm.create_model(name, pretrained=False, **{
            **kwargs, "embed_dim": _divide(meta.embed_dim, factor, "embed_dim", name),
            "num_heads": _divide(heads, factor, "num_heads", name)})
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
        raise ValueError(f"cannot tell which timm model this {type(model).__name__} is: build it with "
                         f"timm.create_model or rbdc.narrow")
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
    kw.update(img_size=tuple(pe.img_size), patch_size=tuple(pe.patch_size), in_chans=pe.proj.in_channels,
              embed_dim=model.embed_dim, depth=len(model.blocks), num_heads=blk.attn.num_heads,
              qkv_bias=blk.attn.qkv.bias is not None, qk_norm=not isinstance(blk.attn.q_norm, nn.Identity),
              class_token=model.has_class_token, reg_tokens=model.num_reg_tokens, no_embed_class=model.no_embed_class,
              global_pool=model.global_pool, dynamic_img_size=model.dynamic_img_size,
              pre_norm=not isinstance(model.norm_pre, nn.Identity),
              fc_norm=not isinstance(model.fc_norm, nn.Identity), block_fn=type(blk), mlp_layer=type(blk.mlp),
              act_layer=type(blk.mlp.act), mlp_ratio=_mlp_hidden(blk.mlp, packed=True) / model.embed_dim)
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


def widen_name(name: str, factor: Fraction) -> str | None:
    """Registered timm name of ``name`` at ``factor`` x its width, or None (``rbdc_X_w4``, 2 -> ``rbdc_X_w2``)."""
    base, div = VARIANTS.get(name, (name, 1))
    f = Fraction(1, div) * factor
    if f == 1:
        return base
    if f.numerator == 1:
        return next((v for v, bd in VARIANTS.items() if bd == (base, f.denominator)), None)
    return None


def rebuild_name(name: str, factor: Fraction) -> str | None:
    """A timm name that builds ``name`` at ``factor`` x its width: :func:`widen_name`'s, or for any 1/d width a
    variant registered now (``rbdc_resnet34_w2``; :func:`scaled` registers such names on demand). None if none."""
    base, div = VARIANTS.get(name, (name, 1))
    f = Fraction(1, div) * factor
    if widen_name(name, factor) is None and f.numerator == 1:
        _register_narrow(base, f.denominator)
    return widen_name(name, factor)


def register_width_name(name: str) -> bool:
    """Register ``<base>_w<d>`` / ``rbdc_<base>_w<d>`` (``base`` a timm ViT/ResNet) if it is not yet: True if done."""
    stem, sep, div = name.rpartition("_w")
    if not sep or not div.isdigit() or int(div) < 2:
        return False
    for base in (stem, stem.removeprefix("rbdc_")):
        if timm.is_model(base) and base not in VARIANTS and _variant_name(base, int(div)) == name:
            _register_narrow(base, int(div))
            return True
    return False


def describe(model: nn.Module) -> dict:
    """The structural facts that must agree for models to be coupled (family, depth, widths, input, classes)."""
    fam = family_of(model)
    d = {"family": fam, "num_classes": model.num_classes}
    if fam == "vit":
        pe = model.patch_embed
        d.update(depth=len(model.blocks), patch_size=tuple(pe.patch_size), img_size=tuple(pe.img_size),
                 width=model.embed_dim, heads=model.blocks[0].attn.num_heads,
                 mlp_hidden=_mlp_hidden(model.blocks[0].mlp), class_token=model.cls_token is not None,
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
    **{f"rbdc_vit_{size}_patch4_32": _test_cfg(32, "patch_embed.proj", "head") for size in ("micro", "tiny", "small")},
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


def _ladder_vit(size: str, width: int, deit: str):
    """A rung of the width ladder: the nano's shape (32 px, patch 4, depth 4, heads of width 16) at ``width``."""
    name = f"rbdc_vit_{size}_patch4_32"

    def entrypoint(pretrained=False, **kwargs) -> VisionTransformer:
        args = dict(img_size=32, patch_size=4, embed_dim=width, depth=4, num_heads=width // 16, num_classes=10)
        return _build_vit(name, pretrained, args, kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = (f"The width ladder at 32 px: width {width} ({deit}), {width // 16} heads of 16, depth 4, "
                          f"patch 4 (rbdc_vit_nano_patch4_32 is width 64).")
    return register_model(entrypoint)


rbdc_vit_micro_patch4_32 = _ladder_vit("micro", 128, "twice the nano")
rbdc_vit_tiny_patch4_32 = _ladder_vit("tiny", 192, "DeiT-Ti's width")
rbdc_vit_small_patch4_32 = _ladder_vit("small", 384, "DeiT-S's width; its half is DeiT-Ti's")


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


def _variant_name(base: str, divisor: int) -> str:
    return f"{base}_w{divisor}" if base.startswith(("test_", "rbdc_")) else f"rbdc_{base}_w{divisor}"


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
    variant = _variant_name(base, divisor)
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
    "rbdc_vit_micro_patch4_32": (2, 4),
    "rbdc_vit_tiny_patch4_32": (2, 4),
    "rbdc_vit_small_patch4_32": (2, 4),
    "test_rbdc_resnet": (2, 4),
    "test_rbdc_resnet_basic": (2, 4),
}
for _base, _divisors in NARROW_VARIANTS.items():
    for _d in _divisors:
        _register_narrow(_base, _d)
