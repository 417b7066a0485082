"""Block-diagonal coupling of k narrow models into one model of k x width (RBDC, arXiv 2605.23656).

Per-layer rules (reconstructed; see ``../shared/reference/methods.md`` section 2 and the README):

* hidden Linear/Conv: block-diagonal, off-diagonal blocks zero (or ``offdiag_std`` noise) and trainable;
* layers that read the shared image (patch embedding, ResNet stem) : stacked along output channels;
* cls token, register tokens, position embedding: concatenated along channels;
* packed projections (one Linear holding several along its outputs: attention qkv, attention pooling's kv, a
  GluMlp/SwiGLUPacked fc1): block-diagonal separately for each projection, so the heads of model i form the i-th
  contiguous head group and each head reads only its own model's channels; proj block-diagonal;
* BatchNorm: weight, bias, running mean/var concatenated (exact in train and eval mode);
* LayerNorm: weight, bias concatenated. With ``norm="plain"`` (default, parameter-free, a standard timm model) the
  statistics are taken over the full width, so they mix the parts and the coupled ViT is *not* exactly the ensemble;
  ``norm="grouped"`` swaps in :class:`~rbdc.nets.layers.PartLayerNorm`, which is exact but no longer a stock timm model;
* classifier: weights concatenated along inputs, biases summed; both scaled by 1/k for ``head="mean"`` (logits =
  mean of the parts' logits) or 1 for ``head="sum"``.

The layer rules are derived from tensor shapes (which dimension grew k-fold) within the layer types listed in
``rbdc.nets.models.check_supported``: every parameter and buffer of the parts has a rule, or ``couple`` refuses, naming
the layer or key (e.g. timm's ``ParallelScalingBlock``, whose one input projection packs q, k, v and the MLP).
The parts must agree in every setting (``rbdc.nets.models.settings``: layer types, eps, biases, LayerScale, pooling...),
and the wide model is rebuilt with them and checked against them, so a coupled model is exact (plain LN aside) or
refused, never silently different.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

import torch
import torch.nn as nn

from .nets.layers import group_norms
from .nets.models import arch_of, check_supported, describe, scaled, settings
from .nets.variants import widen_name
from .data import TRAIN_SIZES
from .flops import TRAIN_FLOPS_PER_FORWARD, forward_macs

__all__ = ["couple", "couple_tree", "plan", "classifier_keys"]

HEADS = ("mean", "sum")
NORMS = ("plain", "grouped")


def classifier_keys(model: nn.Module) -> tuple[str, ...]:
    """Module names of the classifier(s), from timm's pretrained_cfg (``head``/``head_dist`` or ``fc``)."""
    cls = model.pretrained_cfg.get("classifier", "head")
    return tuple(cls) if isinstance(cls, (tuple, list)) else (cls,)


def packed_chunks(model: nn.Module) -> dict[str, int]:
    """Linear layers packing several projections along their outputs, and how many: ``{module name: count}``."""
    from timm.layers import Attention, AttentionPoolLatent, GluMlp

    packed = {Attention: "qkv", AttentionPoolLatent: "kv", GluMlp: "fc1"}
    counts = {"qkv": 3, "kv": 2, "fc1": 2}
    out = {}
    for name, m in model.named_modules():
        attr = next((a for t, a in packed.items() if isinstance(m, t)), None)
        if attr is not None and isinstance(getattr(m, attr, None), nn.Linear):
            out[f"{name}.{attr}" if name else attr] = counts[attr]
    return out


