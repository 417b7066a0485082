"""DiffusionBlocks' noise levels and time conditioning (:mod:`rbdc.nets.diffusionblocks`): EDM's clipped
log-normal of sigma cut into B bands of equal probability mass, the inference ODE's sigmas, and DiT's timestep
embedder."""

from __future__ import annotations

import math
from statistics import NormalDist

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["band_edges", "inference_sigmas"]


def band_edges(
    num_blocks: int, p_mean: float = -1.2, p_std: float = 1.2, sigma_min: float = 0.002, sigma_max: float = 80.0
) -> list[float]:
    """The B+1 sigma boundaries (ascending) cutting the clipped log-normal into B bands of equal probability mass."""
    nd = NormalDist(p_mean, p_std)
    lo, hi = nd.cdf(math.log(sigma_min)), nd.cdf(math.log(sigma_max))
    inner = [math.exp(nd.inv_cdf(lo + (hi - lo) * i / num_blocks)) for i in range(1, num_blocks)]
    return [sigma_min, *inner, sigma_max]


def inference_sigmas(
    num_steps: int, p_mean: float = -1.2, p_std: float = 1.2, sigma_min: float = 0.002, sigma_max: float = 80.0
) -> list[float]:
    """``num_steps`` sigmas equally spaced in the CDF of log sigma, from sigma_max down to sigma_min."""
    nd = NormalDist(p_mean, p_std)
    lo, hi = nd.cdf(math.log(sigma_min)), nd.cdf(math.log(sigma_max))
    inner = [math.exp(nd.inv_cdf(hi - (hi - lo) * i / (num_steps - 1))) for i in range(1, num_steps - 1)]
    return [sigma_max, *inner, sigma_min]


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 at least: the noise-level and label-embedding arithmetic stays out of bf16 under autocast;
    float64 (the cross-CPU refactor guard, tests/test_guard.py) stays float64."""
    return t if t.dtype == torch.float64 else t.float()


class _TimeEmbed(nn.Module):
    """DiT's timestep embedder: sinusoidal features of c_noise, then Linear-SiLU-Linear."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        steps = torch.arange(half, device=t.device, dtype=torch.get_default_dtype())
        freqs = torch.exp(-math.log(10000.0) * steps / half)
        args = _fp32(t)[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.freq_dim % 2:
            emb = F.pad(emb, (0, 1))
        return self.mlp(emb)
