"""MixtureGrowth: grow two template-parameterised half-width members into one full-width timm model.

Pham, Teterwak, Nelson, Plummer, "MixtureGrowth: Growing Neural Networks by Recombining Learned Parameters",
WACV 2024; follows chaudatascience/mixturegrowth@models/layers.py (``SModule``/``SConv2d``/``SLinear``,
``ensemble_growth_type="diag"``, ``coefs_growing``), see ``../shared/reference/methods.md`` section 6.3.

Parameterisation: every conv/linear weight of a member is a linear combination of its own templates,
``W = sum_i c_i T_i`` (:class:`TemplateConv2d`, :class:`TemplateLinear`; biases and norms are ordinary per-member
parameters). Member 0 owns template set 0, member 1 template set 1; each is a half-width timm model
(``rbdc.scaled(name, factor / 2)``) trained on its own, one after the other.

Growth (``mixture_grow``) assembles each hidden layer of the full model as ``[[W_0, W_2], [W_3, W_1]]``: the trained
members on the diagonal and, off the diagonal, new combinations of the existing templates, ``W_2 = sum c_2 T^(0)``
(top right, template set 0) and ``W_3 = sum c_3 T^(1)`` (bottom left, set 1), as the source's
``member_template_sets=[0, 1, 0, 1]``. New coefficients (``coefs``):

* ``"orthogonal"`` (default, the source's default): ``c_2`` = last right-singular vector of ``[c_0; c_1]``,
  ``c_3`` = that of ``[c_0; c_1; c_2]``, times ``noise`` (the source's ``coefs_noise_growing``, default 1);
* ``"zero"``: off-diagonal blocks 0, which is exactly RBDC's block-diagonal coupling (``rbdc.couple(head="sum")``);
* ``"random"``: U[0, 1) coefficients times ``noise`` (the source's ``"random"``).

Layers reading the image (ResNet stem, ViT patch embedding) are stacked along outputs, the classifier is stacked
along inputs with the biases summed (sum of the members' logits, the source's ``SLinear(full_output=True)``),
BatchNorm concatenated; for ViTs qkv is block-diagonal per q/k/v split, cls/pos embeddings concatenated and
LayerNorm concatenated (``norm="plain"``: statistics over the full width, not exact, as in RBDC's coupling; or
``"grouped"``), all by :func:`rbdc.couple`, which this operator reuses for everything but the off-diagonal blocks.
The parameterisation carries over to DeiT unchanged (every weight is a conv or a linear layer), so both families
are supported.

Deviations from the source, by design:

* The grown model is a **plain dense timm model** with materialised weights and keeps training as such (the source
  keeps training the templates and coefficients). With 2 templates per set the parameter count is the same (4
  half-size templates vs one full-size weight); only the optimisation geometry differs. This keeps the grown model
  a stock timm model for the engine, the FLOPs counter and checkpoints.
* One template bank per layer (the source can share templates across layers, ``num_shared_layers``).
* Template init: Gaussian templates with the std of timm's initial weight of the layer and a random unit
  coefficient vector, so a member starts with timm's weight scale (the source uses Kaiming-normal templates and
  orthogonal coefficients).

Growth spends no training FLOPs. A member's forward costs its half-width model's MACs (``rbdc.forward_macs`` works:
it keeps ``rbdc_arch``) plus one weight combination per layer and batch, which is negligible and not counted.
"""

from __future__ import annotations

import copy
from fractions import Fraction

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..coupling import couple
from ..flops import register_layer
from ..nets.models import scaled

__all__ = ["TemplateConv2d", "TemplateLinear", "templatize", "mixture_member", "materialize", "mixture_grow", "COEFS"]

COEFS = ("orthogonal", "zero", "random")