def _check_compatible(models: Sequence[nn.Module]) -> None:
    for m in models:
        check_supported(m)
    ref = describe(models[0])
    for i, m in enumerate(models[1:], start=1):
        d = describe(m)
        for key in ref:
            if d.get(key) != ref[key]:
                raise ValueError(
                    f"cannot couple: model 0 and model {i} differ in {key} ({ref[key]} vs {d.get(key)}); "
                    f"couple only models of the same family and structure"
                )
    ref = settings(models[0])
    for i, m in enumerate(models[1:], start=1):
        d = settings(m)
        key = next((key for key in {**ref, **d} if ref.get(key) != d.get(key)), None)
        if key is not None:
            raise ValueError(
                f"cannot couple: model 0 and model {i} differ in {key} ({ref.get(key)} vs {d.get(key)}); "
                f"couple only models built with the same settings"
            )
    archs = [arch_of(m) for m in models]
    if any(a["factor"] != archs[0]["factor"] or a["name"] != archs[0]["name"] for a in archs):
        raise ValueError(
            "cannot couple: models were built from different timm names/widths "
            f"({sorted({(a['name'], str(a['factor'])) for a in archs})})"
        )
    devices = {t.device for m in models for t in m.state_dict().values()}
    if len(devices) > 1:
        raise ValueError(
            f"cannot couple: the models are on different devices ({sorted(map(str, devices))}); move them to one"
        )


def _widened(a, b, k: int) -> bool:
    """Whether setting ``b`` of the k x wider model matches ``a`` of a part: equal, or a width grown k-fold."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_widened(x, y, k) for x, y in zip(a, b))
    if type(a) is float and type(b) is float:  # e.g. drop-path rates rebuilt from a float32 linspace
        return math.isclose(a, b, rel_tol=1e-6)
    return a == b or (type(a) is int and type(b) is int and b == k * a)


def _check_rebuilt(part: nn.Module, wide: nn.Module, k: int, name: str) -> None:
    ref, got = settings(part), settings(wide)
    for key in {**ref, **got}:
        if not _widened(ref.get(key), got.get(key), k):
            raise ValueError(
                f"cannot couple: the {k} x wider {name} rebuilt from the parts' recorded settings "
                f"differs in {key} (parts {ref.get(key)}, rebuilt {got.get(key)}); build the parts "
                f"with rbdc.scaled(name, factor, **settings) so that their settings are recorded"
            )


def _block_diag(parts: list[torch.Tensor], shape: torch.Size, offdiag_std: float, gen) -> torch.Tensor:
    out = torch.zeros(shape, dtype=parts[0].dtype)
    if offdiag_std > 0:
        out.normal_(0.0, offdiag_std, generator=gen)
    o, c = parts[0].shape[:2]
    for i, p in enumerate(parts):
        out[i * o : (i + 1) * o, i * c : (i + 1) * c] = p
    return out


def _couple_tensor(
    key: str,
    parts: list[torch.Tensor],
    shape: torch.Size,
    *,
    head_scale: float | None,
    offdiag_std: float,
    gen,
    chunks: int = 1,
) -> torch.Tensor:
    k, p = len(parts), parts[0]
    if head_scale is not None:  # classifier: logits = scale * sum_i (W_i x_i + b_i)
        return (torch.cat(parts, dim=1) if p.ndim == 2 else torch.stack(parts).sum(0)) * head_scale
    if key.endswith("num_batches_tracked"):
        return torch.stack(parts).max()
    if chunks > 1:  # packed projections, e.g. timm's qkv layout [q | k | v] along outputs
        split = [p_.chunk(chunks, dim=0) for p_ in parts]
        sub = torch.Size((shape[0] // chunks, *shape[1:]))
        if p.ndim == 1:
            return torch.cat([torch.cat([q[j] for q in split]) for j in range(chunks)])
        return torch.cat([_block_diag([q[j] for q in split], sub, offdiag_std, gen) for j in range(chunks)])
    grown = [d for d in range(p.ndim) if shape[d] != p.shape[d]]
    if not grown:  # e.g. qk_norm's weights, shared by all heads
        raise ValueError(
            f"no coupling rule for {key}: its shape {tuple(p.shape)} does not grow with the width, so "
            f"the coupled model would share one tensor between the parts; build them without that layer"
        )
    if any(shape[d] != k * p.shape[d] for d in grown):
        raise ValueError(f"no coupling rule for {key}: part shape {tuple(p.shape)}, coupled shape {tuple(shape)}")
    if grown == [0, 1]:
        return _block_diag(parts, shape, offdiag_std, gen)
    if len(grown) == 1:
        return torch.cat(parts, dim=grown[0])
    raise ValueError(f"no coupling rule for {key}: dims {grown} grew")


def _coupled_state(models: Sequence[nn.Module], wide: nn.Module, head: str, offdiag_std: float, seed: int) -> dict:
    """The state dict of ``wide`` coupled from the parts' tensors, key by key (the off-diagonal noise drawn in
    ``wide``'s key order)."""
    k = len(models)
    heads = classifier_keys(wide)
    packed = packed_chunks(wide)
    gen = torch.Generator().manual_seed(seed)
    part_sds = [m.state_dict() for m in models]
    wide_sd = wide.state_dict()
    if set(wide_sd) != set(part_sds[0]):
        raise ValueError(
            f"cannot couple: parameter names differ from the k x wider model "
            f"({sorted(set(wide_sd) ^ set(part_sds[0]))[:5]})"
        )
    new = {}
    for key, ref in wide_sd.items():
        is_head = key.rpartition(".")[0] in heads
        new[key] = _couple_tensor(
            key,
            [sd[key].detach().cpu() for sd in part_sds],
            ref.shape,
            head_scale=(1.0 / k if head == "mean" else 1.0) if is_head else None,
            offdiag_std=offdiag_std,
            gen=gen,
            chunks=packed.get(key.rpartition(".")[0], 1),
        ).to(ref.dtype)
    return new


