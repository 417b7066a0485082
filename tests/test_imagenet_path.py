"""The ImageNet path end to end: the committed DeiT RBDC recipe (configs/recipes/imagenet/deit-base-rbdc-d2.yaml,
over base-deit.yaml) trained for real on the extracted Imagenette tree as its IMAGENET_ROOT (an ImageNet layout,
train/ and val/ class folders of JPEGs), through the streaming loader with DataLoader workers, RandAugment, random
erasing, Mixup/CutMix, repeated augmentation, EMA, drop-path and RBDC depth-2 coupling, at a tiny size.

What is made tiny, and what that does to the recipe's settings (all of them stay on):

* the model: deit_base_patch16_224 at its real widths (4 x 192 -> 2 x 384 -> 768, 12 heads) but depth 2 and 32-px
  inputs (2 x 2 patches). Depth 2, not 1: timm spreads drop-path linearly over the blocks from 0, so a 1-block
  ViT has drop-path 0 and the recipe's 0.1 would be silently off; at depth 2 the last block drops with p = 0.1;
* the data: 4 train images per class (40), 2 val images per class (20), global batch 8 (not 1024; the lr scales
  with it, 5e-4 x 8/512); workers 2 (not 10);
* the length: 1.5 scratch epochs with the recipe's budget ratio (budget_epochs 1.05 = 210/300 of them) and RBDC
  ratio 1.5, so the levels get 5 / 3 / 2 steps (one epoch or less each, evaluated once);
* warmup_epochs stays 5, longer than every stage: the learning rate never leaves warm-up, so this run checks the
  schedule runs, not that it anneals;
* ema_decay stays 0.99996: over a few steps the EMA weights barely move from the stage's start; EMA is updated and
  evaluated (ema_top1) but its accuracy means nothing here;
* repeated augmentation with one process: DeiT's sampler repeats each index 3 times and keeps one world-share
  (here all) of them, so an epoch sees about a third of the images, each 3 times in a row; its rounding of the
  epoch to multiples of 256 images only applies from 256 images up, so 40 images still give 5 batches;
* top-1 is about chance (10%) after a few steps at warm-up lr: the test asserts it is a finite percentage, not a
  level.

Skipped, with the reason, when no Imagenette copy is found (RBDC_DATA, ../shared/data, the extraction cache).
Measured on a 2-core machine: 41 s at load 5, 73 s at load 7.5 (about 35 s of CPU time).
"""

import json
import math

import pytest
import yaml
from conftest import REPO  # tests/conftest.py
from timm.data import Mixup
from timm.data.distributed_sampler import RepeatAugSampler
from timm.layers import DropPath
from timm.loss import SoftTargetCrossEntropy

from rbdc.training import engine
from rbdc.runs import run, rundir, train
from rbdc.data import DataError, StreamLoader, find_imagenette

pytestmark = pytest.mark.slow

RECIPE = REPO / "configs" / "recipes" / "imagenet" / "deit-base-rbdc-d2.yaml"
TINY = [
    "img_size=32",
    "model_kwargs={depth: 2, img_size: 32}",
    "data.subset=4",
    "data.val_subset=2",
    "batch_size=8",
    "epochs=1.5",
    "budget_epochs=1.05",
    "workers=2",
]
STAGES = {
    "L0.0": [],
    "L0.1": [],
    "L0.2": [],
    "L0.3": [],
    "L1.0": ["L0.0", "L0.1"],
    "L1.1": ["L0.2", "L0.3"],
    "L2": ["L1.0", "L1.1"],
}


@pytest.fixture
def imagenette(monkeypatch):
    try:
        root = find_imagenette()  # extracts imagenette2-224.tar into the cache once
    except DataError as e:
        pytest.skip(f"no Imagenette to stand in for ImageNet: {e}")
    monkeypatch.setenv("IMAGENET_ROOT", str(root))
    return root