def _templates(weight: torch.Tensor, num_templates: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    # Templates iid with the std of timm's initial weight and a unit coefficient vector: sum_i c_i T_i then has
    # timm's weight scale whatever the number of templates.
    w = weight.detach()
    templates = torch.randn((num_templates, *w.shape), generator=gen).to(w) * w.std()
    coefs = torch.randn(num_templates, generator=gen).to(w)
    return templates, coefs / coefs.norm()


class _Template(nn.Module):
    templates: nn.Parameter
    coefs: nn.Parameter

    @property
    def weight(self) -> torch.Tensor:
        return torch.tensordot(self.coefs, self.templates, dims=1)


class TemplateConv2d(_Template):
    """Conv2d whose weight is ``sum_i coefs[i] * templates[i]`` (MixtureGrowth's ``SConv2d``, one member)."""

    def __init__(self, conv: nn.Conv2d, num_templates: int = 2, generator: torch.Generator | None = None):
        super().__init__()
        for a in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
            setattr(self, a, getattr(conv, a))
        if conv.padding_mode != "zeros":
            raise ValueError(f"TemplateConv2d supports zero padding only, got padding_mode={conv.padding_mode!r}")
        templates, coefs = _templates(conv.weight, num_templates, generator or torch.Generator().manual_seed(0))
        self.templates = nn.Parameter(templates)
        self.coefs = nn.Parameter(coefs)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def dense(self) -> nn.Conv2d:
        w = self.templates
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            bias=self.bias is not None,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(self.weight)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"templates={self.templates.shape[0]}"
        )


class TemplateLinear(_Template):
    """Linear layer whose weight is ``sum_i coefs[i] * templates[i]`` (MixtureGrowth's ``SLinear``, one member)."""

    def __init__(self, linear: nn.Linear, num_templates: int = 2, generator: torch.Generator | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        templates, coefs = _templates(linear.weight, num_templates, generator or torch.Generator().manual_seed(0))
        self.templates = nn.Parameter(templates)
        self.coefs = nn.Parameter(coefs)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def dense(self) -> nn.Linear:
        w = self.templates
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.weight)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, templates={self.templates.shape[0]}"


register_layer(TemplateConv2d, nn.Conv2d)  # their MACs are those of the dense layer they stand for
register_layer(TemplateLinear, nn.Linear)


