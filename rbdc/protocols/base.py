"""What a protocol is: a plan of stages and how each stage's starting model is built; and the registry.

A protocol is a :class:`Protocol` subclass in its own file of this package, registered with :func:`register`
(timm-style). Recipe validation (``protocol:``), the report's row order and colours, the CLI's ``--protocol`` choices
and the engine read the registry; nothing outside this package branches on a protocol's name.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn as nn

from ..errors import UserError
from ..flops import train_flops_per_image
from ..nets.models import scaled
from ..nets.variants import widen_name

if TYPE_CHECKING:  # the typed recipe is assembled from the registry (rbdc.recipe imports this package)
    from ..recipe import Recipe

__all__ = [
    "Stage",
    "PlanData",
    "BuildContext",
    "Built",
    "Protocol",
    "register",
    "get",
    "names",
    "registry",
    "whole_steps",
    "stage_seed",
    "target_fpi",
    "stage_name",
]


@dataclass
class Stage:
    """One stage of a protocol: train ``model_name`` for ``steps`` optimizer steps of the global batch at ``lr``,
    starting from a model built from the ``parents`` stages (none: a fresh model seeded with ``seed``)."""

    id: str
    model_name: str
    steps: int
    seed: int
    lr: float
    warmup_steps: int = 0
    level: int = 0
    factor: Fraction = Fraction(1)
    parents: list[str] = field(default_factory=list)
    flops_per_image: int = 0
    sched_total: int | None = None  # cosine length (default: steps); > steps when the schedule continues
    sched_offset: int = 0  # where on that cosine this stage starts
    extra_flops: int = 0  # spent building the stage's model (GradMax's gradient pass), not in its steps


@dataclass
class PlanData:
    """What a plan needs besides the recipe: the data's size and the budget the recipe asks for."""

    train_size: int
    num_classes: int
    steps_per_epoch: int
    warmup_steps: int  # the recipe's warm-up in steps
    lr: float
    budget: float | None  # training FLOPs (``budget``, ``budget_epochs`` or ``match``), None: epochs

    @property
    def budget_text(self) -> str:
        return f"the budget of {self.budget:.4g} FLOPs" if self.budget is not None else ""

    def steps_for(self, epochs: float) -> int:
        return whole_steps(epochs * self.steps_per_epoch, f"{epochs:g} epochs of {self.steps_per_epoch} steps")


@dataclass
class BuildContext:
    """What building a stage's model may read: the run's recipe and plan, its loader, where it runs."""

    recipe: Recipe
    num_classes: int
    stages: list[Stage]
    optimizer_state: Callable[[str], dict]  # a finished stage's carried optimizer state, by stage id
    train_loader: Any
    device: torch.device
    world: int
    log: Callable[..., None]

    def stage(self, stage_id: str) -> Stage:
        return next(s for s in self.stages if s.id == stage_id)

    @property
    def timm_kwargs(self) -> dict:
        rec = self.recipe
        return dict(num_classes=self.num_classes, drop_path_rate=rec.drop_path, **rec.model_kwargs)


@dataclass
class Built:
    """A stage's starting model, its carried optimizer state (or None), and the ``(model, images,
    flops_per_image)`` the growth itself spent (or None), for the ledger."""

    model: nn.Module
    optimizer_state: dict | None = None
    cost: tuple[str, int, int] | None = None