def test_the_deit_rbdc_recipe_trains_couples_and_augments_on_an_imagenet_tree(imagenette, tmp_path, monkeypatch):
    # watch what the run builds (the loaders, each stage's optimizer/EMA/Mixup/loss and model), changing nothing
    loaders, stages = [], []
    real_loader, real_training = run.build_loader, engine.build_training

    def build_loader(*args, **kwargs):
        loader = real_loader(*args, **kwargs)
        loaders.append((kwargs, loader))
        return loader

    def build_training(model, recipe, stage, *args, **kwargs):
        ts = real_training(model, recipe, stage, *args, **kwargs)
        stages.append((stage.id, model, ts))
        return ts

    monkeypatch.setattr(run, "build_loader", build_loader)
    monkeypatch.setattr(engine, "build_training", build_training)
    results = train.run_recipe(str(RECIPE), str(tmp_path), TINY, log=lambda *a, **k: None)
    run_dir = tmp_path / "imagenet-deit-base" / "rbdc-d2" / "seed0"

    # the recorded recipe is DeiT's, with its augmentation and regularisation on
    rec = yaml.safe_load((run_dir / rundir.RECIPE).read_text())
    assert rec["data"] == {**rec["data"], "source": "imagenet", "root": None, "in_memory": False}
    assert (rec["mixup"], rec["cutmix"], rec["mixup_prob"], rec["smoothing"]) == (0.8, 1.0, 1.0, 0.1)
    assert rec["aug"] == {
        "auto_augment": "rand-m9-mstd0.5-inc1",
        "re_prob": 0.25,
        "interpolation": "bicubic",
        "color_jitter": 0.4,
    }
    assert (rec["repeated_aug"], rec["ema"], rec["ema_decay"], rec["drop_path"]) == (True, True, 0.99996, 0.1)
    assert (rec["workers"], rec["rbdc"]["depth"], rec["rbdc"]["ratio"]) == (2, 2, 1.5)

    # ... and in effect: the streaming loader decodes the ImageNet tree in 2 workers with RandAugment, random erasing
    # and DeiT's repeated-augmentation sampler; every stage trains with Mixup/CutMix, soft-target loss, EMA, drop-path
    train_loaders = [loader for kwargs, loader in loaders if kwargs["train"]]
    assert len(train_loaders) == len(STAGES)
    for loader in train_loaders:
        assert isinstance(loader, StreamLoader) and loader._dl.num_workers == 2
        assert isinstance(loader.sampler, RepeatAugSampler)
        assert loader.dataset.root == str(imagenette.resolve()) and loader.dataset.source == "imagenet"
        ops = repr(loader.transform)
        assert "RandAugment" in ops and "RandomErasing" in ops and "ColorJitter" not in ops  # timm: RA replaces CJ
    assert [s for s, _, _ in stages] == list(STAGES)
    for stage, model, ts in stages:
        assert isinstance(ts.mixup, Mixup) and (ts.mixup.mixup_alpha, ts.mixup.cutmix_alpha) == (0.8, 1.0), stage
        assert ts.mixup.label_smoothing == 0.1 and isinstance(ts.criterion, SoftTargetCrossEntropy), stage
        assert ts.ema is not None and ts.ema.decay == 0.99996, stage
        last = model.blocks[-1].drop_path1
        assert isinstance(last, DropPath) and last.drop_prob == pytest.approx(0.1), stage

    # every stage trained (its steps of 8 images), the coupled ones from their parents
    man = json.loads((run_dir / rundir.MANIFEST).read_text())
    assert {s: [p["stage"] for p in e["parents"]] for s, e in man["stages"].items()} == STAGES
    _, rows = rundir.read_summary(run_dir / rundir.SUMMARY)
    for st in results["stages"]:
        trained = [r for r in rows if r["stage"] == st["stage"] and int(r["epoch"]) >= 0]
        assert st["steps"] > 0 and st["train_flops"] > 0, st
        assert int(trained[-1]["images_seen"]) == st["steps"] * 8, st
        assert all(math.isfinite(float(r["train_loss"])) and r["ema_top1"] != "" for r in trained), st
    steps = {st["stage"][:2]: st["steps"] for st in results["stages"]}  # per level (siblings alike)
    assert steps["L0"] >= steps["L1"] >= steps["L2"] >= 2  # ratio 1.5 of epochs: the narrow levels train longer
    assert set(results["coupled_top1_before_training"]) == {"L1.0", "L1.1", "L2"}
    assert results["model"] == "deit_base_patch16_224" and results["dataset"] == "imagenet"

    # the final numbers
    saved = json.loads((run_dir / rundir.RESULTS).read_text())
    assert saved["eval_top1"] == results["eval_top1"]
    assert math.isfinite(saved["eval_top1"]) and 0 <= saved["eval_top1"] <= 100
    assert saved["total_train_flops"] == sum(st["train_flops"] for st in saved["stages"])
    assert (run_dir / rundir.FINAL).is_file()