def templatize(model: nn.Module, num_templates: int = 2, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every ``nn.Conv2d``/``nn.Linear`` replaced by its template version."""
    if num_templates < 1:
        raise ValueError(f"num_templates must be >= 1, got {num_templates}")
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    for name, mod in list(out.named_modules()):
        if type(mod) is nn.Conv2d:
            out.set_submodule(name, TemplateConv2d(mod, num_templates, gen))
        elif type(mod) is nn.Linear:
            out.set_submodule(name, TemplateLinear(mod, num_templates, gen))
    return out


def mixture_member(
    name: str, factor: Fraction | int = 1, num_templates: int = 2, seed: int = 0, **timm_kwargs
) -> nn.Module:
    """A MixtureGrowth member: ``rbdc.scaled(name, factor / 2)`` with template-parameterised layers.

    Args:
        name: the timm name of the *grown* model's family (e.g. ``resnet50``, ``deit_base_patch16_224``).
        factor: width of the grown model relative to ``name`` (1: grow into ``name`` itself).
        num_templates: templates per layer (the source's default is 2).
        seed: seeds timm's init (the global RNG state is restored afterwards) and the templates.
        **timm_kwargs: passed to timm (num_classes, img_size, ...).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        half = scaled(name, Fraction(factor) / 2, **timm_kwargs)
    member = templatize(half, num_templates, seed)
    member.rbdc_arch = half.rbdc_arch
    return member


def materialize(member: nn.Module) -> nn.Module:
    """The plain timm model a member computes (templates combined into dense weights), same train/eval mode."""
    out = copy.deepcopy(member)
    for name, mod in list(out.named_modules()):
        if isinstance(mod, (TemplateConv2d, TemplateLinear)):
            out.set_submodule(name, mod.dense())
    return out


def _template_layers(member: nn.Module) -> dict[str, _Template]:
    return {n: m for n, m in member.named_modules() if isinstance(m, _Template)}


def _new_coefs(
    c0: torch.Tensor, c1: torch.Tensor, coefs: str, noise: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    if coefs == "zero":
        return torch.zeros_like(c0), torch.zeros_like(c1)
    if coefs == "random":
        return (torch.rand(c0.shape, generator=gen).to(c0) * noise, torch.rand(c1.shape, generator=gen).to(c1) * noise)
    c2 = torch.linalg.svd(torch.stack([c0, c1]).double()).Vh[-1].to(c0) * noise
    c3 = torch.linalg.svd(torch.stack([c0, c1, c2]).double()).Vh[-1].to(c0) * noise
    return c2, c3


def _check_members(layers0: dict[str, _Template], layers1: dict[str, _Template]) -> None:
    if not layers0 or set(layers0) != set(layers1):
        raise ValueError(
            "mixture_grow needs two template-parameterised members of the same structure "
            "(build them with rbdc.growth.mixture_member)"
        )
    for n in layers0:
        if layers0[n].templates.shape != layers1[n].templates.shape:
            raise ValueError(
                f"{n}: template shapes differ between the members ({tuple(layers0[n].templates.shape)} "
                f"vs {tuple(layers1[n].templates.shape)})"
            )


def _write_offdiagonal(full: nn.Module, layers0: dict, layers1: dict, coefs: str, noise: float, gen) -> None:
    """Fill the off-diagonal blocks of ``full``'s coupled layers (in place) with the templates of each member
    mixed by new coefficients: top right from member 0's templates, bottom left from member 1's."""
    params = dict(full.named_parameters())
    with torch.no_grad():
        for n, l0 in layers0.items():
            l1 = layers1[n]
            w_full = params[f"{n}.weight"]
            o, c = l0.templates.shape[1:3]
            if tuple(w_full.shape[:2]) != (2 * o, 2 * c):  # stem, patch embedding, classifier: no off-diagonal blocks
                continue
            c2, c3 = _new_coefs(l0.coefs.detach(), l1.coefs.detach(), coefs, noise, gen)
            top_right = torch.tensordot(c2, l0.templates.detach(), dims=1)  # template set of member 0
            bottom_left = torch.tensordot(c3, l1.templates.detach(), dims=1)  # template set of member 1
            if n.endswith("attn.qkv"):  # [q | k | v] rows: one 2 x 2 block layout per split
                d = o // 3
                for j in range(3):
                    rows = slice(2 * d * j, 2 * d * j + d), slice(2 * d * j + d, 2 * d * (j + 1))
                    w_full[rows[0], c:] = top_right[d * j : d * (j + 1)]
                    w_full[rows[1], :c] = bottom_left[d * j : d * (j + 1)]
            else:
                w_full[:o, c:] = top_right
                w_full[o:, :c] = bottom_left


def mixture_grow(
    member0: nn.Module,
    member1: nn.Module,
    coefs: str = "orthogonal",
    noise: float = 1.0,
    norm: str = "plain",
    seed: int = 0,
) -> nn.Module:
    """Grow two trained members into one standard timm model of twice their width (see module docstring).

    Args:
        member0, member1: members of the same structure (:func:`mixture_member`), trained one after the other.
        coefs: off-diagonal coefficients, one of ``"orthogonal"``, ``"zero"``, ``"random"``.
        noise: scale of the new coefficients (the source's ``coefs_noise_growing``).
        norm: LayerNorm rule for ViTs, as in :func:`rbdc.couple` (``"plain"`` or ``"grouped"``).
        seed: seeds ``coefs="random"``.

    Returns:
        The grown model: ``rbdc.scaled(name, 2 * member factor)``, dense weights, in ``member0``'s train/eval mode,
        with ``rbdc_growth`` recording the settings.
    """
    if coefs not in COEFS:
        raise ValueError(f"coefs must be one of {COEFS}, got {coefs!r}")
    layers0, layers1 = _template_layers(member0), _template_layers(member1)
    _check_members(layers0, layers1)
    full = couple([materialize(member0), materialize(member1)], head="sum", norm=norm)
    _write_offdiagonal(full, layers0, layers1, coefs, noise, torch.Generator().manual_seed(seed))
    full.rbdc_growth = {
        "method": "mixturegrowth",
        "coefs": coefs,
        "noise": noise,
        "norm": norm,
        "seed": seed,
        "num_templates": next(iter(layers0.values())).templates.shape[0],
    }
    return full
