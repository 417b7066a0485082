"""GradMax: grow new units with zero fan-in and the fan-out that maximises their gradient norm.

Evci, Pedregosa, Gomez, Elsen, van Merrienboer, Vladymyrov, "GradMax: Growing Neural Networks using Gradient
Information", ICLR 2022; follows the official TensorFlow code google-research/growneuron (``growers.AddGradmax``,
``layers.grow_new_layer`` / ``grow_new_bn_layer``, ``cifar/wide_resnet.py``), see ``../shared/reference/methods.md``
section 6.2. This is a PyTorch reimplementation for timm models; no public PyTorch GradMax exists.

What grows (the inner widths of blocks, as growneuron grows the block width of its WRN; the residual stream, stem
and embedding keep the width they have):

* ResNet: every inner space of every block: Bottleneck ``conv1`` and ``conv2`` outputs (the bottleneck width),
  BasicBlock ``conv1`` output (mid channels). Start from :func:`gradmax_start` (the target with inner widths x f).
* ViT/DeiT: MLP hidden units (``fc1`` -> ``fc2``) and attention heads (``qkv`` -> ``proj``, ``head_dim`` fixed).

Rule, for a unit created by layer l and read by layer l+1:

* fan-in zero (weights and bias); an intermediate BatchNorm grows as identity (gamma 1, beta 0, mean 0, var 1);
  so the new units output exactly 0 and the function is unchanged (train and eval mode);
* fan-out = top right-singular vectors of M = sum over the batch of h_{l-1} dL/dz_{l+1}^T, the gradient of an
  auxiliary layer from layer l's input to layer l+1's pre-activation: the gradient of the new fan-in is
  f'(0) * M w_out, so these directions maximise its norm; each is then scaled to ``scale`` x the mean l2-norm of the
  existing units' fan-out (growneuron's ``mean_norm``, scale 0.5 in its configs).

Convolutions: M (:mod:`rbdc.growth.gradmax_fanout`, which computes the new fan-outs) is computed **exactly**, not
with growneuron's combined (k1+k2-1) kernel (which ignores the zero padding of the intermediate map and only
approximates strided pairs): the unfolded k1 x k1 input patches of layer l, laid out on layer l's output grid, are
correlated with dL/dz_{l+1} by ``torch.nn.grad.conv2d_weight`` with layer l+1's kernel, stride, padding and
dilation, giving M of shape (C_in k1^2) x (C_out k2^2).

Adaptations, and why:

* ResNet activations: torch's ReLU has derivative 0 at 0, so a zero-fan-in unit would never learn; the grown
  blocks' inner activations are :class:`~rbdc.growth.relu1.ReLU1` (derivative 1 at 0, growneuron's ``relu1``;
  same forward, same state dict).
* Train-mode BatchNorm: a new channel has zero batch variance, so BN's backward mean-centres its gradient (and
  scales it by 1/sqrt(eps)). When the BN after layer l is in training mode, M uses mean-centred input patches,
  which is the exact gradient the first training step will see; in eval mode BN is the identity and M is uncentred.
* GELU (ViT MLP): f'(0) = 0.5, not 1. That only halves the gradient; the maximising directions are the same, so
  GELU is kept. ``fc1`` has a bias: h is extended by a constant 1 so the bias gradient is maximised too.
* Heads: a new head's q, k and v fan-in are zero, so it attends uniformly (attention 1/N) and outputs v = 0. Its
  v gradient is then (1/N) 1 1^T dL/dout P_h, so M = sum_b N mean_t(h) mean_t(dL/dz)^T and the ``proj`` columns of
  all new heads' v channels are its top singular vectors (whole heads of ``head_dim`` channels are added). q and k
  get gradient only once v has moved (second order).
* When more units are added than M has orthonormal right-singular vectors (the fan-out dimension), the extra
  units get random unit directions (counted in ``info["random_units"]``).

FLOPs: ``info["extra_flops"]`` = one forward and backward of the gradient batch on the pre-growth model (3 x 2 x
forward MACs x images, the ledger's rule). The SVDs and M products are reported separately in
``info["linalg_flops"]`` (an estimate; not training FLOPs). Grown models have widths no registered timm name
describes, so ``rbdc.forward_macs`` (which rebuilds the model from ``rbdc_arch``) cannot count them: they carry a
``train_flops_per_image(img_size)`` method (used by the engine) backed by :func:`rbdc.flops.model_forward_macs`, and
``rbdc_arch["inner_widths"]`` marks them. Rebuild one for a checkpoint with :func:`gradmax_model`.
"""

