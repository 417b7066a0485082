"""Specification of rbdc.data: layouts and their errors, determinism, in-memory cache, generated and real datasets."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rbdc import data as D
from rbdc.data import DataError, build_dataset, build_loader
from rbdc.data.datasets import _subset_positions
from rbdc.data.seeds import numpy_rng
from rbdc.errors import UserError

_USER_CACHE = os.environ.get("RBDC_CACHE")  # read before the autouse fixture replaces it
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Every test gets its own cache, except real-data tests, which share the user cache (extraction is slow)."""
    monkeypatch.setenv("RBDC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)


def _jpeg(path: Path, colour=(200, 30, 60), mode="RGB", size=12):
    path.parent.mkdir(parents=True, exist_ok=True)
    fill = colour if mode == "RGB" else colour[0] if mode == "L" else (0, 0, 0, 0)
    Image.new(mode, (size, size), fill).save(path, quality=95)


def _folder(root: Path, classes=("a", "b", "c"), n_train=4, n_val=2, size=12) -> Path:
    """Tiny ImageFolder tree: class k has colour (40 k, ...), so targets can be told from pixels."""
    for split, n in (("train", n_train), ("val", n_val)):
        for k, c in enumerate(classes):
            for i in range(n):
                _jpeg(root / split / c / f"{i:03d}.jpg", colour=(40 * k + 20, 100, 10 * i), size=size)
    return root


def _tar(folder: Path, tar_path: Path, arcname: str) -> Path:
    with tarfile.open(tar_path, "w") as tar:
        tar.add(folder, arcname=arcname)
    return tar_path


# ----------------------------------------------------------------------------------------------------------------
# Layouts and errors


def test_data_error_is_user_error():
    assert issubclass(DataError, UserError)


@pytest.mark.parametrize("source", ["imagenet", "imagefolder"])
def test_missing_root_names_path_and_fix(tmp_path, source):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=f"{missing}.*does not exist"):
        build_dataset(source, str(missing))
    with pytest.raises(DataError, match="root=" + (".*IMAGENET_ROOT" if source == "imagenet" else "")):
        build_dataset(source, None)


def test_imagenet_root_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGENET_ROOT", str(_folder(tmp_path / "inet")))
    ds = build_dataset("imagenet", split="val")
    assert (len(ds), ds.classes) == (6, ["a", "b", "c"])


