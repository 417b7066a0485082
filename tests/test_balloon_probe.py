"""benchmarks/balloon_probe.py: the frozen-feature probe of a detection study's backbones."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.balloon_probe import average_precision, fit_logistic, main, resized_size, roc_auc, token_mask

REPO = Path(__file__).resolve().parents[1]


def _pairwise_auc(s, y):
    pos, neg = s[y == 1], s[y == 0]
    wins = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
    return sum(wins) / len(wins)


def test_roc_auc_is_the_probability_a_positive_outranks_a_negative():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 60).astype(float)  # many ties
    y = rng.integers(0, 2, 60)
    assert roc_auc(s, y) == pytest.approx(_pairwise_auc(s, y))
    assert roc_auc(np.arange(4.0), np.array([0, 0, 1, 1])) == 1.0
    assert roc_auc(-np.arange(4.0), np.array([0, 0, 1, 1])) == 0.0
    assert roc_auc(np.zeros(4), np.array([0, 1, 0, 1])) == 0.5
    with pytest.raises(ValueError, match="positives and negatives"):
        roc_auc(np.arange(3.0), np.ones(3))


def test_average_precision_is_the_mean_precision_at_each_positive():
    # ranked: positive, negative, positive -> precisions 1 and 2/3
    assert average_precision(np.array([3.0, 2.0, 1.0]), np.array([1, 0, 1])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.arange(5.0), np.array([0, 0, 0, 1, 1])) == 1.0
    with pytest.raises(ValueError, match="needs positives"):
        average_precision(np.arange(3.0), np.zeros(3))


def test_resize_is_mmdetections_keep_ratio_resize_cut_to_the_patch_grid():
    assert resized_size(2048, 1536, (320, 192), 4) == (256, 192)  # short side binds
    assert resized_size(1536, 2048, (320, 192), 4) == (192, 256)  # portrait: the same, turned
    assert resized_size(2048, 1024, (320, 192), 4) == (320, 160)  # long side binds
    assert resized_size(1000, 999, (320, 192), 16) == (192, 192)  # 192.2 x 191.8 -> multiples of 16


def test_token_mask_labels_the_tokens_mostly_inside_a_polygon():
    # a polygon over the left half of a 400x200 image, on a 64x32 resized image with patch 8: an 8x4 grid
    m = token_mask([[0, 0, 200, 0, 200, 200, 0, 200]], (64, 32), (400, 200), 8).reshape(4, 8)
    assert m[:, :4].all() and not m[:, 4:].any()
    # a sliver (an eighth of one token) does not make a balloon token
    assert not token_mask([[0, 0, 12.5, 0, 12.5, 25, 0, 25]], (64, 32), (400, 200), 8).any()


def test_logistic_probe_separates_separable_tokens():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    x = np.c_[y + 0.1 * rng.standard_normal(400), rng.standard_normal(400)]  # one informative feature, one noise
    score = fit_logistic(x[:300], y[:300])
    assert roc_auc(score(x[300:]), y[300:]) == 1.0


def test_probe_reports_every_backbone_seed_with_its_checkpoint_hash(tmp_path):
    """End to end on real balloon images (the first 2 of each split): one row per (backbone, pretraining seed),
    traced by sha256, and a table with the mean, interval and difference."""
    import yaml

    import rbdc
    from rbdc.detection.data import balloon_root
    from rbdc.errors import UserError
    from rbdc.runs.rundir import sha256

    try:
        balloon_root()
    except UserError as e:
        pytest.skip(str(e))
    for point in ("vit-scratch", "vit-rbdc-d1"):
        for seed in (0, 1):
            torch.manual_seed(seed + (10 if point == "vit-rbdc-d1" else 0))
            run = tmp_path / "cls" / "tiny" / point / "b32" / f"seed{seed}"
            rbdc.save_weights(
                rbdc.couple([rbdc.narrow("test_rbdc_vit", 2) for _ in range(2)]), run / "final.safetensors"
            )
    study = {
        "name": "det-tiny",
        "kind": "detection",
        "backbones": {
            "study": "tiny",
            "budget": 32,
            "seeds": [0, 1],
            "points": {"scratch": "vit-scratch", "rbdc": "vit-rbdc-d1"},
        },
        "config": str(REPO / "detection/configs/mask-rcnn_vit-nano_simplefpn_balloon.py"),
        "scale": [128, 96],
        "iters": 1,
        "finetune_seeds": [0, 1],
    }
    path = tmp_path / "det-tiny.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    out = tmp_path / "report" / "probe"
    assert main([str(path), "--backbones", str(tmp_path / "cls"), "-o", str(out), "--limit", "2"]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    rows = record["rows"]
    assert record["command"].startswith("python -m benchmarks.balloon_probe ") and "commit" in record["code"]
    assert [(r["label"], r["seed"]) for r in rows] == [("scratch", 0), ("rbdc", 0), ("scratch", 1), ("rbdc", 1)]
    for r in rows:
        ckpt = tmp_path / "cls" / r["backbone_run"] / "final.safetensors"
        assert r["sha256"] == sha256(ckpt) and 0 <= r["auc"] <= 100 and 0 < r["positive_rate"] < 100
    md = out.with_suffix(".md").read_text()
    assert "| scratch | 2 |" in md and "| rbdc | 2 |" in md and rows[0]["sha256"][:16] in md