from __future__ import annotations

import numbers
import types
from fractions import Fraction
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nets.checkpoint import register_rebuild
from ..flops import TRAIN_FLOPS_PER_FORWARD, model_forward_macs
from ..nets.models import arch_of, scaled
from .gradmax_fanout import LossFn, gradient_pass, new_fanout
from .optimizer_state import grow_optimizer_state  # noqa: F401  (re-exported: part of the GradMax protocol)
from .relu1 import use_relu1
from .remap import build_like, fill_value, ops_for, remap
from .spaces import Space, inner_spaces, inner_widths

__all__ = [
    "gradmax_grow",
    "gradmax_schedule",
    "gradmax_widths",
    "gradmax_model",
    "gradmax_start",
    "grow_optimizer_state",
]


def _default_loss(model: nn.Module, batch) -> torch.Tensor:
    if not (isinstance(batch, (list, tuple)) and len(batch) >= 2):
        raise ValueError("without loss_fn, the batch must be (images, targets); pass loss_fn(model, batch) -> loss")
    return F.cross_entropy(model(batch[0]), batch[1])


def gradmax_schedule(start_factor: Fraction | float, end_factor: Fraction | float, steps: int) -> list[Fraction]:
    """Inner-width factors after each of ``steps`` equal growth steps from ``start_factor`` to ``end_factor``.

    growneuron's CIFAR/ImageNet configs: 0.25 -> 1 in 12 steps (each adds 1/16 of the full width).
    """
    start, end = Fraction(start_factor).limit_denominator(4096), Fraction(end_factor).limit_denominator(4096)
    if steps < 1 or not 0 < start <= end:
        raise ValueError(f"need steps >= 1 and 0 < start_factor <= end_factor, got {steps}, {start}, {end}")
    return [start + (end - start) * i / steps for i in range(1, steps + 1)]


def gradmax_widths(name: str, factor: Fraction | float = 1, **timm_kwargs) -> dict[str, int]:
    """Inner widths of timm model ``name`` times ``factor`` (rounded, at least 1): a growth target."""
    with torch.device("meta"):
        full = scaled(name, 1, **timm_kwargs)
    return {k: max(1, round(v * Fraction(factor))) for k, v in inner_widths(full).items()}


def _train_flops_per_image(self: nn.Module, img_size: int | None = None) -> int:
    return TRAIN_FLOPS_PER_FORWARD * 2 * model_forward_macs(self, img_size)


def count_flops_by_hooks(model: nn.Module) -> nn.Module:
    """Give ``model`` a ``train_flops_per_image(img_size)`` method backed by :func:`rbdc.flops.model_forward_macs`
    (in place).

    The training engine uses that method when a model has it, so models whose widths ``rbdc_arch`` cannot describe
    (GradMax's intermediate widths) are still counted right. It is a bound method, so ``copy.deepcopy`` rebinds it.
    """
    model.train_flops_per_image = types.MethodType(_train_flops_per_image, model)
    return model