@pytest.mark.parametrize("source", ["imagenet", "imagefolder", "imagenette"])
@pytest.mark.parametrize("missing", ["train", "val"])
def test_missing_split_folder(tmp_path, source, missing):
    root = _folder(tmp_path / "ds")
    for p in sorted((root / missing).rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (root / missing).rmdir()
    # For imagenette the folder is not recognised as Imagenette at all; either way the message names root.
    with pytest.raises(DataError, match=str(root)):
        build_dataset(source, str(root), "train", check_counts=False) if source == "imagenette" else build_dataset(
            source, str(root), "train"
        )


@pytest.mark.parametrize("source", ["imagefolder", "imagenette"])
def test_empty_class_folder(tmp_path, source):
    root = _folder(tmp_path / "ds")
    (root / "train" / "d").mkdir()
    kwargs = {"check_counts": False} if source == "imagenette" else {}
    with pytest.raises(DataError, match=f"class folder {root / 'train' / 'd'} has no images"):
        build_dataset(source, str(root), **kwargs)


def test_val_with_unknown_class_or_flat_layout(tmp_path):
    root = _folder(tmp_path / "ds")
    _jpeg(root / "val" / "zebra" / "0.jpg")
    with pytest.raises(DataError, match="zebra"):
        build_dataset("imagefolder", str(root), "val")
    flat = _folder(tmp_path / "flat", n_val=0)
    _jpeg(flat / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DataError, match="holds images directly"):
        build_dataset("imagefolder", str(flat), "val")


def test_val_classes_index_like_train(tmp_path):
    """A val split lacking a class keeps train's indices (else labels would silently shift)."""
    root = _folder(tmp_path / "ds")
    for f in (root / "val" / "a").iterdir():
        f.unlink()
    (root / "val" / "a").rmdir()
    val = build_dataset("imagefolder", str(root), "val")
    assert val.classes == ["a", "b", "c"] and sorted(set(val.targets)) == [1, 2]


def test_class_count_mismatch(tmp_path):
    root = _folder(tmp_path / "ds")
    assert build_dataset("imagefolder", str(root), num_classes=3).num_classes == 3
    with pytest.raises(DataError, match=r"has 3 classes but the model expects num_classes=5; set num_classes=3"):
        build_dataset("imagefolder", str(root), num_classes=5)
    with pytest.raises(DataError, match="num_classes=100"):
        build_dataset("digits", num_classes=100, img_size=8)


def test_unknown_source_split_and_option():
    with pytest.raises(DataError, match="imagenette"):
        build_dataset("mnist")
    with pytest.raises(DataError, match="split"):
        build_dataset("synthetic", split="test")
    with pytest.raises(DataError, match="num_images"):
        build_dataset("digits", num_images=3)
    with pytest.raises(DataError, match="did you mean split='val'"):
        build_dataset("synthetic", "val")  # root is the second positional argument


def test_cifar100_needs_explicit_download(tmp_path):
    with pytest.raises(DataError, match=r"download=True"):
        build_dataset("cifar100", str(tmp_path / "cifar"))


def test_bad_aug_key_and_too_small_for_a_batch():
    ds = build_dataset("synthetic", img_size=8, num_images=10)
    with pytest.raises(ValueError, match="auto_augmnt"):
        build_loader(ds, batch_size=4, train=True, img_size=8, aug={"auto_augmnt": "rand"})
    with pytest.raises(DataError, match="fewer than batch_size=16"):
        build_loader(ds, batch_size=16, train=True, img_size=8)
    assert len(build_loader(ds, batch_size=16, train=False, img_size=8, num_workers=0)) == 1


# ----------------------------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_greyscale_and_cmyk_become_rgb(tmp_path, mode):
    root = _folder(tmp_path / "ds")
    odd = root / "train" / "a" / "odd.jpg"
    _jpeg(odd, colour=(90, 90, 90), mode=mode)
    ds = build_dataset("imagefolder", str(root))
    img, _ = ds[ds.paths.index(str(odd))]
    assert img.mode == "RGB"
    pix = np.asarray(img, dtype=np.int16)
    expected = 90 if mode == "L" else 255  # CMYK (0, 0, 0, 0) is white
    assert np.abs(pix - expected).max() <= 3
    images, _, _ = D.build_memory_cache(ds, 8)  # the in-memory decoder (JPEG draft mode) too
    assert images.shape == (len(ds), 3, 8, 8)


def test_resize_center_crop_keeps_centre():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (10, 0, 30, 20))  # white centre 20x20
    assert np.asarray(D.datasets._resize_center_crop(img, 20)).min() == 255
    assert D.datasets._resize_center_crop(img, 10).size == (10, 10)
    assert D.datasets._resize_center_crop(img, 8, crop_pct=0.8).size == (8, 8)


# ----------------------------------------------------------------------------------------------------------------
# Determinism


def _order(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader.sampler)


def test_order_depends_only_on_seed_and_epoch():
    ds = build_dataset("synthetic", img_size=8, num_images=64)
    a = build_loader(ds, batch_size=8, train=True, img_size=8, num_workers=0, seed=1)
    b = build_loader(ds, batch_size=8, train=True, img_size=8, num_workers=0, seed=1)
    c = build_loader(ds, batch_size=8, train=True, img_size=8, num_workers=0, seed=2)
    _order(b, 5)  # history must not matter
    assert _order(a, 3) == _order(b, 3)
    assert _order(a, 3) != _order(a, 4)
    assert _order(a, 3) != _order(c, 3)
    assert sorted(_order(a, 3)) == list(range(64))
    ev = build_loader(ds, batch_size=8, train=False, img_size=8, num_workers=0)
    assert _order(ev, 0) == _order(ev, 7) == list(range(64))


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


