"""Scale of the backbone's and the FPN's outputs on balloon train images, pretrained vs random-init backbone.

    BALLOON_SCALE=384,256 python benchmarks/balloon/diagnostics/feature_scale.py CONFIG CKPT [--cfg-options ...]

Why: the first probe's mask loss started at 5-6 (a fresh mask head on unit-scale features starts near 0.7), which
points at feature magnitudes far from what the freshly initialised heads expect.
"""

import argparse
import sys

import torch

from rbdc.detection.launch import _build_runner, add_train_arguments, load_config

args = add_train_arguments(argparse.ArgumentParser()).parse_args(sys.argv[1:])
torch.manual_seed(0)
runner = _build_runner(load_config(args))
model = runner.model
model.init_weights()
model.eval()
batch = next(iter(runner.train_loop.dataloader))
data = model.data_preprocessor(batch, training=False)
with torch.no_grad():
    feats = model.backbone(data["inputs"])
    outs = model.neck(feats)
print("input", tuple(data["inputs"].shape), "std %.2f" % data["inputs"].std())
print("backbone levels std:", ["%.2f" % f.std() for f in feats], "abs-mean:", ["%.2f" % f.abs().mean() for f in feats])
print("fpn levels std:", ["%.2f" % f.std() for f in outs])
model.train()
data = model.data_preprocessor(batch, training=True)
with torch.no_grad():
    losses = model.loss(data["inputs"], data["data_samples"])
print("losses at init:", {k: round(float(v if torch.is_tensor(v) else sum(v)), 3) for k, v in losses.items()})
