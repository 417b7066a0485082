"""Where a trained DiffusionBlocks model gets its answers: per block and noise level, from the image or from z_t.

    python -m benchmarks.diffusionblocks_probe RUN_DIR [--steps 2 4 8 16] [--sigmas 80 10 2 1 0.5 0.3 0.1 0.01]

For each block b and noise level sigma (in the block's band or not) it reports the top-1 of the block's logits
  * ``image``: z_t = sigma * noise (no label information): what the block reads from the image alone;
  * ``label``: z_t = z_y + sigma * noise (the training input): how much z_t alone gives away;
and the top-1 of the model's inference with several numbers of Euler steps (``inference_steps``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from rbdc.runs import rundir
from rbdc.data import build_loader
from rbdc.nets.diffusionblocks import build_model
from rbdc.data import recipe_datasets


def load_run(run_dir: Path):
    rec = yaml.safe_load((run_dir / rundir.RECIPE).read_text())
    train_ds, val_ds = recipe_datasets(rec)
    model = build_model(rec, rec.num_classes or train_ds.num_classes)
    model.load_state_dict(load_file(str(run_dir / rundir.FINAL)))
    loader = build_loader(
        val_ds,
        batch_size=256,
        train=False,
        img_size=rec.img_size,
        in_memory=rec.data.in_memory,
        num_workers=rec.workers,
        distributed=False,
        device=torch.device("cpu"),
    )
    return model.eval(), loader


@torch.no_grad()
def probe(model, loader, sigmas: list[float], steps: list[int], seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    hits = {}
    n = 0
    for x, y in loader:
        patches = model.trunk.patch_embed(x)
        z = F.normalize(model.label_embed(y), dim=-1)
        for b in range(model.num_blocks):
            for s in sigmas:
                sig = torch.full((len(y),), float(s))
                noise = torch.randn(z.shape, generator=gen)
                for kind, zt in (("image", s * noise), ("label", z + s * noise)):
                    key = f"block{b}/{kind}/sigma{s:g}"
                    pred = model.denoise(patches, zt, sig, b).argmax(-1)
                    hits[key] = hits.get(key, 0) + (pred == y).sum().item()
        for k in steps:
            pred = model.predict(x, steps=k).argmax(-1)
            hits[f"inference/steps{k}"] = hits.get(f"inference/steps{k}", 0) + (pred == y).sum().item()
        # the last evaluation of a 2-step inference (sigma_min, last block) given block 0's own denoised estimate:
        # does it keep block 0's answer?
        first = model.denoise(
            patches, model.sigma_max * torch.randn(z.shape, generator=gen), torch.full((len(y),), model.sigma_max), 0
        )
        mix = first.softmax(-1) @ model.label_embeddings(model.config["options"]["euler_embeds"] == "normalized")
        last = model.denoise(patches, mix, torch.full((len(y),), model.sigma_min), model.num_blocks - 1).argmax(-1)
        for key, val in (
            ("readout/block0_argmax", first.argmax(-1) == y),
            ("readout/last_given_block0", last == y),
            ("readout/last_agrees_with_block0", last == first.argmax(-1)),
        ):
            hits[key] = hits.get(key, 0) + val.sum().item()
        n += len(y)
    return {k: round(100 * v / n, 2) for k, v in hits.items()}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8, 16])
    p.add_argument("--sigmas", type=float, nargs="+", default=[80, 10, 2, 1, 0.5, 0.3, 0.1, 0.01])
    a = p.parse_args()
    model, loader = load_run(a.run_dir)
    print(
        json.dumps(
            {"bands": [model.band(b) for b in range(model.num_blocks)], **probe(model, loader, a.sigmas, a.steps)},
            indent=1,
        )
    )
