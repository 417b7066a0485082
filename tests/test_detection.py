"""MMDetection bridge: configs build, exported checkpoints load strictly, a coupled backbone fine-tunes on balloon.

Marked ``mmdet``: skipped (with the reason) when mmdet/mmcv with compiled ops do not import. The balloon tests read
``$RBDC_DATA/balloon_dataset.zip`` (default ``../shared/data``) and skip without it. All models here are the tiny
``test_rbdc_*`` families at small image sizes, so the module runs in about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import configparser
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "detection" / "configs").glob("*.py"))


def test_rbdc_imports_without_mmdet():
    """`import rbdc` and `import rbdc.detection` work with MMDetection unimportable; the stack error is recorded."""
    code = (
        "import sys; sys.modules['mmdet'] = None\n"
        "import rbdc, rbdc.detection as d\n"
        "assert d.stack_error() is not None\n"
        "try:\n    d.require_stack()\nexcept ImportError as e:\n"
        "    assert 'install.sh' in str(e) and 'tox -e detection-cli' in str(e), e\n"
        "else:\n    raise SystemExit('require_stack did not raise')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def _stack_or_skip():
    det = pytest.importorskip("rbdc.detection")
    if det.stack_error() is not None:
        pytest.skip(f"detection stack does not import: {det.stack_error()}")
    try:
        from mmcv.ops import nms  # noqa: F401  (needs mmcv._ext)
    except ImportError as e:
        pytest.skip(f"mmcv compiled ops missing ({e}): run bash detection/install.sh")
    return det


mmdet = pytest.mark.mmdet
# MMEngine 0.10.7 needs pkg_resources (setuptools < 81 is pinned on purpose); its deprecation warning is noise here.
pytestmark = pytest.mark.filterwarnings("ignore:pkg_resources is deprecated:UserWarning")


@pytest.fixture(scope="module")
def det():
    return _stack_or_skip()


@pytest.fixture(scope="module")
def balloon(tmp_path_factory):
    from rbdc.detection.data import balloon_root
    from rbdc.errors import UserError

    try:
        return balloon_root()
    except UserError as e:
        pytest.skip(str(e))


def _coupled(tmp: Path, name: str) -> Path:
    """A checkpoint of 2 x ``<name>_w2`` coupled by rbdc (a ``name`` model), as an rbdc run would leave it."""
    import rbdc

    torch.manual_seed(0)
    parts = [rbdc.narrow(name, 2) for _ in range(2)]
    wide = rbdc.couple(parts)
    run = tmp / f"run-{name}"
    rbdc.save_weights(wide, run / "final.safetensors")
    return run


# ------------------------------------------------------------------------------------------------- configs


@mmdet
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_builds(det, config):
    """Every shipped config loads through `mmdet::` bases, builds its detector, and its neck fits its backbone."""
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    cfg = Config.fromfile(config)
    assert cfg.custom_imports == dict(imports=["rbdc.detection"], allow_failed_imports=False)
    assert cfg.model.backbone.type in ("RBDCViT", "RBDCResNet")
    assert cfg.model.backbone.init_cfg.type == "Pretrained"
    model = MODELS.build(cfg.model)
    assert type(model.backbone).__name__ == cfg.model.backbone.type
    with torch.no_grad():
        feats = model.neck(model.backbone(torch.zeros(1, 3, 64, 96)))
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]  # strides 4..64
    assert all(f.shape[1] == cfg.model.neck.out_channels for f in feats)  # 256, or 128 in the CPU-sized R18 one
    if "balloon" in config.name:
        assert cfg.model.roi_head.bbox_head.num_classes == 1 and cfg.model.roi_head.mask_head.num_classes == 1
        assert cfg.train_dataloader.dataset.metainfo.classes == ("balloon",)


@mmdet
def test_three_line_config_of_the_readme(det, tmp_path):
    """The README's minimal user config (MMDetection's own Mask R-CNN + 3 lines) builds and loads an rbdc run."""
    from mmengine.config import Config
    from mmdet.registry import MODELS

    run = _coupled(tmp_path, "test_rbdc_resnet")
    cfg = tmp_path / "mine.py"
    cfg.write_text(
        "_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'\n"
        "custom_imports = dict(imports=['rbdc.detection'], allow_failed_imports=False)\n"
        "model = dict(backbone=dict(_delete_=True, type='RBDCResNet', model_name='test_rbdc_resnet',\n"
        f"                           init_cfg=dict(type='Pretrained', checkpoint='{run}')),\n"
        "             neck=dict(in_channels=[64, 128, 256, 512]))\n"
    )
    model = MODELS.build(Config.fromfile(cfg).model)
    model.init_weights()
    assert model.backbone.is_init


@mmdet
def test_rbdc_and_control_configs_differ_only_in_backbone_weights(det):
    """The control is the same experiment: its resolved config equals the RBDC one but for the checkpoint path."""
    from mmengine.config import Config

    for rbdc_cfg in (c for c in CONFIGS if "_rbdc-" in c.name):
        a = Config.fromfile(rbdc_cfg).to_dict()
        b = Config.fromfile(rbdc_cfg.with_name(rbdc_cfg.name.replace("_rbdc-", "_std-"))).to_dict()
        assert a["model"]["backbone"].pop("init_cfg") != b["model"]["backbone"].pop("init_cfg")
        assert a == b, rbdc_cfg.name


# ---------------------------------------------------------------------------------------- export and load


@mmdet
@pytest.mark.parametrize("name,backbone", [("test_rbdc_vit", "RBDCViT"), ("test_rbdc_resnet", "RBDCResNet")])
def test_export_loads_strictly_and_keeps_weights(det, tmp_path, name, backbone):
    """An exported coupled checkpoint has exactly the backbone's keys, and the backbone then computes the trunk's
    features of the source model."""
    import rbdc
    from mmdet.registry import MODELS
    from rbdc.detection.weights import export_backbone

    run = _coupled(tmp_path, name)
    meta = export_backbone(run, tmp_path / "backbone.pth")
    ckpt = torch.load(tmp_path / "backbone.pth", weights_only=True)
    assert meta["model"] == name and ckpt["meta"]["dropped_keys"] == (
        ["fc.bias", "fc.weight"] if "resnet" in name else ["head.bias", "head.weight"]
    )
    model = MODELS.build(dict(type=backbone, model_name=name, **({"img_size": 32} if "vit" in name else {})))
    assert set(ckpt["state_dict"]) == set(model.state_dict())
    model.load_state_dict(ckpt["state_dict"], strict=True)
    src = rbdc.load_model(run / "final.safetensors").eval()
    x = torch.randn(1, 3, 32, 32) if "vit" in name else torch.randn(1, 3, 64, 64)  # the source ViT is fixed-size
    model.eval()
    idx = model.out_indices
    ref = (
        src.forward_intermediates(x, indices=idx, norm=True, intermediates_only=True)
        if "vit" in name
        else src.forward_intermediates(x, indices=idx, intermediates_only=True)
    )
    for got, want in zip(model(x), ref):
        torch.testing.assert_close(got, want)


@mmdet
def test_init_weights_reads_run_dirs_and_reports_coverage(det, tmp_path):
    """init_cfg Pretrained accepts an rbdc run folder directly; the load covers every key and drops only the
    classifier."""
    import rbdc
    from mmdet.registry import MODELS
    from rbdc.detection.weights import load_backbone

    run = _coupled(tmp_path, "test_rbdc_resnet")
    model = MODELS.build(
        dict(type="RBDCResNet", model_name="test_rbdc_resnet", init_cfg=dict(type="Pretrained", checkpoint=str(run)))
    )
    model.init_weights()
    assert model.is_init
    src = rbdc.load_model(run / "final.safetensors")
    torch.testing.assert_close(model.trunk.layer4[0].conv3.weight, src.layer4[0].conv3.weight)
    report = load_backbone(model, run)
    assert not report["missing"] and not report["unexpected"] and report["dropped"] == ["fc.bias", "fc.weight"]
    assert len(report["loaded"]) == len(model.state_dict())


@mmdet
def test_resnet18_balloon_config_loads_a_32px_resnet18_run(det, tmp_path, monkeypatch):
    """The ResNet-18 balloon config (issue 34's probes) takes a resnet18 run of the 32-px studies as it is: every trunk
    tensor loaded, stem and layer1 frozen, 128-channel FPN and heads; `--backbone none` leaves timm's random init."""
    import rbdc
    import timm
    from mmengine.config import Config
    from mmdet.registry import MODELS

    torch.manual_seed(0)
    src = timm.create_model("resnet18", num_classes=10)
    run = tmp_path / "r18-run"
    rbdc.save_weights(src, run / "final.safetensors")
    monkeypatch.setenv("BACKBONE_CKPT", str(run))
    cfg = Config.fromfile(REPO / "detection" / "configs" / "mask-rcnn_r18_fpn_balloon.py")
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.testing.assert_close(model.backbone.trunk.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    assert not any(p.requires_grad for p in model.backbone.trunk.layer1.parameters())
    assert all(p.requires_grad for p in model.backbone.trunk.layer2.parameters())
    assert model.neck.out_channels == model.roi_head.mask_head.conv_out_channels == 128
    cfg.model.backbone.init_cfg = None  # what det-train --backbone none sets
    fresh = MODELS.build(cfg.model)
    fresh.init_weights()
    assert not torch.equal(fresh.backbone.trunk.layer4[1].conv2.weight, src.layer4[1].conv2.weight)


@mmdet
def test_wrong_checkpoint_keys_fail_loudly(det, tmp_path):
    """A checkpoint of another family, a truncated one and one with extra keys are refused, naming the fix."""
    from mmdet.registry import MODELS
    from rbdc.detection.weights import CheckpointKeyError, export_backbone

    export_backbone(_coupled(tmp_path, "test_rbdc_resnet"), tmp_path / "resnet.pth")
    vit = MODELS.build(
        dict(
            type="RBDCViT",
            model_name="test_rbdc_vit",
            img_size=32,
            init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "resnet.pth")),
        )
    )
    with pytest.raises(CheckpointKeyError, match="records model 'test_rbdc_resnet'.*set model_name='test_rbdc_resnet'"):
        vit.init_weights()
    ckpt = torch.load(tmp_path / "resnet.pth", weights_only=True)
    resnet = MODELS.build(dict(type="RBDCResNet", model_name="test_rbdc_resnet"))
    from rbdc.detection.weights import load_backbone

    dropped = dict(ckpt["state_dict"])
    dropped.pop("trunk.layer4.0.conv3.weight")
    torch.save({"state_dict": dropped}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointKeyError, match="trunk.layer4.0.conv3.weight"):
        load_backbone(resnet, tmp_path / "missing.pth")
    torch.save({"state_dict": {**ckpt["state_dict"], "trunk.extra.weight": torch.zeros(1)}}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointKeyError, match="trunk.extra.weight"):
        load_backbone(resnet, tmp_path / "extra.pth")
    wrong = MODELS.build(dict(type="RBDCResNet", model_name="test_rbdc_resnet_basic"))
    with pytest.raises(CheckpointKeyError, match="wrong shape.*set model_name='test_rbdc_resnet'"):
        load_backbone(wrong, tmp_path / "resnet.pth")