class Protocol:
    """A training protocol. Subclasses set ``name`` and ``color`` and implement :meth:`plan`; :meth:`init` (a
    stage without parents) and, for protocols that grow, :meth:`grow`."""

    name: ClassVar[str]
    color: ClassVar[str]  # the report's colour of its runs
    subject: ClassVar[bool] = False  # the method under study: the report compares the others with it
    evaluates_growth: ClassVar[bool] = True  # evaluate a grown model before it trains (summary rows at epoch -1)
    own_objective: ClassVar[bool] = False  # the model's forward(x, y) returns its training loss
    section: ClassVar[str | None] = None  # the recipe mapping that holds its own keys (rbdc, growth, ...)
    keys: ClassVar[Any] = None  # its own keys: a dataclass of ``key()`` fields, or one free-form key()
    sections: ClassVar[tuple[str, ...]] = ()  # other protocols' sections its plan also reads (rbdc's levels)

    def owns_key(self, key: str) -> bool:
        """Whether recipe key ``key`` means anything to this protocol: a common key (to all), one of its own, or
        one of a section it reads."""
        section, _, leaf = key.rpartition(".")
        if section in ("", "data") or section in self.sections:
            return True
        own = self.keys
        return section == self.section and (
            isinstance(own, dataclasses.Field) or leaf in {f.name for f in dataclasses.fields(own)}
        )

    def upgrade(self, raw: dict, recipe: dict) -> None:
        """Give ``recipe`` (resolved, still a mapping) the meaning that ``raw`` (what its files and overrides set)
        had before a key of this protocol existed; nothing by default."""

    def plan(self, recipe: Recipe, data: PlanData) -> list[Stage]:
        raise NotImplementedError

    def carries_optimizer(self, recipe: Recipe) -> bool:
        """Whether a stage's optimizer state is saved and carried into the stages grown from it."""
        return False

    def build(self, stage: Stage, parents: list[Path], ctx: BuildContext) -> Built:
        """The starting model of ``stage`` from its parents' verified final weights (in ``stage.parents`` order)."""
        if not stage.parents:
            torch.manual_seed(stage.seed)
            return Built(self.init(stage, ctx))
        return self.grow(stage, parents, ctx)

    def init(self, stage: Stage, ctx: BuildContext) -> nn.Module:
        return scaled(ctx.recipe.model, stage.factor, **ctx.timm_kwargs)

    def grow(self, stage: Stage, parents: list[Path], ctx: BuildContext) -> Built:
        raise NotImplementedError(f"protocol {self.name} has no stage with parents")

    def target(self, recipe: Recipe, num_classes: int) -> nn.Module:
        """The recipe's final model (built on the meta device to check a recipe)."""
        return scaled(recipe.model, 1, num_classes=num_classes, drop_path_rate=recipe.drop_path, **recipe.model_kwargs)

    def train_flops_per_image(self, model: nn.Module, img_size: int) -> int:
        """What one training image costs ``model`` (the ledger's count)."""
        return train_flops_per_image(model, img_size)

    def backbone(self, model: nn.Module) -> nn.Module:
        """The timm network inside ``model`` (picks channels-last for CNNs)."""
        return model


_REGISTRY: dict[str, Protocol] = {}


def register(cls: type[Protocol]) -> type[Protocol]:
    """Class decorator: make ``cls`` the protocol ``cls.name`` (registration order is the report's row order)."""
    if cls.name in _REGISTRY:
        raise ValueError(f"protocol {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def registry() -> dict[str, Protocol]:
    return dict(_REGISTRY)


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get(name: str) -> Protocol:
    if name not in _REGISTRY:
        raise UserError(f"unknown protocol {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def whole_steps(steps: float, what: str) -> int:
    """``steps`` rounded; a plan of less than one optimizer step is refused (it would train one step silently)."""
    if round(steps) < 1:
        raise UserError(f"{what} buys {steps:.3g} optimizer steps, less than one; raise it or lower batch_size")
    return round(steps)


def stage_seed(recipe: Recipe, level: int, index: int) -> int:
    """Seed of stage ``index`` of ``level``: runs of different seeds share no stage (see ``seed_stride``)."""
    return recipe.seed * recipe.seed_stride + 1000 * level + index


def stage_name(target: str, factor: Fraction) -> str:
    return widen_name(target, factor) or (target if factor == 1 else f"{target}@{factor}")


_FPI_CACHE: dict[str, int] = {}


def target_fpi(recipe: Recipe, factor: Fraction, num_classes: int) -> int:
    """Training FLOPs per image of the target at ``factor`` x its width."""
    key = json.dumps(
        [recipe.model, str(factor), num_classes, recipe.model_kwargs, recipe.img_size], sort_keys=True, default=str
    )
    if key not in _FPI_CACHE:  # a study plans hundreds of runs of a few models
        try:
            with torch.device("meta"):
                m = scaled(recipe.model, factor, num_classes=num_classes, **recipe.model_kwargs)
        except ValueError as e:  # the plan asks for a width the model cannot have
            raise UserError(
                f"the plan of protocol {recipe.protocol} needs {recipe.model} at {factor} of its "
                f"width, which it cannot have: {e} (e.g. a smaller rbdc.depth or k, or another model)"
            ) from e
        _FPI_CACHE[key] = train_flops_per_image(m, recipe.img_size)
    return _FPI_CACHE[key]
