"""MMDetection bridge: RBDC (and standard) timm backbones for Mask R-CNN, checkpoint export, launchers.

In a config::

    custom_imports = dict(imports=['rbdc.detection'], allow_failed_imports=False)
    model = dict(backbone=dict(_delete_=True, type='RBDCViT', model_name='deit_small_patch16_224',
                               init_cfg=dict(type='Pretrained', checkpoint='backbone.pth')),
                 neck=dict(_delete_=True, type='RBDCSimpleFPN', in_channels=384))

Importing this package registers ``RBDCViT``, ``RBDCResNet`` and ``RBDCSimpleFPN`` in ``mmdet.registry.MODELS`` and
allow-lists MMEngine's checkpoint classes for ``torch.load`` (see :mod:`rbdc.detection.compat`).

When the detection stack is not installed (or does not import), the package still imports, so that ``rbdc doctor`` and
``rbdc export-mmdet`` work and can say what is wrong; the registered classes are then missing and
:func:`require_stack` raises the recorded error with the fix. A config that reaches this import has already resolved
``mmdet::`` base configs, i.e. has MMDetection installed, so this never turns into a silent registry miss.
"""

from __future__ import annotations

import sys
import warnings

__all__ = ["RBDCViT", "RBDCResNet", "RBDCSimpleFPN", "require_stack", "stack_error", "DetectionStackError"]

INSTALL_HINT = (
    "if `tox -e detection` installed the stack, it is in tox's env only: run `tox -e detection-cli -- "
    "<rbdc arguments>` (or that env's bin/rbdc); else install it into this Python with "
    f"`PYTHON={sys.executable} bash detection/install.sh` (builds mmcv 2.1.0 with ops once per machine); "
    "`rbdc doctor` shows what is missing"
)


class DetectionStackError(ImportError):
    """MMDetection, MMEngine or mmcv (with its compiled ops) is missing or does not import."""


_STACK_ERROR: BaseException | None = None
# MMEngine 0.10.7 imports pkg_resources to find `mmdet::` configs; setuptools < 81 (pinned) still has it but warns on
# every config load. The pin is deliberate (detection/README.md), so the warning carries no news.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

try:
    from rbdc.detection.compat import allow_mmengine_checkpoints
    from rbdc.detection.backbones import RBDCResNet, RBDCViT
    from rbdc.detection.hooks import RBDCMetricsHook  # noqa: F401  (registered for the launchers)
    from rbdc.detection.neck import RBDCSimpleFPN
except ModuleNotFoundError as _err:
    if (_err.name or "").split(".")[0] not in ("mmdet", "mmcv", "mmengine", "pycocotools"):
        raise
    _STACK_ERROR = _err
except AssertionError as _err:  # mmdet's `mmcv < 2.2.0` version assert, raised at `import mmdet`
    _STACK_ERROR = _err
else:
    allow_mmengine_checkpoints()


def stack_error() -> BaseException | None:
    """The error that kept the detection stack from importing, or None when the backbones are registered."""
    return _STACK_ERROR


def require_stack() -> None:
    """Raise :class:`DetectionStackError` (naming the fix) unless the backbones are registered with MMDetection."""
    if _STACK_ERROR is not None:
        raise DetectionStackError(
            f"the MMDetection stack does not import ({type(_STACK_ERROR).__name__}: {_STACK_ERROR}); {INSTALL_HINT}"
        ) from _STACK_ERROR


def __getattr__(name: str):
    if name in ("RBDCViT", "RBDCResNet", "RBDCSimpleFPN"):
        require_stack()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