@mmdet
def test_pos_embed_resampled_for_other_image_sizes(det, tmp_path):
    """A ViT checkpoint trained at 32 px loads into a backbone built for 64 px (grid 4x4 -> 8x8), and the backbone
    runs on non-square inputs of any multiple of the patch size."""
    from mmdet.registry import MODELS
    from rbdc.detection.weights import load_backbone

    run = _coupled(tmp_path, "test_rbdc_vit")
    model = MODELS.build(dict(type="RBDCViT", model_name="test_rbdc_vit", img_size=64))
    report = load_backbone(model, run)
    assert report["resampled"] == "pos_embed (4, 4) -> (8, 8)"
    assert model(torch.zeros(1, 3, 40, 72))[0].shape == (1, 64, 5, 9)
    with pytest.raises(ValueError, match="pad_size_divisor"):
        model(torch.zeros(1, 3, 36, 72))


@mmdet
def test_simple_fpn_levels(det):
    """The neck yields strides 4..32 (+ pooled 64) from one patch-16 map, and from four taps of a patch-8 trunk."""
    from rbdc.detection.neck import RBDCSimpleFPN

    one = RBDCSimpleFPN(in_channels=32, out_channels=16, in_stride=16)
    assert [f.shape[-1] for f in one([torch.zeros(1, 32, 4, 4)])] == [16, 8, 4, 2, 1]
    four = RBDCSimpleFPN(in_channels=32, out_channels=16, in_stride=8)
    assert [f.shape[-1] for f in four([torch.zeros(1, 32, 8, 8)] * 4)] == [16, 8, 4, 2, 1]
    with pytest.raises(ValueError, match="in_channels"):
        one([torch.zeros(1, 8, 4, 4)])