def gradmax_model(name: str, widths: dict[str, int], seed: int | None = None, **timm_kwargs) -> nn.Module:
    """Timm model ``name`` with the inner widths ``widths`` (freshly initialised), e.g. to load a checkpoint.

    The residual widths are those of ``name``. Convolutions keep timm's init rule (Kaiming normal, fan-out mode) at
    their new width; linear layers timm's truncated normal. Inner ReLUs are :class:`ReLU1`.
    """
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            full = scaled(name, 1, **timm_kwargs)
    else:
        full = scaled(name, 1, **timm_kwargs)
    sd = full.state_dict()
    inner = inner_spaces(full)
    unknown = set(widths) - {s.name for s in inner}
    if unknown:
        raise ValueError(f"no inner space {sorted(unknown)[:3]} in {name}; valid: {[s.name for s in inner][:6]}...")
    idx = {}
    with torch.device("cpu"):  # index bookkeeping stays on the CPU when the model is built on meta (FLOPs plans)
        for s in inner:
            w = widths.get(s.name, s.size(sd))
            if not 1 <= w <= s.size(sd):
                raise ValueError(f"{s.name}: width {w} outside 1..{s.size(sd)} (the width of {name})")
            idx[s.name] = torch.arange(w)
        ops = ops_for(inner, idx)
    model = build_like(full, {k: remap(v, ops.get(k, [])) for k, v in sd.items()})
    with torch.no_grad():
        for s in inner:
            mod = model.get_submodule(s.fan_in)
            if isinstance(mod, nn.Conv2d) and idx[s.name].numel() < s.size(sd):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
    use_relu1(model, [s.act for s in inner if s.norm is not None])
    model.rbdc_arch = {**full.rbdc_arch, "inner_widths": inner_widths(model)}
    return count_flops_by_hooks(model)


register_rebuild("inner_widths", gradmax_model)  # checkpoints of grown models name their inner widths


def gradmax_start(name: str, factor: Fraction | float, seed: int | None = None, **timm_kwargs) -> nn.Module:
    """GradMax's starting model: timm ``name`` with every inner width x ``factor`` (residual widths unchanged)."""
    return gradmax_model(name, gradmax_widths(name, factor, **timm_kwargs), seed=seed, **timm_kwargs)


def _resolve_counts(inner: list[Space], sd: dict, n_new, widths) -> dict[str, int]:
    if (n_new is None) == (widths is None):
        raise ValueError("pass exactly one of n_new (units to add) and widths (target inner widths)")
    names = [s.name for s in inner]
    if widths is not None:
        unknown = set(widths) - set(names)
        if unknown:
            raise ValueError(f"no inner space {sorted(unknown)[:3]}; valid names: {names[:6]}...")
        counts = {s.name: widths.get(s.name, s.size(sd)) - s.size(sd) for s in inner}
    elif isinstance(n_new, dict):
        unknown = set(n_new) - set(names)
        if unknown:
            raise ValueError(f"no inner space {sorted(unknown)[:3]}; valid names: {names[:6]}...")
        counts = {s.name: int(n_new.get(s.name, 0)) for s in inner}
    elif isinstance(n_new, numbers.Integral):
        counts = {s.name: int(n_new) for s in inner}
    elif isinstance(n_new, numbers.Real):
        counts = {s.name: round(Fraction(n_new) * s.size(sd)) for s in inner}
    else:
        raise ValueError(f"n_new must be an int, a fraction or a dict of counts, got {type(n_new).__name__}")
    bad = {k: v for k, v in counts.items() if v < 0}
    if bad:
        raise ValueError(f"GradMax only adds units; negative counts for {bad}")
    return {k: v for k, v in counts.items() if v > 0}