def _group_layer_norms(wide: nn.Module, part: nn.Module, k: int) -> None:
    """``norm="grouped"``: every LayerNorm of ``wide`` normalises k x as many groups apart as the part's does (a
    part coupled with grouped norms already has several)."""
    parts = dict(part.named_modules())
    group_norms(
        wide,
        {
            name: k * getattr(parts[name], "parts", 1)
            for name, mod in wide.named_modules()
            if isinstance(mod, nn.LayerNorm)
        },
    )


def couple(
    models: Sequence[nn.Module], head: str = "mean", norm: str = "plain", offdiag_std: float = 0.0, seed: int = 0
) -> nn.Module:
    """Couple k >= 2 narrow models of identical structure into one standard timm model of k x width.

    Args:
        models: the narrow models (same family, depth, patch/image size, classes, width).
        head: ``"mean"`` (coupled logits = mean of the parts' logits) or ``"sum"``.
        norm: ``"plain"`` (LayerNorm over the full width; not exact for ViTs) or ``"grouped"`` (exact).
        offdiag_std: std of the noise put in the off-diagonal blocks (0 = exact RBDC init).
        seed: seeds that noise.

    Returns:
        The coupled model, in the train/eval mode, dtype and device of ``models[0]``, with ``rbdc_arch`` recording
        its width.

    Raises:
        ValueError: the parts differ in a setting, or hold a layer or tensor with no coupling rule.
    """
    if len(models) < 2:
        raise ValueError(f"couple needs k >= 2 models, got {len(models)}")
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    _check_compatible(models)
    k = len(models)
    arch = arch_of(models[0])
    wide = scaled(arch["name"], arch["factor"] * k, **arch["kwargs"])
    device = next(iter(models[0].state_dict().values())).device
    wide.to(dtype=next((t.dtype for t in models[0].state_dict().values() if t.is_floating_point()), None))
    _check_rebuilt(models[0], wide, k, arch["name"])
    wide.load_state_dict(_coupled_state(models, wide, head, offdiag_std, seed))
    if norm == "grouped":
        _group_layer_norms(wide, models[0], k)
    wide.rbdc_arch = {**arch, "factor": arch["factor"] * k}
    wide.rbdc_coupling = {"k": k, "head": head, "norm": norm, "offdiag_std": offdiag_std}
    return wide.to(device).train(models[0].training)


