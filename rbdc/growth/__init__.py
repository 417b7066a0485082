"""Model-growth baselines at equal training FLOPs (issue 5): Net2Net, GradMax, MixtureGrowth.

Each operator is a pure function from a trained narrower model (and, where the method needs it, a batch and a loss)
to the grown model; protocols call them during training and add the FLOPs they report to the ledger.
"""

from .optimizer_state import grow_named_state, grow_optimizer_state
from .relu1 import ReLU1
from .spaces import inner_widths
from .gradmax import gradmax_grow, gradmax_model, gradmax_schedule, gradmax_start, gradmax_widths
from .mixturegrowth import TemplateConv2d, TemplateLinear, materialize, mixture_grow, mixture_member, templatize
from .net2net import net2wider

__all__ = [
    "net2wider",
    "gradmax_grow",
    "gradmax_schedule",
    "gradmax_start",
    "gradmax_model",
    "gradmax_widths",
    "grow_optimizer_state",
    "grow_named_state",
    "mixture_member",
    "templatize",
    "materialize",
    "mixture_grow",
    "TemplateConv2d",
    "TemplateLinear",
    "inner_widths",
    "ReLU1",
]