def gradmax_grow(
    model: nn.Module,
    batch,
    loss_fn: LossFn | None = None,
    n_new: int | float | dict | None = None,
    scale: float = 0.5,
    widths: dict[str, int] | None = None,
    seed: int = 0,
    random_fanout: bool = False,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[nn.Module, dict]:
    """Add units to the inner spaces of ``model`` with GradMax (see module docstring).

    Args:
        model: a timm ResNet or VisionTransformer (e.g. from :func:`gradmax_start`), in the mode it trains in.
            It is not modified (its BatchNorm statistics are restored after the gradient pass, ``.grad`` untouched).
        batch: one training batch; passed to ``loss_fn``.
        loss_fn: ``loss_fn(model, batch) -> scalar loss``; default cross-entropy of ``model(batch[0])`` and
            ``batch[1]``.
        n_new: units to add: one count for every inner space, a fraction of each space's current width, or
            ``{space name: count}`` (names from :func:`rbdc.growth.inner_widths`; heads are counted in heads).
        scale: new fan-out norm relative to the mean fan-out norm of the existing units.
        widths: instead of ``n_new``, the inner widths to reach (e.g. ``gradmax_widths(name, factor)``).
        seed: seeds the random directions used beyond the available singular vectors.
        random_fanout: use random unit directions instead of the singular vectors (same norms): the random-growth
            baseline (growneuron's ``AddRandom`` with zero fan-in), also used by the tests as a control.
        reduce: applied to every M before its SVD. Under data parallelism pass a sum over ranks (e.g.
            ``lambda m: (torch.distributed.all_reduce(m), m)[1]``) so that every rank grows the same units from the
            whole global batch; ``info["extra_flops"]`` then counts this rank's images only.

    Returns:
        ``(grown, info)``: the grown model (same train/eval mode) and ``info`` with ``mapping`` (state key ->
        remap ops, for :func:`grow_optimizer_state`), ``extra_flops`` (training FLOPs of the gradient pass),
        ``linalg_flops``, ``images``, ``n_new``, ``widths`` (inner widths after growth), ``singular_values``
        (per space, top ones, float) and ``random_units``.
    """
    sd = model.state_dict()
    inner = inner_spaces(model)
    counts = _resolve_counts(inner, sd, n_new, widths)
    grow = [s for s in inner if s.name in counts]
    acts, grads, (images, img_size) = gradient_pass(model, batch, loss_fn or _default_loss, grow)
    fanouts, svals, random_units, linalg = _new_fanouts(
        model, grow, counts, acts, grads, torch.Generator().manual_seed(seed), scale, random_fanout, reduce
    )
    ops = ops_for(
        inner, {s.name: torch.cat([torch.arange(s.size(sd)), torch.full((counts[s.name],), -1)]) for s in grow}
    )
    grown = _grown_model(model, inner, _with_fanouts(sd, ops, grow, fanouts), scale, random_fanout)
    info = {
        "mapping": ops,
        "extra_flops": 3 * 2 * model_forward_macs(model, img_size) * images,
        "linalg_flops": int(linalg),
        "images": images,
        "n_new": counts,
        "widths": inner_widths(grown),
        "singular_values": svals,
        "random_units": random_units,
    }
    return grown.train(model.training), info


def _new_fanouts(model, grow: list[Space], counts, acts, grads, gen, scale, random_fanout, reduce):
    """:func:`new_fanout` of every space in ``grow``, in order (they draw from ``gen`` in turn): the fan-outs and
    singular values by space name, and in all the random directions and the linear-algebra FLOPs."""
    fanouts, svals, random_units, linalg = {}, {}, 0, 0
    for s in grow:
        fanouts[s.name], svals[s.name], extra, flops = new_fanout(
            model, s, acts[s.name], grads[s.name].detach(), counts[s.name], gen, scale, random_fanout, reduce
        )
        random_units += extra
        linalg += flops
    return fanouts, svals, random_units, linalg


def _grown_model(model: nn.Module, inner: list[Space], new_sd: dict, scale: float, random_fanout: bool) -> nn.Module:
    """``model``'s architecture at the widths of ``new_sd``, with its weights, ReLU1 inner activations, metadata and
    FLOPs counted by hooks."""
    grown = build_like(model, new_sd)
    use_relu1(grown, [s.act for s in inner if s.norm is not None and s.act])
    grown.rbdc_arch = {**arch_of(model), "inner_widths": inner_widths(grown)}
    grown.rbdc_growth = {"method": "gradmax", "scale": scale, "random_fanout": random_fanout}
    return count_flops_by_hooks(grown)


def _with_fanouts(sd: dict, ops: dict, grow: list, fanouts: dict) -> dict:
    """The grown state dict: every tensor remapped to the new widths, the new units' fan-outs written in."""
    new_sd = {key: remap(t, ops.get(key, []), fill_value(key, t)) for key, t in sd.items()}
    for s in grow:
        key = f"{s.fan_out}.weight"
        old = sd[key]
        n_ch = old.shape[1]  # existing input channels of the reader (units x unit)
        v = fanouts[s.name]
        new_sd[key][: old.shape[0], n_ch : n_ch + v.shape[0]] = v.view(
            v.shape[0], old.shape[0], *old.shape[2:]
        ).transpose(0, 1)
    return new_sd