# ------------------------------------------------------------------------------------ launcher and balloon


def _args(config, work_dir, *options, **kw) -> argparse.Namespace:
    base = dict(
        config=str(config),
        work_dir=str(work_dir),
        cfg_options=list(options) or None,
        launcher="none",
        local_rank=0,
        backbone=None,
        amp=False,
        amp_dtype=None,
        auto_scale_lr=False,
        resume=None,
        iters=None,
        epochs=None,
    )
    return argparse.Namespace(**{**base, **kw})


# Tiny Mask R-CNN for CPU: a coupled test ViT (patch 8) at 128x96, a small head, a handful of images.
TINY = [
    "model.backbone.model_name=test_rbdc_vit",
    "model.backbone.img_size=32",
    "model.backbone.drop_path_rate=0",
    "model.neck.in_channels=64",
    "model.neck.in_stride=8",
    "model.neck.out_channels=64",
    "model.rpn_head.in_channels=64",
    "model.rpn_head.feat_channels=64",
    "model.roi_head.bbox_roi_extractor.out_channels=64",
    "model.roi_head.mask_roi_extractor.out_channels=64",
    "model.roi_head.bbox_head.in_channels=64",
    "model.roi_head.bbox_head.fc_out_channels=128",
    "model.roi_head.mask_head.in_channels=64",
    "model.roi_head.mask_head.conv_out_channels=64",
    "model.train_cfg.rcnn.sampler.num=64",
    "model.test_cfg.rpn.nms_pre=200",
    "model.test_cfg.rpn.max_per_img=100",
    "train_dataloader.num_workers=0",
    "train_dataloader.persistent_workers=False",
    "val_dataloader.num_workers=0",
    "val_dataloader.persistent_workers=False",
    "test_dataloader.num_workers=0",
    "test_dataloader.persistent_workers=False",
    "model.test_cfg.rcnn.max_per_img=20",
    "train_dataloader.dataset.indices=4",
    "val_dataloader.dataset.indices=4",
    "test_dataloader.dataset.indices=4",
    "train_cfg.max_epochs=1",
    "train_cfg.val_interval=1",
    "optim_wrapper.optimizer.lr=0.0002",
    "default_hooks.logger.interval=1",
    "default_hooks.checkpoint.interval=1",
    "default_hooks.visualization.draw=False",
]
BALLOON_VIT = REPO / "detection" / "configs" / "mask-rcnn_rbdc-deit-s_simplefpn_balloon.py"


@pytest.fixture
def small_balloon(monkeypatch, balloon):
    monkeypatch.setenv("BALLOON_ROOT", str(balloon))
    monkeypatch.setenv("BALLOON_SCALE", "128,96")
    monkeypatch.delenv("BACKBONE_CKPT", raising=False)
    return balloon


@mmdet
@pytest.mark.slow
def test_balloon_finetune_coupled_backbone(det, tmp_path, small_balloon):
    """A backbone coupled by rbdc trains on real balloon images, is evaluated with CocoMetric (bbox and segm),
    resumes under torch's weights_only loading, and the trained detector tests with the test launcher."""
    from rbdc.detection.launch import test, train
    from rbdc.detection.report import collect
    from rbdc.runs.rundir import code_version

    run = _coupled(tmp_path, "test_rbdc_vit")
    work = tmp_path / "work"
    assert train(_args(BALLOON_VIT, work, *TINY, backbone=str(run))) == 0
    metrics = json.loads((work / "metrics.json").read_text())["val"][-1]["metrics"]
    for key in ("coco/bbox_mAP", "coco/bbox_mAP_50", "coco/segm_mAP", "coco/segm_mAP_50"):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics)
    launch = json.loads((work / "launch.json").read_text())
    assert launch["backbone"] == str(run / "final.safetensors") and launch["wall_s"] > 0
    assert launch["code"] == code_version() and len(launch["code"]["commit"]) == 40  # what replays the run
    if not torch.cuda.is_available():
        assert set(launch["cpu"]) == {"capability", "bf16_fast", "model"}
    log = next(work.glob("*/*.log")).read_text()
    assert "RBDCViT: loaded" in log and "MISSING" not in log and "UNEXPECTED" not in log

    # Resume from the epoch-1 checkpoint into epoch 2 (MMEngine's own torch.load of HistoryBuffer & co.).
    more = [o for o in TINY if not o.startswith("train_cfg.max_epochs")] + [
        "train_cfg.max_epochs=2",
        "train_cfg.val_begin=3",
    ]
    assert train(_args(BALLOON_VIT, work, *more, backbone=str(run), resume="auto")) == 0
    assert (work / "epoch_2.pth").is_file()

    assert test(_args(BALLOON_VIT, work, *TINY, checkpoint=str(work / "epoch_2.pth"), out=None)) == 0
    row = collect(work)
    assert row["split"] == "test" and row["bbox_mAP"] is not None and row["segm_mAP"] is not None


# ------------------------------------------------------------------------------------------ bad inputs


