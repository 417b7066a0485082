"""How far plain-LayerNorm coupling moves a ViT's outputs from the mean of its parts (grouped LN: exactly 0).

    python -m benchmarks.ln_deviation [MODEL] [--k 2]

Untrained (timm-initialised) parts; the deviation of trained parts is measured by the engine right after coupling
(``eval_top1`` of the coupled model before any further training, in ``summary.csv``).
"""

from __future__ import annotations

import argparse

import timm
import torch

import rbdc


def ln_deviation(name: str, k: int = 2, batch: int = 8, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    models = [timm.create_model(name).eval() for _ in range(k)]
    size = models[0].pretrained_cfg["input_size"][-1]
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        mean = torch.stack([m(x) for m in models]).mean(0)
        out = {}
        for norm in ("plain", "grouped"):
            y = rbdc.couple(models, norm=norm).eval()(x)
            out[f"{norm}_max_abs"] = (y - mean).abs().max().item()
            out[f"{norm}_rel"] = ((y - mean).norm() / mean.norm()).item()
            out[f"{norm}_argmax_agree"] = (y.argmax(-1) == mean.argmax(-1)).float().mean().item()
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="rbdc_deit_base_patch16_224_w4")
    p.add_argument("--k", type=int, default=2)
    a = p.parse_args()
    print(a.model, f"k={a.k}", ln_deviation(a.model, a.k))
