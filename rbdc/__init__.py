"""rbdc: Recursive Block-Diagonal Coupling (arXiv 2605.23656) on timm — reproduction and stress-test suite.

Importing the package registers the narrow variants (``rbdc_<model>_w<divisor>``, ``test_rbdc_*``) in timm's registry
and, through :mod:`rbdc.growth`, how :func:`load_model` rebuilds grown models (see
:func:`rbdc.nets.checkpoint.register_rebuild`).
"""

from .nets.checkpoint import load_model, load_weights, save_weights
from .coupling import couple, couple_tree, plan
from .flops import Ledger, forward_flops, forward_macs, measured_train_flops_per_image, train_flops_per_image
from .nets.models import narrow, scaled
from .nets import variants  # noqa: F401  (registers rbdc's model names in timm's registry)
from . import growth  # noqa: F401  (registers the growth baselines' checkpoint rebuilds)

__version__ = "0.1.0"
__all__ = [
    "narrow",
    "scaled",
    "couple",
    "couple_tree",
    "plan",
    "Ledger",
    "forward_macs",
    "forward_flops",
    "train_flops_per_image",
    "measured_train_flops_per_image",
    "save_weights",
    "load_weights",
    "load_model",
]