def couple_tree(models: Sequence[nn.Module], k: int = 2, **couple_kwargs) -> nn.Module:
    """Couple k**r leaves level by level (groups of k consecutive models) into one model of k**r x width."""
    level = list(models)
    if k < 2 or len(level) < k:
        raise ValueError(f"couple_tree needs k >= 2 and at least k models, got k={k}, {len(level)} models")
    while len(level) > 1:
        if len(level) % k:
            raise ValueError(f"couple_tree: {len(models)} leaves is not a power of k={k}")
        level = [couple(level[i : i + k], **couple_kwargs) for i in range(0, len(level), k)]
    return level[0]


def plan(
    target: str,
    depth: int,
    k: int = 2,
    img_size: int | None = None,
    num_classes: int | None = None,
    dataset_size: int | None = None,
) -> list[dict]:
    """The levels of an RBDC recursion towards ``target``: level 0 holds k**depth models of 1/k**depth width.

    Each row: level, count, width factor, model name (registered timm name where one exists), params, forward GMACs
    per image, training FLOPs per image (3 x forward, 2 FLOPs per MAC) and per epoch of ``dataset_size`` images
    (default: ImageNet-1k's train split), for one model and for all models of the level.
    """
    dataset_size = dataset_size or TRAIN_SIZES["imagenet"][0]

    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    if k < 2:
        raise ValueError(f"k (models coupled per step) must be >= 2, got {k}")
    kwargs = {k_: v for k_, v in dict(img_size=img_size, num_classes=num_classes).items() if v is not None}
    rows = []
    for level in range(depth + 1):
        count = k ** (depth - level)
        factor = Fraction(1, count)
        with torch.device("meta"):
            model = scaled(target, factor, **kwargs)
        size = img_size or model.pretrained_cfg["input_size"][-1]
        macs = forward_macs(model, size)
        train = TRAIN_FLOPS_PER_FORWARD * 2 * macs
        rows.append(
            {
                "level": level,
                "count": count,
                "width": str(factor),
                "model": widen_name(target, factor) or f"{target} x{factor}",
                "params": sum(p.numel() for p in model.parameters()),
                "gmacs": macs / 1e9,
                "train_gflops_per_image": train / 1e9,
                "train_pflops_per_epoch": train * dataset_size / 1e15,
                "level_train_pflops_per_epoch": count * train * dataset_size / 1e15,
            }
        )
    return rows


def couple_state(parts: Sequence[nn.Module], states: Sequence[dict], wide: nn.Module, head: str = "mean") -> dict:
    """Carry AdamW moments through coupling: ``{param name: {exp_avg, exp_avg_sq, step}}`` per part -> wide.

    Moments are block-diagonalised like the weights (off-diagonal slots zero, as for a fresh parameter); the head's
    first moment scales like its weights (1/k for ``mean``) and the second moment by the square of that.
    """
    k = len(parts)
    heads = classifier_keys(wide)
    packed = packed_chunks(wide)
    shapes = dict(wide.named_parameters())
    out = {}
    for name, param in shapes.items():
        if not all(name in s for s in states):
            continue
        is_head = name.rpartition(".")[0] in heads
        entry = {"step": torch.stack([torch.as_tensor(s[name]["step"], dtype=torch.float32) for s in states]).max()}
        for key, power in (("exp_avg", 1), ("exp_avg_sq", 2)):
            scale = ((1.0 / k if head == "mean" else 1.0) ** power) if is_head else None
            entry[key] = _couple_tensor(
                name,
                [s[name][key].float().cpu() for s in states],
                param.shape,
                head_scale=scale,
                offdiag_std=0.0,
                gen=None,
                chunks=packed.get(name.rpartition(".")[0], 1),
            )
        out[name] = entry
    return out


def named_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's per-parameter state keyed by parameter name (portable across models of equal names)."""
    names = {p: n for n, p in model.named_parameters()}
    return {names[p]: {k: v.detach().cpu() for k, v in st.items()} for p, st in optimizer.state.items() if p in names}