@mmdet
def test_config_without_custom_imports_fails_loudly(det, tmp_path, small_balloon):
    """A config that uses RBDC types without importing rbdc.detection is refused before MMDetection's KeyError."""
    from rbdc.detection.launch import load_config
    from rbdc.errors import UserError

    cfg = tmp_path / "no-import.py"
    cfg.write_text(f"_base_ = '{BALLOON_VIT}'\ncustom_imports = dict(_delete_=True, imports=[])\n")
    with pytest.raises(UserError, match=r"custom_imports = dict\(imports=\['rbdc.detection'\]"):
        load_config(_args(cfg, tmp_path / "w", backbone="none"))
    typo = tmp_path / "typo.py"
    typo.write_text(f"_base_ = '{BALLOON_VIT}'\ncustom_imports = dict(imports=['rbdc.detecton'])\n")
    with pytest.raises(ImportError, match="rbdc.detecton"):
        load_config(_args(typo, tmp_path / "w", backbone="none"))


@mmdet
def test_missing_coco_root_fails_loudly(det, tmp_path, monkeypatch):
    """A COCO config whose $COCO_ROOT holds no annotations is refused, naming COCO_ROOT."""
    from rbdc.detection.launch import load_config
    from rbdc.errors import UserError

    monkeypatch.setenv("COCO_ROOT", str(tmp_path / "nowhere"))
    config = REPO / "detection" / "configs" / "mask-rcnn_rbdc-r50_fpn_1x_coco.py"
    with pytest.raises(UserError, match="set COCO_ROOT"):
        load_config(_args(config, tmp_path / "w", backbone="none"))


@mmdet
def test_missing_backbone_checkpoint_fails_loudly(det, tmp_path, small_balloon):
    """Training without the backbone file named in the config is refused, naming BACKBONE_CKPT and --backbone."""
    from rbdc.detection.launch import load_config
    from rbdc.errors import UserError

    with pytest.raises(UserError, match="BACKBONE_CKPT=PATH or --backbone"):
        load_config(_args(BALLOON_VIT, tmp_path / "w"))
    with pytest.raises(UserError, match="empty path"):
        load_config(_args(BALLOON_VIT, tmp_path / "w", backbone=""))


@mmdet
def test_checkpoint_allow_list_admits_mmengine_state_only(det, tmp_path):
    """MMEngine's MessageHub state (HistoryBuffer, numpy, getattr of its statistics) loads with weights_only=True;
    getattr of anything else, the door that allow-listing the builtin would open, stays shut."""
    import pickle

    from mmengine.logging import HistoryBuffer, MessageHub

    hub = MessageHub.get_instance("test-allow-list")
    hub.update_scalar("train/loss", 0.5)
    torch.save({"meta": {"message_hub": hub.state_dict()}}, tmp_path / "ok.pth")
    loaded = torch.load(tmp_path / "ok.pth", weights_only=True)["meta"]["message_hub"]["log_scalars"]["train/loss"]
    assert loaded.current() == 0.5

    class Sneaky:
        def __reduce__(self):
            return getattr, (HistoryBuffer, "__init__")

    torch.save({"x": Sneaky()}, tmp_path / "bad.pth")
    with pytest.raises(pickle.UnpicklingError, match="refusing getattr"):
        torch.load(tmp_path / "bad.pth", weights_only=True)


@mmdet
def test_doctor_reports_working_stack(det):
    """`rbdc doctor` finds mmcv's compiled ops working (nms/RoIAlign vs torchvision) and the backbones registered."""
    from rbdc.detection.doctor import run_checks

    checks = {c.name: c for c in run_checks()}
    assert all(c.ok for c in checks.values()), [c for c in checks.values() if not c.ok]
    assert "match torchvision" in checks["mmcv.ops (cpu)"].detail


# --------------------------------------------------------------------------- install path and documentation

DET_README = REPO / "detection" / "README.md"


def test_install_without_torch_names_tox_and_python(tmp_path):
    """install.sh with a Python that has no torch stops in one line naming `tox -e detection` and PYTHON=, not with
    a traceback from the wheelhouse key."""
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')  # -S: no site-packages, so no torch
    python.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHON": str(python)}
    res = subprocess.run(
        ["bash", str(REPO / "detection" / "install.sh")], capture_output=True, text=True, env=env, timeout=60
    )
    assert res.returncode == 2, res
    assert "tox -e detection" in res.stderr and "PYTHON=" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_build_progress_on_terminal_and_full_log_in_file(tmp_path):
    """run_logged.sh (the mmcv compile's wrapper) prints one line per compiled file, not the build's chatter; the log
    keeps everything; a failure prints the log's tail and keeps the command's exit status."""
    script = (
        'for i in 1 2 3; do echo "SetuptoolsDeprecationWarning $i" >&2; done\n'
        "echo '  [1/2] c++ -MMD -MF a.o.d -c -c /src/mmcv/ops/csrc/pytorch/nms.cpp -o a.o -O3'\n"
        "echo '  [2/2] c++ -c /src/mmcv/ops/csrc/pytorch/roi_align.cpp -o b.o'\n"
        "echo '  Created wheel for mmcv: filename=mmcv-2.1.0.whl'\n"
        "exit ${FAIL:-0}\n"
    )
    logged = [
        "bash",
        str(REPO / "detection" / "run_logged.sh"),
        str(tmp_path / "logs" / "build.log"),
        "bash",
        "-c",
        script,
    ]
    ok = subprocess.run(logged, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok
    shown = ok.stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in shown if re.match(r"\[\d\d:\d\d\] \d", line)] == [
        "1/2 nms.cpp",
        "2/2 roi_align.cpp",
    ]
    assert "Warning" not in ok.stdout + ok.stderr and str(tmp_path / "logs" / "build.log") in ok.stdout
    log = (tmp_path / "logs" / "build.log").read_text()
    assert log.count("SetuptoolsDeprecationWarning") == 3 and "roi_align.cpp -o b.o" in log
    bad = subprocess.run(logged, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "FAIL": "3"})
    assert bad.returncode == 3 and "SetuptoolsDeprecationWarning 3" in bad.stderr


