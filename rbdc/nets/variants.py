"""The model names rbdc adds to timm's registry: the CPU-sized ViTs and ResNets of the tests and studies
(``test_rbdc_*``, ``rbdc_vit_*``) and the narrow variants ``rbdc_<model>_w<divisor>`` of the families it scales
(:func:`rbdc.nets.models.narrow`). Importing :mod:`rbdc` registers them.
"""

from __future__ import annotations

from fractions import Fraction

import torch.nn as nn
import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import ResNet, VisionTransformer, generate_default_cfgs, register_model

from ..errors import UserError
from .models import _meta_model, family_of, narrow

__all__ = ["VARIANTS", "NARROW_VARIANTS", "widen_name", "rebuild_name", "register_width_name"]


# --- registry -----------------------------------------------------------------------------------------------------
# Every entrypoint builds through timm's build_model_with_cfg, so the variants honour timm's model contract: a
# pretrained_cfg of their own, ``features_only`` (ResNet: FeatureListNet; ViT: FeatureGetterNet, as timm's ViTs) and
# ``pretrained=True, pretrained_cfg_overlay=dict(file=...)`` loading a checkpoint.


def _test_cfg(size: int, first_conv: str, classifier: str, pool: int | None = None) -> dict:
    return {
        "num_classes": 10,
        "input_size": (3, size, size),
        "pool_size": (pool, pool) if pool else None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": first_conv,
        "classifier": classifier,
    }


# A narrow variant keeps what its base's cfg says about inputs and layer names, not where weights come from.
_CFG_KEYS = (
    "num_classes",
    "input_size",
    "pool_size",
    "crop_pct",
    "crop_mode",
    "interpolation",
    "mean",
    "std",
    "first_conv",
    "classifier",
    "fixed_input_size",
)


def _variant_cfg(base: str) -> dict:
    cfg = timm.models.get_pretrained_cfg(base).to_dict()
    return {k: cfg[k] for k in _CFG_KEYS if k in cfg}


def _require_weights(variant: str, pretrained: bool, kwargs: dict) -> None:
    """timm only warns when ``pretrained=True`` finds no weights; these variants have none unless a file is given."""
    if not pretrained:
        return
    from timm.models import resolve_pretrained_cfg

    cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.get("pretrained_cfg"),
        pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"),
    )
    if not (cfg.file or cfg.url or cfg.hf_hub_id or cfg.state_dict):
        raise UserError(
            f"{variant} has no published weights: pass pretrained_cfg_overlay=dict(file=CHECKPOINT) "
            f"(a .safetensors file rbdc wrote), or train it with rbdc"
        )


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
default_cfgs = generate_default_cfgs(
    {
        "test_rbdc_vit": _test_cfg(32, "patch_embed.proj", "head"),
        "rbdc_vit_mini_patch8_64": _test_cfg(64, "patch_embed.proj", "head"),
        "rbdc_vit_nano_patch4_32": _test_cfg(32, "patch_embed.proj", "head"),
        **{
            f"rbdc_vit_{size}_patch4_32": _test_cfg(32, "patch_embed.proj", "head")
            for size in ("micro", "tiny", "small")
        },
        "test_rbdc_resnet": _test_cfg(64, "conv1", "fc", pool=2),
        "test_rbdc_resnet_basic": _test_cfg(64, "conv1", "fc", pool=2),
    }
)


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
    entrypoint.__doc__ = (
        f"The width ladder at 32 px: width {width} ({deit}), {width // 16} heads of 16, depth 4, "
        f"patch 4 (rbdc_vit_nano_patch4_32 is width 64)."
    )
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

        extra = dict(
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=kwargs.pop("out_indices", min(3, len(meta.blocks))), feature_cls="getter"),
        )
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


# --- names of a model at another width ---------------------------------------------------------------------------


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
