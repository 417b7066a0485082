"""``rbdc doctor``: does the detection stack import, are mmcv's compiled ops there and do they compute?

Answers the usual MMDetection install failures (``No module named 'mmcv._ext'``, mmdet's ``mmcv < 2.2.0`` assert, a
wheel built for another torch) in one command, with versions and the fix.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import platform
import sys
import traceback
from dataclasses import asdict, dataclass
from typing import Callable

import rbdc.detection as det  # its import applies the allow-list

__all__ = ["Check", "run_checks", "format_checks"]

FIX_BUILD = (
    f"run `PYTHON={sys.executable} bash detection/install.sh` (builds mmcv 2.1.0 with ops for this torch, "
    "then installs the extra), or use tox's env: `tox -e detection-cli` runs this doctor there"
)
EXPECTED = {"mmengine": "0.10.7", "mmcv": "2.1.0", "mmdet": "3.3.0"}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True


def _version(mod: str) -> tuple[bool, str]:
    try:
        m = importlib.import_module(mod)
    except Exception as e:  # report any import failure, whatever its type (mmdet raises AssertionError)
        return False, f"does not import: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    try:
        return True, getattr(m, "__version__", None) or importlib.metadata.version(mod)
    except importlib.metadata.PackageNotFoundError:
        return True, "?"


def _try(name: str, fn: Callable[[], str], fix: str, required: bool = True) -> Check:
    try:
        return Check(name, True, fn(), required)
    except Exception as e:  # a failing op or import is the finding, not a crash of the doctor
        first = traceback.format_exception_only(type(e), e)[0].strip().splitlines()[0]
        return Check(name, False, f"{first[:240]}; {fix}", required)


def _ops(device: str) -> str:
    import torch
    from mmcv.ops import RoIAlign, nms
    from torchvision.ops import roi_align

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]], device=device)
    scores = torch.tensor([0.9, 0.8, 0.7], device=device)
    _, keep = nms(boxes, scores, iou_threshold=0.5)
    if keep.tolist() != [0, 2]:
        raise RuntimeError(f"nms kept {keep.tolist()}, expected [0, 2]")
    feat = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32, device=device).reshape(2, 3, 16, 16) / 100
    rois = torch.tensor([[0, 1.0, 1.0, 9.0, 9.0], [1, 2.0, 3.0, 14.0, 12.0]], device=device)
    got = RoIAlign((4, 4), spatial_scale=1.0, sampling_ratio=2, aligned=True)(feat, rois)
    ref = roi_align(feat, rois, (4, 4), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    err = (got - ref).abs().max().item()
    if err > 1e-4:
        raise RuntimeError(f"RoIAlign differs from torchvision by {err:.2e}")
    return f"nms and RoIAlign run on {device} and match torchvision (max diff {err:.1e})"


def _registry() -> str:
    from mmdet.registry import MODELS

    det.require_stack()
    missing = [n for n in ("RBDCViT", "RBDCResNet", "RBDCSimpleFPN") if MODELS.get(n) is None]
    if missing:
        raise RuntimeError(f"{missing} not in the mmdet model registry")
    return "RBDCViT, RBDCResNet, RBDCSimpleFPN registered in mmdet::model"


def _resume_patch() -> str:
    import io

    import torch
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance("rbdc-doctor")
    hub.update_scalar("train/loss", 1.5)
    hub.update_info("iter", 3)
    buf = io.BytesIO()
    torch.save({"meta": {"message_hub": hub.state_dict()}}, buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)
    return "a MessageHub state (HistoryBuffer, numpy) loads under torch.load(weights_only=True)"


def run_checks() -> list[Check]:
    """Every check, in dependency order; later ones are skipped (reported failed) when what they need is missing."""
    import torch

    checks = [Check("python", True, platform.python_version())]
    cuda = (
        f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)"
        if torch.cuda.is_available()
        else f"no CUDA device (built with CUDA {torch.version.cuda})"
        if torch.version.cuda
        else "CPU build"
    )
    checks.append(Check("torch", True, f"{torch.__version__} ({cuda})"))
    for mod in ("torchvision", "timm", "numpy"):
        ok, v = _version(mod)
        checks.append(Check(mod, ok, v))
    for mod in ("mmengine", "mmcv", "mmdet", "pycocotools"):
        ok, v = _version(mod)
        want = EXPECTED.get(mod)
        if ok and want and v != want:
            v += f" (tested with {want}; other versions may fail, see detection/README.md)"
        checks.append(Check(mod, ok, v if ok else f"{v}; {FIX_BUILD}"))
    checks.append(
        _try(
            "mmcv._ext",
            lambda: importlib.import_module("mmcv._ext").__file__,
            f"mmcv was installed without its compiled ops; {FIX_BUILD}",
        )
    )
    checks.append(_try("mmcv.ops (cpu)", lambda: _ops("cpu"), FIX_BUILD))
    if torch.cuda.is_available():
        checks.append(
            _try(
                "mmcv.ops (cuda)",
                lambda: _ops("cuda"),
                "the mmcv wheel has no CUDA ops: rebuild it on a machine with nvcc (FORCE_CUDA=1 "
                "bash detection/build_mmcv.sh)",
            )
        )
    checks.append(_try("rbdc.detection", _registry, "fix the failures above"))
    checks.append(_try("resume (torch.load)", _resume_patch, "see rbdc/detection/compat.py"))
    return checks


def format_checks(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    return "\n".join(f"{'ok  ' if c.ok else 'FAIL'}  {c.name.ljust(width)}  {c.detail}" for c in checks)


def cmd_doctor(args) -> int:
    checks = run_checks()
    print(json.dumps([asdict(c) for c in checks], indent=1) if args.json else format_checks(checks))
    return 0 if all(c.ok for c in checks if c.required) else 1