def test_gitignore_covers_the_venv_file_tox_writes():
    """tox writes a `.venv` *file* (naming its env folder); `.venv/` would only ignore a folder."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "-q", ".venv"], cwd=REPO, timeout=30)
    assert ignored.returncode == 0, ".gitignore does not ignore a .venv file"
    tracked = subprocess.run(["git", "ls-files", ".venv"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert tracked.stdout.strip() == ""


def _tox() -> configparser.ConfigParser:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(REPO / "tox.ini")
    return tox


def test_readme_says_where_tox_puts_the_stack():
    """The READMEs name the env folder tox.ini really uses, and the tox env that runs rbdc commands there."""
    tox = _tox()
    env_dir = tox["testenv"]["env_dir"].strip()
    assert env_dir.startswith("{work_dir}/"), env_dir
    folder = ".tox/" + env_dir[len("{work_dir}/") :]
    text = DET_README.read_text()
    assert f"`{folder}/bin/rbdc doctor`" in text and f"{folder}/bin/python -m rbdc.detection" in text
    assert tox["testenv:detection-cli"]["commands"].strip() == "rbdc {posargs:doctor}"
    assert "tox -e detection-cli -- det-train" in text
    assert f"`{folder}/`" in (REPO / "README.md").read_text()


def test_readme_quotes_no_test_counts():
    """Counts of tests go stale with every added test: the README does not quote them."""
    assert not re.findall(r"\b\d+ (?:tests|passed)\b", DET_README.read_text())


def _readme_config(tag: str) -> str:
    """The ```python block below `<!-- tested: TAG -->` in detection/README.md."""
    m = re.search(rf"<!-- tested: {tag} -->\n```python\n(.*?)```", DET_README.read_text(), re.S)
    assert m, f"no tested block {tag!r} in {DET_README}"
    return m.group(1)


@mmdet
def test_lsj_config_trains_on_jittered_crops_of_the_balloon_scale(det, monkeypatch, balloon):
    """The large-scale-jitter balloon config resizes each training image by a factor in [0.5, 2] of the plain fit to
    BALLOON_SCALE and crops it to at most that scale; boxes are recomputed from the cropped masks; validation and the
    model are the plain config's."""
    import random

    import numpy as np
    from mmengine.config import Config
    from mmdet.registry import DATASETS
    from mmdet.structures.bbox import HorizontalBoxes
    from mmdet.utils import register_all_modules

    monkeypatch.setenv("BALLOON_ROOT", str(balloon))
    monkeypatch.setenv("BALLOON_SCALE", "128,96")
    register_all_modules()
    configs = REPO / "detection" / "configs"
    lsj = Config.fromfile(configs / "mask-rcnn_vit-nano_simplefpn_balloon-lsj.py")
    plain = Config.fromfile(configs / "mask-rcnn_vit-nano_simplefpn_balloon.py")
    assert lsj.val_dataloader == plain.val_dataloader and lsj.model == plain.model
    train = DATASETS.build(lsj.train_dataloader.dataset)
    random.seed(0)
    np.random.seed(0)
    zooms = []
    for i in range(12):
        sample = train[i % 3]["data_samples"]
        h, w = sample.img_shape
        assert h <= 96 and w <= 128
        fit = min(128 / max(sample.ori_shape), 96 / min(sample.ori_shape))  # mmcv fits long and short edges
        zooms.append(sample.scale_factor[0] / fit)
        masks = sample.gt_instances.masks
        assert masks.masks.shape[1:] == (h, w)
        assert torch.equal(sample.gt_instances.bboxes.tensor, HorizontalBoxes.from_instance_masks(masks).tensor)
    assert all(0.5 - 1e-6 <= z <= 2 + 1e-6 for z in zooms) and min(zooms) < 1 < max(zooms), zooms


@mmdet
def test_readme_own_dataset_form_builds_balloon(det, tmp_path, monkeypatch, balloon):
    """The README's short form for a custom dataset (MMDetection's Mask R-CNN + the dataset's keys) loads through
    the launcher's checks and builds balloon's train/val sets and a one-class detector; the two-bases form it warns
    about is refused in one line pointing at it."""
    from mmdet.registry import DATASETS, MODELS
    from rbdc.detection.launch import load_config
    from rbdc.errors import UserError

    monkeypatch.setenv("BALLOON_ROOT", str(balloon))
    cfg_file = tmp_path / "mine.py"
    cfg_file.write_text(_readme_config("own-dataset"))
    cfg = load_config(_args(cfg_file, tmp_path / "w", backbone="none"))
    train = DATASETS.build(cfg.train_dataloader.dataset)
    val = DATASETS.build(cfg.val_dataloader.dataset)
    assert train.metainfo["classes"] == ("balloon",) and (len(train), len(val)) == (61, 13)
    assert cfg.val_evaluator.ann_file == f"{balloon}/val.json" and cfg.test_dataloader == cfg.val_dataloader
    model = MODELS.build(cfg.model)
    assert model.roi_head.bbox_head.num_classes == 1

    both = tmp_path / "both.py"
    both.write_text(
        f"_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py', "
        f"'{REPO}/detection/configs/_base_/balloon-instance.py']\n"
    )
    with pytest.raises(UserError, match="Your own dataset"):
        load_config(_args(both, tmp_path / "w", backbone="none"))


@mmdet
@pytest.mark.parametrize("name", ["test_rbdc_vit", "test_rbdc_resnet"])
def test_export_prints_a_config_that_builds_when_pasted(det, tmp_path, name, capsys):
    """What `rbdc export-mmdet` prints, pasted below `_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'`,
    builds the detector, loads the exported backbone strictly and runs backbone + neck."""
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from rbdc.cli import main

    out = tmp_path / "backbone.pth"
    assert main(["export-mmdet", str(_coupled(tmp_path, name)), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    _, _, snippet = printed.partition("config (paste below ")
    base, _, snippet = snippet.partition("):\n")
    assert base == "_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'" and "_delete_=True" in snippet
    cfg_file = tmp_path / "pasted.py"
    cfg_file.write_text(f"{base}\n{snippet}")
    model = MODELS.build(Config.fromfile(cfg_file).model)
    model.init_weights()
    assert model.backbone.is_init
    with torch.no_grad():
        feats = model.neck(model.backbone(torch.zeros(1, 3, 64, 96)))
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]


@mmdet
def test_vit_on_default_fpn_refused_before_building(det, tmp_path):
    """A ViT backbone left on MMDetection's FPN (which would build, then assert at the first forward) is refused by
    the launcher, naming RBDCSimpleFPN."""
    from rbdc.detection.launch import load_config
    from rbdc.errors import UserError

    cfg = tmp_path / "vit-fpn.py"
    cfg.write_text(
        "_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'\n"
        "custom_imports = dict(imports=['rbdc.detection'], allow_failed_imports=False)\n"
        "model = dict(backbone=dict(_delete_=True, type='RBDCViT', model_name='test_rbdc_vit'))\n"
    )
    with pytest.raises(UserError, match=r"model.neck is 'FPN'.*type='RBDCSimpleFPN'"):
        load_config(_args(cfg, tmp_path / "w", backbone="none"))


@mmdet
def test_unknown_names_fail_in_one_line_with_the_closest(det, tmp_path, capsys, small_balloon):
    """An unregistered backbone type and a wrong timm model_name end in one line (exit 2) with the registered RBDC
    names / the closest match, from the launcher and from MODELS.build alike."""
    from mmdet.registry import MODELS
    from rbdc.cli import main
    from rbdc.detection.checks import UnknownNameError

    def config(backbone: str) -> Path:
        path = tmp_path / "bad.py"
        path.write_text(f"_base_ = '{BALLOON_VIT}'\nmodel = dict(backbone=dict({backbone}))\n")
        return path

    cases = [
        (
            "type='RBDCVit'",
            "'RBDCVit' is not registered (did you mean 'RBDCViT'?); rbdc registers RBDCResNet, RBDCSimpleFPN, RBDCViT",
        ),
        (
            "model_name='deit_smal_patch16_224'",
            "'deit_smal_patch16_224' is not a timm model (did you mean 'deit_small_patch16_224'?)",
        ),
    ]
    for backbone, expected in cases:
        assert main(["det-train", str(config(backbone)), "--backbone", "none", "--work-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(UnknownNameError, match="did you mean 'test_rbdc_vit'"):
        MODELS.build(dict(type="RBDCViT", model_name="test_rbdc_vt"))


@mmdet
def test_schedule_shortened_by_iters_and_epochs(det, tmp_path, small_balloon):
    """--epochs 12 moves the 24-epoch schedule's lr steps [16, 22] to [8, 11]; --iters 8 makes an iteration loop
    with the steps at the same fractions, the warm-up cut at 8, and validation/checkpoint at the end."""
    from rbdc.detection.launch import load_config

    cfg = load_config(_args(BALLOON_VIT, tmp_path / "w", backbone="none", epochs=12))
    assert cfg.train_cfg.max_epochs == 12 and cfg.train_cfg.type == "EpochBasedTrainLoop"
    warmup, steps = cfg.param_scheduler
    assert (steps.milestones, steps.end, steps.by_epoch, warmup.end) == ([8, 11], 12, True, 100)
    cfg = load_config(_args(BALLOON_VIT, tmp_path / "w", backbone="none", iters=8))
    assert cfg.train_cfg == dict(type="IterBasedTrainLoop", max_iters=8, val_interval=8)
    warmup, steps = cfg.param_scheduler
    assert (steps.milestones, steps.end, steps.by_epoch, warmup.end) == ([5, 7], 8, False, 8)
    assert not cfg.default_hooks.checkpoint.by_epoch and cfg.default_hooks.checkpoint.interval == 8
    assert cfg.log_processor.by_epoch is False
    from rbdc.errors import UserError

    with pytest.raises(UserError, match="positive"):
        load_config(_args(BALLOON_VIT, tmp_path / "w", backbone="none", iters=0))


@mmdet
@pytest.mark.slow
def test_det_train_iters_runs_a_short_balloon_training(det, tmp_path, small_balloon):
    """`rbdc det-train --iters 2` trains two iterations, validates (CocoMetric) and checkpoints at the end."""
    from rbdc.cli import main

    run = _coupled(tmp_path, "test_rbdc_vit")
    work = tmp_path / "work"
    options = [o for o in TINY if not o.startswith(("train_cfg.", "default_hooks.checkpoint"))]
    assert (
        main(
            [
                "det-train",
                str(BALLOON_VIT),
                "--iters",
                "2",
                "--backbone",
                str(run),
                "--work-dir",
                str(work),
                "--cfg-options",
                *options,
            ]
        )
        == 0
    )
    assert (work / "iter_2.pth").is_file()
    val = json.loads((work / "metrics.json").read_text())["val"]
    assert len(val) == 1 and val[0]["iter"] == 2 and "coco/segm_mAP" in val[0]["metrics"]


# ------------------------------------------------------------------------------------------ detection study


def _det_study(tmp: Path, **over) -> Path:
    """A detection study over a fake classification study (2 points x 2 seeds of coupled test ViTs), 1 iteration."""
    import yaml

    import rbdc

    for point in ("vit-scratch", "vit-rbdc-d1"):
        for seed in (0, 1):
            torch.manual_seed(seed + (10 if point == "vit-rbdc-d1" else 0))
            wide = rbdc.couple([rbdc.narrow("test_rbdc_vit", 2) for _ in range(2)])
            run = tmp / "cls" / "tiny" / point / "b32" / f"seed{seed}"
            rbdc.save_weights(wide, run / "final.safetensors")
            # what an rbdc run records of it: the final stage's sha256 (a parent stage's differs), top-1, FLOPs
            digest = rbdc.runs.rundir.sha256(run / "final.safetensors")
            (run / "manifest.json").write_text(
                json.dumps(
                    {
                        "stages": {
                            "L0.0": {"sha256": "0" * 64, "parents": []},
                            "L1": {"sha256": digest, "parents": [{"stage": "L0.0", "sha256": "0" * 64}]},
                        }
                    }
                )
            )
            (run / "results.json").write_text(json.dumps({"eval_top1": 50.0 + seed, "total_train_flops": 2e12}))
    options = [o for o in TINY if not o.startswith(("train_cfg.", "default_hooks.checkpoint"))]
    study = {
        "name": "det-tiny",
        "kind": "detection",
        "description": "a smoke test",
        "backbones": {
            "study": "tiny",
            "budget": 32,
            "seeds": [0, 1],
            "points": {"scratch": "vit-scratch", "rbdc": "vit-rbdc-d1"},
        },
        "config": str(BALLOON_VIT),
        "scale": [128, 96],
        "iters": 1,
        "jobs": 2,
        "cfg_options": options,
        **over,
    }
    path = tmp / "det-tiny.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))  # the first label is the reference
    return path


@mmdet
def test_detection_study_runs_resumes_and_reports_with_intervals(det, tmp_path, small_balloon, capsys):
    """`rbdc det-study` fine-tunes every (backbone, seed) through the pool, a rerun trains nothing, and the report
    gives AP per backbone with t-intervals, the difference with a Welch interval, sha256-traced rows and curves."""
    from rbdc.cli import main
    from rbdc.detection.study import load_study, status, sync
    from rbdc.report.detection import build
    from rbdc.runs.rundir import sha256

    path = _det_study(tmp_path)
    out, cls = tmp_path / "det", tmp_path / "cls"
    assert main(["det-study", str(path), "-o", str(out), "--backbones", str(cls)]) == 0
    assert "[4/4]" in capsys.readouterr().out
    assert main(["det-study", str(path), "-o", str(out), "--backbones", str(cls)]) == 0
    assert "4 done, 0 to run" in capsys.readouterr().out

    # Killed during its final validation: the checkpoint is written, metrics.json lacks the last entry. The rerun
    # has nothing left to train, validates, and only then counts as done.
    study = load_study(path)
    wd = study.runs[0].work_dir(out, study)
    metrics, launch = json.loads((wd / "metrics.json").read_text()), json.loads((wd / "launch.json").read_text())
    final = metrics["val"].pop()
    (wd / "metrics.json").write_text(json.dumps(metrics))
    (wd / "launch.json").write_text(json.dumps({**launch, "wall_s": None}))
    assert status(wd, study) == "started"
    assert main(["det-study", str(path), "-o", str(out), "--backbones", str(cls)]) == 0
    assert "3 done, 1 to run" in capsys.readouterr().out and status(wd, study) == "done"
    assert json.loads((wd / "metrics.json").read_text())["val"][-1]["iter"] == final["iter"]
    # the killed segment's time up to its checkpoint stays in the run's wall time
    assert (
        json.loads((wd / "launch.json").read_text())["wall_s"]
        >= (wd / "iter_1.pth").stat().st_mtime - launch["started_at"]
    )

    committed = tmp_path / "committed"
    assert len(sync(study, out, committed, cls)) == 4
    assert not list((committed / "det-tiny" / "backbones").rglob("*.safetensors"))  # light files only by default
    paths = build(study, committed, tmp_path / "rep" / "det-tiny")
    first = {k: p.read_bytes() for k, p in paths.items()}
    assert {k: p.read_bytes() for k, p in build(study, committed, tmp_path / "rep" / "det-tiny").items()} == first
    rows = json.loads(paths["json"].read_text())
    assert sorted((r["label"], r["seed"]) for r in rows) == [("rbdc", 0), ("rbdc", 1), ("scratch", 0), ("scratch", 1)]
    for r in rows:
        assert r["backbone_sha256"] == sha256(r["backbone"]) and 0 <= r["bbox_mAP"] <= 100
        assert r["backbone_run"] == f"reports/runs/det-tiny/backbones/tiny/{r['point']}/b32/seed{r['seed']}"
        assert r["run"] == f"reports/runs/det-tiny/{r['label']}/seed{r['seed']}/ft0"  # paths in the repository
        assert r["backbone_matches"] is True and r["backbone_top1"] == 50.0 + r["seed"] and len(r["commit"]) == 40
    md = paths["md"].read_text()
    assert "| rbdc − scratch |" in md and " ± " in md and "## Verdict" in md
    assert "| scratch | vit-scratch | 2 | 50.5 ± 6.4 |" in md and "(matches)" in md and "run-hours in all" in md
    assert "differs" not in md and f"--cfg-options {' '.join(study.cfg_options)}" in md
    assert first["png"][:8] == b"\x89PNG\r\n\x1a\n"
    # one iteration of training: no run is past the floor, and the verdict says the AP gap is not about backbones
    assert max(r["bbox_mAP_50"] for r in rows) < 10 and "**The detectors barely learned**" in md
    learned = committed / "det-tiny" / "scratch" / "seed0" / "ft0" / "metrics.json"
    saved = learned.read_text()
    m = json.loads(saved)
    m["val"][-1]["metrics"]["coco/bbox_mAP_50"] = 0.25
    learned.write_text(json.dumps(m))
    assert "barely learned" not in build(study, committed, tmp_path / "rep" / "det-tiny")["md"].read_text()
    learned.write_text(saved)

    # A backbone retrained after its fine-tuning (its final model is another file now) is flagged, row by row.
    manifest = committed / "det-tiny" / "backbones" / "tiny" / "vit-rbdc-d1" / "b32" / "seed1" / "manifest.json"
    manifest.write_text(manifest.read_text().replace(rows[-1]["backbone_sha256"], "1" * 64))
    md = build(study, committed, tmp_path / "rep" / "det-tiny")["md"].read_text()
    assert md.count("**differs from its manifest**") == 1
    assert (
        "1 run(s) loaded a backbone that is not their backbone run's final model** (sha256 against its "
        "manifest): det-tiny/rbdc/seed1/ft0" in md
    )


@mmdet
def test_a_study_keeping_backbone_weights_replays_from_the_committed_copy(det, tmp_path, small_balloon):
    """With `keep_backbone_weights`, --report copies each backbone's final.safetensors beside its light files: a
    det-study given that copy as --backbones finds every checkpoint, bit for bit the one each run loaded."""
    from rbdc.cli import main
    from rbdc.detection.study import load_study, sync
    from rbdc.runs.rundir import sha256

    path = _det_study(tmp_path, keep_backbone_weights=True)
    study = load_study(path)
    out, cls, committed = tmp_path / "det", tmp_path / "cls", tmp_path / "committed"
    assert main(["det-study", str(path), "-o", str(out), "--backbones", str(cls)]) == 0
    assert len(sync(study, out, committed, cls)) == 4
    copies = committed / "det-tiny" / "backbones"
    for r in study.runs:
        launch = json.loads((r.work_dir(out, study) / "launch.json").read_text())
        assert sha256(r.backbone(copies, study)) == launch["backbone_sha256"]


@mmdet
@pytest.mark.slow
def test_a_detection_study_fine_tunes_its_random_init_control_like_the_pretrained_backbones(
    det, tmp_path, small_balloon
):
    """End to end through det-train: the study writes the control's backbone, the fine-tuning loads it strictly (its
    sha256 recorded), with the same fine-tuning seed as the pretrained backbones, and the report reads it."""
    from rbdc.cli import main
    from rbdc.detection.study import load_study, sync
    from rbdc.report.detection import build
    from rbdc.runs.rundir import sha256

    backbones = {
        "study": "tiny",
        "budget": 32,
        "seeds": [0],
        "points": {"scratch": "vit-scratch", "rbdc": "vit-rbdc-d1"},
        "random_init": {"label": "random-init", "model": "test_rbdc_vit"},
    }
    path = _det_study(tmp_path, backbones=backbones)
    study = load_study(path)
    out, cls = tmp_path / "det", tmp_path / "cls"
    assert main(["det-study", str(path), "-o", str(out), "--backbones", str(cls)]) == 0
    written = out / "det-tiny" / "random-init" / "seed0" / "backbone" / "final.safetensors"
    launches = {r.label: json.loads((r.work_dir(out, study) / "launch.json").read_text()) for r in study.runs}
    assert launches["random-init"]["backbone"] == str(written)
    assert launches["random-init"]["backbone_sha256"] == sha256(written)
    seeds = {
        label: [a for a in launch["argv"] if a.startswith("randomness.seed=")] for label, launch in launches.items()
    }
    assert seeds["random-init"] == seeds["scratch"] == seeds["rbdc"] == ["randomness.seed=0"]
    committed = tmp_path / "committed"
    assert len(sync(study, out, committed, cls)) == 3
    rows = json.loads(build(study, committed, tmp_path / "rep" / "det-tiny")["json"].read_text())
    control = next(r for r in rows if r["label"] == "random-init")
    assert control["backbone_matches"] is True
    assert control["backbone_run"] == "reports/runs/det-tiny/random-init/seed0/backbone"


@pytest.mark.parametrize(
    "over, message",
    [
        ({"epochs": 2}, "exactly one of epochs"),
        ({"scale": [128]}, "scale must be"),
        ({"cfg_options": ["nokey"]}, "cfg_options must be"),
        ({"typo": 1}, "unknown key(s) ['typo']"),
        ({"kind": None}, "says `kind: detection`"),
        ({"jobs": 0}, "jobs must be a positive integer"),
        ({"finetune_seeds": [-1]}, "finetune_seeds must be a list of non-negative integers"),
        ({"keep_backbone_weights": "yes"}, "keep_backbone_weights must be true or false"),
        (
            {"backbones": {"study": "tiny", "budget": 32, "seeds": [0], "points": {"backbones": "vit-scratch"}}},
            "`backbones` is the folder of the backbone runs' copies",
        ),
    ],
)
def test_a_bad_detection_study_names_the_key(tmp_path, over, message):
    from rbdc.detection.study import load_study
    from rbdc.errors import UserError

    with pytest.raises(UserError, match=re.escape(message)):
        load_study(_det_study(tmp_path, **over))


def test_a_detection_study_without_its_backbones_says_which_study_to_run(tmp_path, capsys):
    from rbdc.cli import main

    path = _det_study(tmp_path)
    assert main(["det-study", str(path), "-o", str(tmp_path / "det"), "--backbones", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "with the tiny study first" in err  # the command that trains exactly these backbones, not the whole study
    assert f"-o {tmp_path / 'none'} --only tiny/vit-scratch/b32 --only tiny/vit-rbdc-d1/b32)" in err


def test_a_detection_study_runs_seed_major_and_needs_only_the_backbones_it_still_trains(tmp_path, capsys):
    """The pool starts runs in the study's order: seed by seed, every backbone at each seed, so a study stopped
    part-way compares the backbones at the same seeds. Finished runs (e.g. light files copied from reports/runs) have
    recorded their backbone and sha256: the study does not ask for their checkpoints again."""
    from rbdc.cli import main
    from rbdc.detection.study import load_study

    path = _det_study(tmp_path)
    study = load_study(path)
    assert [(r.label, r.seed) for r in study.runs] == [("scratch", 0), ("rbdc", 0), ("scratch", 1), ("rbdc", 1)]
    out = tmp_path / "det"
    for r in study.runs:
        wd = r.work_dir(out, study)
        wd.mkdir(parents=True)
        (wd / "launch.json").write_text(json.dumps({"wall_s": 1.0, "backbone": "elsewhere", "backbone_sha256": "0"}))
        (wd / "metrics.json").write_text(json.dumps({"val": [{"iter": 1, "epoch": 1, "metrics": {}}]}))
    assert main(["det-study", str(path), "-o", str(out), "--backbones", str(tmp_path / "none")]) == 0
    assert "4 done, 0 to run" in capsys.readouterr().out
