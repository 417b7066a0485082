"""Net2Net width growth (Net2WiderNet) for timm ResNets and ViTs.

Chen, Goodfellow, Shlens, "Net2Net: Accelerating Learning via Knowledge Transfer", ICLR 2016 (arXiv 1511.05641);
follows the reference numpy code (paengs/Net2Net@net2net.py: random mapping, fan-out divided by the replication
count) and the PyTorch BatchNorm handling of chaudatascience/mixturegrowth@models/net2net.py (running statistics
copied; without its ``weight_norm`` quirk, see ``../shared/reference/methods.md`` section 6.1). For ViTs, heads are
replicated whole with ``head_dim`` fixed, as in Staged Training / LEMON (methods.md 6.1).

Every channel space (see :mod:`rbdc.growth.spaces`) of the model gets a mapping g from new units to old units:

* ``mode="uniform"``: new unit j copies old unit ``j mod n``, so every unit is copied exactly ``factor`` times
  (the factor must be an integer). The residual stream of a ViT then holds every channel equally often, so each
  LayerNorm sees the same mean and variance as before and the widened ViT is exact.
* ``mode="random"``: the first n units map to themselves, each extra unit copies a random old unit (the paper).
  Exact for ResNets (BatchNorm is per channel); for ViTs the LayerNorm statistics change (not exact).

Producers (a unit's fan-in rows, biases, BatchNorm weight/bias/running mean/var, LayerNorm and LayerScale vectors,
patch embedding, cls/pos embeddings) are copied; consumers (fan-out columns, including the classifier's input and,
for heads, the attention ``proj`` input) are copied and divided by the number of copies of their source unit.
Attention heads are one unit of ``head_dim`` channels: a copied head gets the same q, k and v slices, so it computes
the same attention. ``noise_std`` adds N(0, (noise_std * std(W))^2) to every conv/linear weight to break the
symmetry between copies (the function is then only approximately preserved).

The widened model is a stock timm model of ``rbdc.scaled(name, factor_old * factor)`` (e.g. DeiT-S -> DeiT-B dims,
``test_rbdc_resnet_w2`` -> ``test_rbdc_resnet``), so FLOPs, checkpoints and coupling work unchanged. The operator
spends no training FLOPs.
"""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn as nn

from ..nets.models import arch_of, scaled
from .remap import ops_for, remap
from .spaces import spaces

__all__ = ["net2wider", "MODES"]

MODES = ("uniform", "random")


def _mapping(n: int, m: int, mode: str, gen: torch.Generator, name: str) -> torch.Tensor:
    if m < n:
        raise ValueError(f"{name}: cannot widen {n} units to {m}; net2wider needs factor >= 1")
    if mode == "uniform":
        if m % n:
            raise ValueError(
                f"{name}: uniform replication needs a whole number of copies ({n} -> {m} units); use "
                f"an integer factor or mode='random'"
            )
        return torch.arange(m) % n
    return torch.cat([torch.arange(n), torch.randint(n, (m - n,), generator=gen)])


def net2wider(
    model: nn.Module, factor: Fraction | int = 2, mode: str = "uniform", noise_std: float = 0.0, seed: int = 0
) -> nn.Module:
    """Widen every width of ``model`` by ``factor`` with Net2WiderNet (function preserving without noise).

    Args:
        model: a timm ResNet or VisionTransformer built by :func:`rbdc.scaled` / :func:`rbdc.narrow` (or a stock
            timm model), trained or not.
        factor: width multiplier (an integer for ``mode="uniform"``).
        mode: ``"uniform"`` (every unit copied ``factor`` times; exact for ViTs too) or ``"random"``.
        noise_std: symmetry-breaking noise, relative to each weight's standard deviation (0 = exact copy).
        seed: seeds the random mapping and the noise.

    Returns:
        The widened model (``rbdc.scaled(name, factor_old * factor)`` architecture), in ``model``'s train/eval mode,
        with ``rbdc_growth`` recording the operator and its settings.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    factor = Fraction(factor).limit_denominator(1024)
    arch = arch_of(model)
    p = next(model.parameters())
    wide = scaled(arch["name"], arch["factor"] * factor, **arch["kwargs"]).to(device=p.device, dtype=p.dtype)
    old_sd, new_sd = model.state_dict(), wide.state_dict()
    old_spaces, new_spaces = spaces(model), {s.name: s for s in spaces(wide)}
    gen = torch.Generator().manual_seed(seed)
    indices, counts = {}, {}
    for s in old_spaces:
        if s.name not in new_spaces:
            raise ValueError(f"{s.name}: the {factor}x wider model has no such layer; the widths do not scale evenly")
        g = _mapping(s.size(old_sd), new_spaces[s.name].size(new_sd), mode, gen, s.name)
        indices[s.name] = g
        counts[s.name] = torch.bincount(g, minlength=s.size(old_sd)).to(torch.float64)[g]
    ops = ops_for(old_spaces, indices, counts)
    out = {}
    for key, ref in new_sd.items():
        t = remap(
            old_sd[key].detach().to(torch.float64) if old_sd[key].is_floating_point() else old_sd[key], ops.get(key, [])
        )
        if t.shape != ref.shape:
            raise ValueError(f"{key}: Net2Net gives shape {tuple(t.shape)}, the wider model has {tuple(ref.shape)}")
        if noise_std > 0 and t.ndim >= 2 and key.endswith(".weight"):
            t = t + torch.randn(t.shape, generator=gen, dtype=t.dtype) * noise_std * old_sd[key].double().std()
        out[key] = t.to(ref.dtype)
    wide.load_state_dict(out)
    wide.rbdc_growth = {"method": "net2net", "factor": str(factor), "mode": mode, "noise_std": noise_std, "seed": seed}
    return wide.train(model.training)