@pytest.mark.parametrize("in_memory", [False, True])
def test_resumed_epoch_sees_identical_batches(in_memory):
    """Batches (augmentation included) of epoch e equal those of a fresh loader jumping straight to epoch e."""
    ds = build_dataset("synthetic", img_size=16, num_images=48)
    aug = {"re_prob": 0.5} if in_memory else {"auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.5}
    run = build_loader(ds, batch_size=16, train=True, img_size=16, aug=aug, in_memory=in_memory, num_workers=0)
    uninterrupted = [_epoch(run, e) for e in range(3)]
    torch.manual_seed(123)  # a resumed process has other global RNG state
    resumed = build_loader(ds, batch_size=16, train=True, img_size=16, aug=aug, in_memory=in_memory, num_workers=0)
    assert _same(_epoch(resumed, 2), uninterrupted[2])
    assert not _same(uninterrupted[1], uninterrupted[2])


def test_stream_batches_independent_of_workers_and_keep_global_rng():
    ds = build_dataset("synthetic", img_size=16, num_images=24)
    aug = {"auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.25}
    main = build_loader(ds, batch_size=8, train=True, img_size=16, aug=aug, num_workers=0)
    torch.manual_seed(7)
    _epoch(main, 0)
    after_loading = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(after_loading, torch.rand(3))  # the loader left the global RNG alone
    workers = build_loader(ds, batch_size=8, train=True, img_size=16, aug=aug, num_workers=2)
    assert _same(_epoch(main, 1), _epoch(workers, 1))


def test_subset_is_deterministic_per_class(tmp_path):
    root = _folder(tmp_path / "ds", n_train=6)
    a = build_dataset("imagefolder", str(root), subset=2, seed=0)
    b = build_dataset("imagefolder", str(root), subset=2, seed=0)
    c = build_dataset("imagefolder", str(root), subset=2, seed=3)
    assert a.paths == b.paths and a.paths != c.paths
    assert np.bincount(a.targets).tolist() == [2, 2, 2]
    big = build_dataset("imagefolder", str(root), subset=4, seed=0)
    assert set(a.paths) <= set(big.paths)  # nested: a smaller subset is part of a larger one
    assert len(build_dataset("imagefolder", str(root), subset=100)) == 18
    syn = build_dataset("synthetic", img_size=8, num_images=40, num_classes=4, subset=3, seed=1)
    assert np.bincount(syn.targets).tolist() == [3, 3, 3, 3]


def test_posterize_patch_comes_with_the_train_transform_not_the_import():
    """Importing rbdc.data leaves timm alone; building a streaming train transform patches it (on a Pillow that needs
    it), and RandAugment's posterize to 0 bits then gives a black image instead of raising."""
    script = """
import pickle
from PIL import Image
import timm.data.auto_augment as aa
import rbdc.data
print(all(aa.NAME_TO_OP[n] is aa.posterize for n in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")))
ds = rbdc.data.build_dataset("synthetic", img_size=8, num_images=8)
loader = rbdc.data.build_loader(ds, batch_size=4, train=True, img_size=8, num_workers=0,
                                aug={"auto_augment": "rand-m9-mstd0.5-inc1"})
op = aa.AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)  # 4 - 4 = 0 bits kept
print(op(Image.new("RGB", (4, 4), (200, 100, 50))).getextrema() == ((0, 0),) * 3)
print(rbdc.data.patch_timm_posterize() == (aa.NAME_TO_OP["Posterize"] is not aa.posterize))
pickle.dumps(loader.transform)  # spawned workers get it pickled
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True", "True"]


def test_subset_is_the_permutation_of_numpy_rng_per_class():
    """Which images a subset keeps is a recorded stream: numpy_rng(seed, class)'s permutation, a prefix per class."""
    targets = [i % 3 for i in range(30)]  # class c holds positions c, c + 3, ..., c + 27
    expected = sorted(c + 3 * int(j) for c in range(3) for j in numpy_rng(5, c).permutation(10)[:4])
    assert _subset_positions(targets, 4, seed=5) == expected
    assert _subset_positions(targets, 4, seed=6) != expected


def test_repeated_aug_repeats_each_image_three_times():
    ds = build_dataset("synthetic", img_size=8, num_images=300)
    ld = build_loader(ds, batch_size=32, train=True, img_size=8, repeated_aug=True, num_workers=0, seed=0)
    order = _order(ld, 0)
    assert len(order) == 256  # timm/DeiT: |D| per epoch, rounded down to 256
    assert all(order[i] == order[i + 1] == order[i + 2] for i in range(0, 255 - 2, 3))
    assert order != _order(ld, 1)


def test_distributed_single_rank(tmp_path):
    import torch.distributed as dist

    ds = build_dataset("synthetic", img_size=8, num_images=20)
    with pytest.raises(ValueError, match="init_process_group"):
        build_loader(ds, batch_size=4, train=True, img_size=8, distributed=True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ld = build_loader(ds, batch_size=4, train=True, img_size=8, distributed=True, num_workers=0, seed=3)
        assert sorted(_order(ld, 0)) == list(range(20)) and _order(ld, 0) != _order(ld, 1)
        ev = build_loader(ds, batch_size=4, train=False, img_size=8, distributed=True, num_workers=0)
        assert _order(ev, 0) == list(range(20))
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------
# In-memory path


def test_memory_cache_is_reused(tmp_path, monkeypatch):
    root = _folder(tmp_path / "ds")
    ds = build_dataset("imagefolder", str(root))
    first = build_loader(ds, batch_size=4, train=True, img_size=8, in_memory=True)
    assert first.cache_path.is_file() and first.cache_path.is_relative_to(tmp_path / "cache")

    def fail(*args, **kwargs):
        raise AssertionError("decoded again although the cache exists")

    monkeypatch.setattr(D.cache, "_decode_all", fail)
    again = build_loader(build_dataset("imagefolder", str(root)), batch_size=4, train=True, img_size=8, in_memory=True)
    assert again.cache_path == first.cache_path and torch.equal(again.images, first.images)
    with pytest.raises(AssertionError, match="decoded again"):  # another size is another cache entry
        build_loader(ds, batch_size=4, train=True, img_size=10, in_memory=True)
    with pytest.raises(AssertionError, match="decoded again"):  # so is another subset
        build_loader(
            build_dataset("imagefolder", str(root), subset=3), batch_size=4, train=True, img_size=8, in_memory=True
        )


@pytest.mark.parametrize("train", [False, True])
def test_memory_batches_shape_dtype_normalisation(tmp_path, train):
    """A constant-colour image stays constant under crop/flip, so its normalised value is known exactly."""
    root = tmp_path / "ds"
    for split in ("train", "val"):
        for k, c in enumerate(["a", "b"]):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (20, 16), (60 + 100 * k, 128, 200)).save(root / split / c / f"{i}.png")
    ds = build_dataset("imagefolder", str(root), "train" if train else "val")
    ld = build_loader(ds, batch_size=4, train=train, img_size=12, in_memory=True, drop_last=False)
    ld.set_epoch(0)
    batches = list(ld)
    assert [len(x) for x, _ in batches] == [4, 2]
    x, y = batches[0]
    assert x.shape == (4, 3, 12, 12) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.device.type == "cpu"
    for img, t in zip(x, y):
        expected = (torch.tensor([60 + 100 * t.item(), 128, 200]).view(3, 1, 1) / 255 - MEAN) / STD
        assert torch.allclose(img, expected.expand(3, 12, 12), atol=1e-4)


def test_memory_crop_flip_geometry():
    ds = build_dataset("synthetic", img_size=16, num_images=8)
    ld = build_loader(
        ds, batch_size=8, train=True, img_size=16, in_memory=True, aug={"scale": (1, 1), "ratio": (1, 1), "hflip": 0.0}
    )
    x = ld.images.float()
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(ld._crop_flip(x, g), x, atol=1e-3)
    ld.hflip = 1.0
    assert torch.allclose(ld._crop_flip(x, g), x.flip(-1), atol=1e-3)
    ld.scale, ld.hflip = (0.25, 0.25), 0.0  # a 2x zoom: neighbouring output pixels repeat input values
    assert not torch.allclose(ld._crop_flip(x, g), x, atol=1)


def test_memory_augmentation_varies_between_batches_and_epochs():
    ramp = np.broadcast_to(np.arange(0, 240, 15, dtype=np.uint8)[None, :, None], (16, 16, 3))
    same = D.ArrayDataset(
        np.stack([ramp] * 16), [0] * 16, ["ramp"], source="test", root=None, split="train", cacheable=False
    )
    ld = build_loader(same, batch_size=8, train=True, img_size=16, in_memory=True)
    (a, _), (b, _) = _epoch(ld, 0)
    (c, _), _ = _epoch(ld, 1)
    assert not torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.gpu
def test_memory_loader_on_cuda_matches_cpu():
    ds = build_dataset("synthetic", img_size=16, num_images=32)
    aug = {"re_prob": 0.5, "re_mode": "const"}
    cpu, gpu = (
        build_loader(ds, batch_size=8, train=True, img_size=16, in_memory=True, aug=aug, device=d)
        for d in ("cpu", "cuda")
    )
    for (xc, yc), (xg, yg) in zip(_epoch(cpu, 1), _epoch(gpu, 1)):
        assert xg.is_cuda and yg.is_cuda and xg.dtype == torch.float32
        assert torch.equal(yc, yg.cpu()) and torch.allclose(xc, xg.cpu(), atol=1e-3)


def test_memory_ignored_aug_warns():
    ds = build_dataset("synthetic", img_size=8, num_images=8)
    with pytest.warns(UserWarning, match="auto_augment"):
        build_loader(ds, batch_size=4, train=True, img_size=8, in_memory=True, aug={"auto_augment": "rand-m9"})


# ----------------------------------------------------------------------------------------------------------------
# Generated sources


def test_synthetic_is_deterministic_and_learnable():
    train = build_dataset("synthetic", img_size=16, num_images=200, num_classes=5, seed=0)
    val = build_dataset("synthetic", split="val", img_size=16, num_images=50, num_classes=5, seed=0)
    other = build_dataset("synthetic", img_size=16, num_images=200, num_classes=5, seed=1)
    arr = lambda ds, i: np.asarray(ds[i][0], dtype=np.float32)  # noqa: E731
    assert np.array_equal(
        arr(train, 3), arr(build_dataset("synthetic", img_size=16, num_images=200, num_classes=5, seed=0), 3)
    )
    assert not np.array_equal(arr(train, 3), arr(other, 3))
    assert not np.array_equal(arr(train, 3), arr(val, 3))
    # Nearest class-mean colour, fitted on train, classifies val: the class signal is real and shared by splits.
    feats = lambda ds: np.stack([arr(ds, i).mean((0, 1)) for i in range(len(ds))])  # noqa: E731
    ftr, fva = feats(train), feats(val)
    means = np.stack([ftr[np.array(train.targets) == c].mean(0) for c in range(5)])
    pred = np.argmin(((fva[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == np.array(val.targets)).mean() >= 0.9
    assert train.num_classes == 5 and np.bincount(train.targets).tolist() == [40] * 5


def test_digits_split():
    pytest.importorskip("sklearn")
    train = build_dataset("digits", split="train", img_size=24)
    val = build_dataset("digits", split="val", img_size=24)
    assert (len(train), len(val)) == (1437, 360)
    assert set(train.indices).isdisjoint(val.indices) and len(set(train.indices) | set(val.indices)) == 1797
    assert train.num_classes == val.num_classes == 10
    assert np.bincount(val.targets).min() >= 35  # stratified: every class about 20 % of its ~180 images
    img, _ = val[0]
    assert img.mode == "RGB" and img.size == (24, 24)
    assert build_dataset("digits", split="val", img_size=24, seed=5).indices == val.indices  # fixed split


# ----------------------------------------------------------------------------------------------------------------
# Imagenette: archive handling (tiny fake archive) and the real data


def test_imagenette_from_tar_extracts_once_atomically(tmp_path, monkeypatch):
    src = _folder(tmp_path / "src")
    (tmp_path / "data").mkdir()
    tar = _tar(src, tmp_path / "data" / "imagenette2-224.tar", "imagenette2-224")
    with pytest.raises(DataError, match="expected 9,469"):
        build_dataset("imagenette", str(tar))  # count check on by default
    for root in (tar, tar.parent):  # the tar itself or the folder holding it
        ds = build_dataset("imagenette", str(root), check_counts=False)
        assert len(ds) == 12 and ds.classes == ["a", "b", "c"]
        assert Path(ds.root) == tmp_path / "cache" / "imagenette2-224"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["imagenette2-224"]  # no temp folders left
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: pytest.fail("extracted twice"))
    monkeypatch.setenv("RBDC_DATA", str(tmp_path / "data"))
    assert len(build_dataset("imagenette", split="val", check_counts=False)) == 6  # root from RBDC_DATA


def test_imagenette_verify_and_stale_cache(tmp_path):
    src = _folder(tmp_path / "src")
    (tmp_path / "data").mkdir()
    tar = _tar(src, tmp_path / "data" / "imagenette2-224.tar", "imagenette2-224")
    folder = D.find_imagenette(tar)
    import hashlib

    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(folder.parent)}"
        for p in sorted(folder.rglob("*.jpg"))
    ]
    contents = tmp_path / "data" / "imagenette2-224.contents.sha256"
    contents.write_text("\n".join(lines) + "\n")
    assert D.find_imagenette(tar, verify=True) == folder
    (folder / "train" / "a" / "000.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match="1 of 18 files"):
        D.find_imagenette(tar, verify=True)
    with open(tar, "ab") as f:  # a different archive under the same name must not reuse the old extraction
        f.write(b"\0" * 10240)
    with pytest.raises(DataError, match="different imagenette2-224.tar"):
        D.find_imagenette(tar)


def test_imagenette_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("RBDC_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="no Imagenette found.*RBDC_DATA"):
        build_dataset("imagenette")


def test_default_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("RBDC_DATA", str(tmp_path))
    assert D.default_data_root() == tmp_path
    monkeypatch.delenv("RBDC_DATA", raising=False)
    assert D.default_data_root() is None  # no guess beside the checkout: tox, .ci/run and conftest set RBDC_DATA


def test_no_data_root_is_one_line_naming_rbdc_data(monkeypatch, tmp_path):
    monkeypatch.delenv("RBDC_DATA", raising=False)
    monkeypatch.setenv("RBDC_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(DataError, match=r"^no Imagenette found: RBDC_DATA is unset.*set RBDC_DATA=") as e:
        build_dataset("imagenette")
    assert "\n" not in str(e.value)


def test_quickstart_auto_without_a_data_root_takes_digits(monkeypatch, tmp_path):
    from rbdc.quickstart import pick_data

    monkeypatch.delenv("RBDC_DATA", raising=False)
    monkeypatch.setenv("RBDC_CACHE", str(tmp_path / "empty-cache"))
    assert pick_data("auto") == ("digits", [])
    with pytest.raises(DataError, match="set RBDC_DATA="):
        pick_data("imagenette")


@pytest.fixture
def imagenette_tar(monkeypatch):
    """The real archive, extracted into the user cache (once; later runs reuse it)."""
    root = D.default_data_root()
    tar = root / "imagenette2-224.tar" if root else None
    if tar is None or not tar.is_file():
        pytest.skip(f"no imagenette2-224.tar in {root} (set RBDC_DATA)")
    if _USER_CACHE:  # undo the per-test cache: reuse the real extraction
        monkeypatch.setenv("RBDC_CACHE", _USER_CACHE)
    else:
        monkeypatch.delenv("RBDC_CACHE")
    return tar


def test_real_imagenette(imagenette_tar):
    train = build_dataset("imagenette", str(imagenette_tar), "train", num_classes=10)
    val = build_dataset("imagenette", str(imagenette_tar.parent), "val", num_classes=10)
    assert (len(train), len(val)) == (9469, 3925)
    assert train.classes == val.classes and train.classes[0] == "n01440764" and len(train.classes) == 10
    assert build_dataset("imagenette", train.root, "val").paths == val.paths  # the extracted folder works too
    ld = build_loader(
        train,
        batch_size=8,
        train=True,
        img_size=32,
        num_workers=0,
        aug={"auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.25, "interpolation": "bicubic"},
    )
    x, y = next(iter(ld))
    assert x.shape == (8, 3, 32, 32) and y.dtype == torch.int64 and torch.isfinite(x).all()
    small = build_dataset("imagenette", str(imagenette_tar), "val", subset=2)
    x, y = next(iter(build_loader(small, batch_size=20, train=False, img_size=32, in_memory=True)))
    assert x.shape == (20, 3, 32, 32) and sorted(y.tolist()) == sorted(list(range(10)) * 2)


def test_real_greyscale_jpeg_becomes_rgb(imagenette_tar):
    ds = build_dataset("imagenette", str(imagenette_tar), "val")
    grey = None
    for i, p in enumerate(ds.paths):
        with Image.open(p) as im:
            if im.mode == "L":
                grey = i
                break
    if grey is None:
        pytest.skip("no greyscale JPEG in this Imagenette copy")
    img, _ = ds[grey]
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.shape[-1] == 3
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])


@pytest.mark.parametrize("in_memory", [False, True])
def test_a_broken_image_in_a_worker_is_one_line_naming_the_file(tmp_path, in_memory):
    root = _folder(tmp_path / "ds")
    bad = root / "train" / "a" / "001.jpg"
    bad.write_bytes(b"not a jpeg")
    ds = build_dataset("imagefolder", str(root))
    with pytest.raises(DataError) as info:
        if in_memory:
            D.build_memory_cache(ds, 8, num_workers=1)
        else:
            next(iter(build_loader(ds, batch_size=4, train=False, img_size=8, num_workers=1)))
    assert "\n" not in str(info.value) and str(bad) in str(info.value) and "delete or replace" in str(info.value)


def _recipe(**data):
    from rbdc import recipe as recipes

    return recipes.resolve(
        str(Path(__file__).resolve().parents[1] / "configs" / "recipes" / "ci" / "scratch.yaml"),
        [f"data.{k}={v}" for k, v in data.items()],
    )


def test_a_plan_uses_the_size_its_run_trains_on_also_for_a_source_of_known_size(tmp_path, monkeypatch):
    """An ImageNet tree that is not the full ImageNet: the plan (dry run, study) uses its 12 (then 9) images, as
    the run does, not ImageNet's 1.28 M."""
    monkeypatch.setenv("IMAGENET_ROOT", str(_folder(tmp_path / "inet")))
    for data in ({"source": "imagenet"}, {"source": "imagenet", "holdout": 0.25}):
        rec = _recipe(**data)
        size = D.plan_size(rec)
        train, _ = D.recipe_datasets(rec)
        assert (size.train_size, size.num_classes, size.note) == (len(train), 3, "")
    assert D.plan_size(_recipe(source="imagenet", holdout=0.25)).train_size == 9  # 3 of 4 per class


def test_a_plan_without_the_data_uses_the_sources_known_size_and_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)
    size = D.plan_size(_recipe(source="imagenet"))
    assert (size.train_size, size.num_classes) == D.TRAIN_SIZES["imagenet"] == (1_281_167, 1000)
    assert "planning with the known size of imagenet" in size.note
    assert D.plan_size(_recipe(source="imagenet", holdout=0.1)).train_size == 1_281_167 - 128_117
    with pytest.raises(DataError):  # a subset of data that is not there has no known size
        D.plan_size(_recipe(source="imagenet", subset=5))
    with pytest.raises(DataError):
        D.plan_size(_recipe(source="imagefolder", root=str(tmp_path / "nowhere")))
