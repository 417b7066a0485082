"""HyperCloning (Samragh et al. 2024, arXiv 2409.12903; rules of apple/ml-hypercloning ``hypercloning/common.py``):
one trained model expanded to k x its width so that the wide model computes the same function.

Every Linear/Conv weight ``W`` (out x in) becomes ``W.repeat(k_out, k_in) / k_in``: a repeated input ``[h, h]``
gives a repeated output ``[Wh, Wh]``. Biases, norm affines, BatchNorm statistics, the cls token and the position
embedding are repeated; a LayerNorm over a repeated vector has the original mean and variance, so it needs no
rule. Attention keeps its head size and repeats its heads (packed ``qkv``: each of q, k, v separately). The
classifier reads the repeated stream, divided by k. Optional noise (``snr_db``): Gaussian noise at that
signal-to-noise ratio added to one input block and subtracted from its partner, which keeps the function while
breaking the copies' symmetry (without it, the copies get identical gradients and stay identical).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..coupling import _check_rebuilt, packed_chunks
from ..nets.models import arch_of, scaled

__all__ = ["hyperclone", "clone_weight"]


def _noise_like(block: torch.Tensor, snr_db: float, gen: torch.Generator) -> torch.Tensor:
    """Gaussian noise whose power is the block's power / 10**(snr_db/10) (the reference's get_noise_with_snr)."""
    noise = torch.randn(block.shape, generator=gen, dtype=torch.float32)
    power = block.float().pow(2).mean() / 10 ** (snr_db / 10)
    return (noise * torch.sqrt(power / noise.pow(2).mean())).to(block.dtype)


def clone_weight(
    w: torch.Tensor, shape: torch.Size, snr_db: float | None = None, gen: torch.Generator | None = None
) -> torch.Tensor:
    """A Linear (out x in) or Conv (out x in x h x w) weight tiled to ``shape`` and divided by the input multiplier;
    with ``snr_db``, +noise / -noise on consecutive input blocks of each output block."""
    r0, r1 = shape[0] // w.shape[0], shape[1] // w.shape[1]
    out = w.repeat(r0, r1, *([1] * (w.ndim - 2))) / r1
    if snr_db is not None and r1 > 1:
        o, c = w.shape[:2]
        for i in range(r0):
            for j in range(0, r1 - 1, 2):  # pairs of input blocks; an odd last block stays noiseless
                n = _noise_like(out[i * o : (i + 1) * o, j * c : (j + 1) * c], snr_db, gen)
                out[i * o : (i + 1) * o, j * c : (j + 1) * c] += n
                out[i * o : (i + 1) * o, (j + 1) * c : (j + 2) * c] -= n
    return out


def _repeat(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    reps = []
    for d in range(t.ndim):
        if shape[d] % t.shape[d]:
            raise ValueError(f"cannot hyperclone a tensor of shape {tuple(t.shape)} into {tuple(shape)}")
        reps.append(shape[d] // t.shape[d])
    return t.repeat(*reps)


def _clone_tensor(key: str, t: torch.Tensor, shape: torch.Size, is_weight: bool, chunks: int, snr_db, gen):
    if key.endswith("num_batches_tracked"):
        return t.clone()
    if chunks > 1:  # packed projections ([q | k | v] along outputs): clone each projection on its own
        sub = torch.Size((shape[0] // chunks, *shape[1:]))
        return torch.cat([_clone_tensor(key, c, sub, is_weight, 1, snr_db, gen) for c in t.chunk(chunks, dim=0)])
    if is_weight:
        if any(shape[d] != t.shape[d] for d in range(2, t.ndim)):
            raise ValueError(f"cannot hyperclone {key}: its kernel grew ({tuple(t.shape)} -> {tuple(shape)})")
        return clone_weight(t, shape, snr_db, gen)
    return _repeat(t, shape)


def hyperclone(model: nn.Module, k: int = 2, snr_db: float | None = None, seed: int = 0) -> nn.Module:
    """The k x wider model (a stock timm model, rebuilt from ``model``'s recorded settings) that computes the same
    function as ``model``, by the HyperCloning rules; ``snr_db`` adds function-preserving noise (seeded by
    ``seed``)."""
    if k < 2:
        raise ValueError(f"hyperclone needs k >= 2, got {k}")
    arch = arch_of(model)
    wide = scaled(arch["name"], arch["factor"] * k, **arch["kwargs"])
    src = model.state_dict()
    wide.to(dtype=next((t.dtype for t in src.values() if t.is_floating_point()), None))
    _check_rebuilt(model, wide, k, arch["name"])
    modules = dict(wide.named_modules())
    packed = packed_chunks(wide)
    gen = torch.Generator().manual_seed(seed)
    new = {}
    for key, ref in wide.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        is_weight = leaf == "weight" and isinstance(modules.get(owner), (nn.Linear, nn.Conv2d))
        new[key] = _clone_tensor(
            key, src[key].detach().cpu(), ref.shape, is_weight, packed.get(owner, 1), snr_db, gen
        ).to(ref.dtype)
    wide.load_state_dict(new)
    wide.rbdc_arch = {**arch, "factor": arch["factor"] * k}
    device = next(iter(src.values())).device
    return wide.to(device).train(model.training)
