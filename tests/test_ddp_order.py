"""Data order under DDP: sibling stages (consecutive seeds) must not share epochs' orders; images_seen counts
training images only."""

import csv
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from rbdc.runs import train
from rbdc.data import build_dataset, build_loader
from rbdc.data.seeds import mix_seed

CI = Path(__file__).resolve().parents[1] / "configs" / "recipes" / "ci"


@pytest.fixture
def process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", world_size=1, rank=0)
    yield
    dist.destroy_process_group()


def order(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader.sampler)


@pytest.mark.parametrize("repeated_aug", [False, True])
def test_sibling_stages_get_unrelated_orders_in_every_epoch_under_ddp(process_group, repeated_aug):
    ds = build_dataset("synthetic", None, "train", img_size=16, num_classes=4, num_images=64)
    loaders = [
        build_loader(
            ds,
            batch_size=8,
            train=True,
            img_size=16,
            seed=seed,
            distributed=True,
            repeated_aug=repeated_aug,
            in_memory=True,
        )
        for seed in (1000, 1001)
    ]
    epochs = range(4)
    orders = [[order(loader, e) for e in epochs] for loader in loaders]
    pairs = [(a, b) for a in orders[0] for b in orders[1]]  # any epoch of one against any epoch of the other
    assert all(a != b for a, b in pairs)
    if not repeated_aug:  # RepeatAugSampler repeats each index 3 times, then keeps one world-share of them
        assert all(sorted(o) == list(range(len(ds))) for o in orders[0])


def test_single_process_order_does_not_depend_on_the_ddp_sampler():
    ds = build_dataset("synthetic", None, "train", img_size=16, num_classes=4, num_images=64)
    loader = build_loader(ds, batch_size=8, train=True, img_size=16, seed=1000, in_memory=True)
    g = torch.Generator().manual_seed(mix_seed(1000, 3))
    assert order(loader, 3) == torch.randperm(len(ds), generator=g).tolist()


@pytest.mark.slow
def test_gradmax_images_seen_leaves_out_the_gradient_pass(tmp_path):
    results = train.run_recipe(str(CI / "gradmax.yaml"), str(tmp_path), log=lambda *a, **k: None)
    rows = list(csv.DictReader((tmp_path / "ci" / "gradmax" / "seed0" / "summary.csv").open()))
    batch = 16  # ci/base.yaml
    for stage in results["stages"]:
        last = [r for r in rows if r["stage"] == stage["stage"]][-1]
        assert int(last["images_seen"]) == stage["steps"] * batch, stage
