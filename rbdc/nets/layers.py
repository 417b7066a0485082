"""Small layers the coupled models may need."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PartLayerNorm(nn.LayerNorm):
    """LayerNorm applied separately to ``parts`` contiguous channel groups ("grouped" LN coupling).

    A coupled ViT with this norm computes exactly the concatenation of its parts' hidden states, unlike a plain
    LayerNorm over the full width whose statistics mix the parts. It keeps ``nn.LayerNorm``'s parameter names, so a
    state dict moves between the two freely.
    """

    def __init__(self, normalized_shape: int, parts: int, eps: float = 1e-6, **kwargs):
        super().__init__(normalized_shape, eps=eps, **kwargs)
        if normalized_shape % parts:
            raise ValueError(f"width {normalized_shape} does not split into {parts} equal parts")
        self.parts = parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[-1]
        y = F.layer_norm(x.unflatten(-1, (self.parts, c // self.parts)), (c // self.parts,), eps=self.eps)
        y = y.flatten(-2)
        return y * self.weight + self.bias if self.elementwise_affine else y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", parts={self.parts}"


def grouped_norms(model: nn.Module) -> dict[str, int]:
    """``{module name: parts}`` of the model's :class:`PartLayerNorm` layers (what a checkpoint must record)."""
    return {name: m.parts for name, m in model.named_modules() if isinstance(m, PartLayerNorm)}


def group_norms(model: nn.Module, parts: dict[str, int]) -> nn.Module:
    """Swap the LayerNorms named in ``parts`` for :class:`PartLayerNorm` of that many parts, keeping their weights."""
    for name, n in parts.items():
        mod = model.get_submodule(name)
        if not isinstance(mod, nn.LayerNorm):
            raise TypeError(f"{name} is a {type(mod).__name__}, not a LayerNorm: cannot group it into {n} parts")
        ln = PartLayerNorm(
            mod.normalized_shape[0],
            parts=n,
            eps=mod.eps,
            elementwise_affine=mod.elementwise_affine,
            bias=mod.bias is not None,
            device=mod.weight.device if mod.weight is not None else None,
            dtype=mod.weight.dtype if mod.weight is not None else None,
        )
        ln.load_state_dict(mod.state_dict())
        ln.train(mod.training)
        model.set_submodule(name, ln)
    return model
