"""Training protocols: each is a plan of stages and how each stage's model is built, one file each, registered.

* ``scratch``: the target alone; ``rbdc``: train narrow models, couple, train on, recursively;
* ``net2net`` / ``mixturegrowth``: rbdc's plan at depth 1 (one / two half-width models, then grow);
* ``gradmax``: one lineage growing its inner widths during training; ``diffusionblocks``: blockwise diffusion.

Adding a protocol: a file here with a :class:`Protocol` subclass decorated by :func:`register`, imported below; its
own recipe keys are a dataclass of :func:`keys.key` fields in that file (``keys``, under the recipe section
``section``), from which :mod:`rbdc.recipe` assembles the typed recipe.
"""

# importing registers them; this order is the registry's, hence the report's rows and the CLI's choices
from . import scratch  # noqa: F401
from . import rbdc  # noqa: F401
from . import net2net  # noqa: F401
from . import gradmax  # noqa: F401
from . import mixturegrowth  # noqa: F401
from . import diffusionblocks  # noqa: F401
from . import hypercloning  # noqa: F401
from .base import (
    BuildContext,
    Built,
    PlanData,
    Protocol,
    Stage,
    get,
    names,
    register,
    registry,
    stage_seed,
    target_fpi,
    whole_steps,
)
from .planning import describe_plan, lr_for, matched_budget, plan_stages

__all__ = [
    "Protocol",
    "Stage",
    "PlanData",
    "BuildContext",
    "Built",
    "register",
    "registry",
    "names",
    "get",
    "plan_stages",
    "describe_plan",
    "matched_budget",
    "lr_for",
    "stage_seed",
    "target_fpi",
    "whole_steps",
]
