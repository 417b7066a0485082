"""The width ladder's trend report (issue 36): the saving of RBDC d1 against scratch at widths 64 -> 128 -> 192 -> 384,
its trend over width and over budget per parameter, the coupled model before training and the narrow stages' speed
over width, and what a fit of the trend predicts for DeiT-B, with its prediction interval.

A rung of the ladder is a study point pair (scratch, RBDC) of one study; the rungs come from two studies (width 64 is
the fair-verdict study's ViT-nano, the others width-ladder32), read with :func:`rbdc.report.study.collect`, so a run
whose recipe differs from its study file is left out here as in the study report. Each saving is the study report's
(:func:`rbdc.report.study.saving_with_interval`: the test-inversion interval, coverage tested) with its verdict
words. Budget per parameter: the budget in target epochs x the dataset's train images / the target model's
parameters (image-epochs per parameter). Nothing draws random numbers: the report regenerates byte for byte.

    python -m rbdc.report.ladder runs     # from the runs root of both studies -> reports/width-ladder32-trend
    python -m benchmarks.make_reports                 # from the committed light files (reports/runs/)
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass, field
from pathlib import Path

import rbdc  # noqa: F401  (registers the ladder's models, which shape() builds)
from rbdc import recipe as recipes
from rbdc.data.for_recipe import TRAIN_SIZES
from rbdc.errors import UserError
from rbdc.files import atomic_write_bytes
from rbdc.studies.spec import load_study

from .saving import enough_seeds
from .study import Point, collect, saving_with_interval, series

# (study name, scratch point, RBDC point): one rung each, in the order of the ladder
LADDER = (
    ("imagenette32-fair", "vit-scratch", "vit-rbdc-d1"),
    ("width-ladder32", "w128-scratch", "w128-rbdc-d1"),
    ("width-ladder32", "w192-scratch", "w192-rbdc-d1"),
    ("width-ladder32", "w384-scratch", "w384-rbdc-d1"),
)
NAME = "width-ladder32"
REPORT = f"{NAME}-trend"  # reports/<NAME>.md is the study's own per-width report (rbdc study --report)
MATCHED = (8, 16)  # target epochs every rung runs RBDC d1 at: the saving vs width compares these
HELD_OUT = 384  # the width the check leaves out of the fit and predicts
HEAD_WIDTH = 16  # the ladder's heads (parameters do not depend on it; timm needs a head count)


@dataclass(frozen=True)
class Target:
    """A model to predict the saving for, and its budget per parameter (image-epochs per parameter)."""

    name: str
    width: int
    params: int
    epochs: float
    images: int
    note: str

    @property
    def bpp(self) -> float:
        return self.epochs * self.images / self.params


# timm's deit_base_patch16_224 (no distillation token); DeiT's 300 epochs of ImageNet-1k's train split
DEIT_B = Target("DeiT-B", 768, 86_567_656, 300, 1_281_167, "300 epochs of ImageNet-1k (1,281,167 train images)")


@dataclass
class Row:
    """One RBDC point of a rung: its budget per parameter and its saving against the rung's scratch (None while
    scratch has fewer than 2 finished budgets); ``interval``: the saving has a 95% interval (2+ seeds each side)."""

    width: int
    point: Point
    bpp: float
    s: dict | None
    interval: bool

    @property
    def fits(self) -> bool:
        """It enters the fit: an estimate matched on scratch's curve (not a bound) with an interval."""
        return self.interval and self.s is not None and self.s["status"] == "matched"


@dataclass
class Rung:
    study: str
    root: Path  # the study's runs folder
    scratch_id: str
    rbdc_id: str
    model: str
    width: int
    params: int
    train_images: int
    scratch: list[Point]
    rbdc: list[Point]
    expected: dict[str, tuple[int, int]] = field(default_factory=dict)  # point -> (finished runs, planned runs)
    rows: list[Row] = field(default_factory=list)

    def pending(self) -> str | None:
        """Why this rung has no saving yet (None: it has one)."""
        if not self.rbdc:
            done, total = self.expected[self.scratch_id]
            return (
                f"no finished {self.rbdc_id} run yet (0 of {self.expected[self.rbdc_id][1]}; {self.scratch_id}: "
                f"{done} of {total})"
            )
        if len(self.scratch) < 2:
            return (
                f"{self.scratch_id} has {len(self.scratch)} finished budget(s): no curve to match {self.rbdc_id} on yet"
            )
        return None


@functools.lru_cache(maxsize=None)
def shape(model: str, width: int | None = None) -> tuple[int, int]:
    """``(width, parameters)`` of a timm model, or of the same model at another ``width`` (heads of 16); built on
    the meta device, so no weights are made."""
    import timm
    import torch

    kwargs = {} if width is None else {"embed_dim": width, "num_heads": max(1, width // HEAD_WIDTH)}
    with torch.device("meta"):
        m = timm.create_model(model, **kwargs)
    return int(m.embed_dim), int(sum(p.numel() for p in m.parameters()))


def train_images(recipe: dict) -> int:
    """The training images of one epoch of the recipe's dataset: its full train split (the known size)."""
    data = recipe.data
    if data.source not in TRAIN_SIZES or data.subset or data.holdout is not None:
        raise UserError(
            f"the ladder report counts image-epochs on a full train split of {sorted(TRAIN_SIZES)}; "
            f"this recipe trains on {data.source} (subset {data.subset}, holdout {data.holdout})"
        )
    return TRAIN_SIZES[data.source][0]


def _recipe(study, point: str) -> dict:
    r = next(r for r in study.runs if r.point == point)
    return recipes.resolve(r.recipe, list(r.overrides), seed=r.seed, name=r.name)


def rungs(studies: dict, ladder=LADDER) -> list[Rung]:
    """The ladder's rungs, by width, from ``{study name: (Study, its runs folder)}`` (the folder need not exist)."""
    collected: dict[str, dict] = {}
    out = []
    for name, scratch_id, rbdc_id in ladder:
        if name not in studies:
            raise UserError(f"the ladder names study {name!r}; given: {', '.join(sorted(studies)) or 'none'}")
        study, root = studies[name]
        missing = [p for p in (scratch_id, rbdc_id) if p not in study.points]
        if missing:
            raise UserError(f"{study.path}: the ladder names point(s) {missing} it does not define")
        points = collected.setdefault(name, collect(study, Path(root)))
        rec = _recipe(study, rbdc_id)
        width, params = shape(rec.model)
        rung = Rung(
            name,
            Path(root),
            scratch_id,
            rbdc_id,
            rec.model,
            width,
            params,
            train_images(rec),
            series(points, scratch_id),
            series(points, rbdc_id),
        )
        for pid in (scratch_id, rbdc_id):
            ps = [p for (n, _), p in points.items() if n == pid]
            rung.expected[pid] = (sum(p.n for p in ps), sum(p.expected_seeds for p in ps))
        for p in rung.rbdc:
            s = saving_with_interval(rung.scratch, p) if len(rung.scratch) >= 2 else None
            interval = s is not None and enough_seeds(*(x.top1 for x in [p, *rung.scratch]))  # as saving_with_interval
            rung.rows.append(Row(width, p, bpp(rung, p.budget), s, interval))
        out.append(rung)
    return sorted(out, key=lambda r: r.width)


def bpp(rung: Rung, budget: float) -> float:
    """Image-epochs per parameter of ``budget`` target epochs at this rung."""
    return budget * rung.train_images / rung.params


def fit_points(rungs: list[Rung], leave_out: int | None = None) -> list[tuple[float, float, float]]:
    """``(width, budget per parameter, saving)`` of every point that enters the fit (:attr:`Row.fits`)."""
    return [(r.width, row.bpp, row.s["saving"]) for r in rungs if r.width != leave_out for row in r.rows if row.fits]


def build(rungs: list[Rung], out: Path, command: str) -> dict[str, Path]:
    """Write ``<out>.md`` and its figures ``<out>-width.png``, ``-budget.png``, ``-coupling.png`` (each once it
    has something to show)."""
    from . import ladder_figures, ladder_sections as sec  # a cycle: they import this module's types

    out.parent.mkdir(parents=True, exist_ok=True)
    md = sec.opening(rungs, out, command)
    md += sec.points_section(rungs, out)
    md += sec.coupling_section(rungs, out)
    md += sec.extrapolation_section(rungs, out)
    paths = {"md": out.with_name(out.name + ".md")}
    atomic_write_bytes(paths["md"], "\n".join(md).encode("utf-8"))
    paths.update(ladder_figures.figures(rungs, out))
    return paths


def studies_at(runs: Path, files: dict[str, Path] | None = None) -> dict:
    """``{name: (Study, runs / name)}`` of the ladder's studies (default: configs/studies/<name>.yaml under the
    current working directory, the project folder), each read with the runs root, so a tuned point takes the trial
    its finished trial runs chose."""
    names = dict.fromkeys(n for n, _, _ in LADDER)
    files = files or {n: Path("configs", "studies", f"{n}.yaml").resolve() for n in names}
    return {n: (load_study(files[n], runs), runs / n) for n in names}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m rbdc.report.ladder", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("runs", type=Path, help="runs root holding <study name>/ of both studies (e.g. runs, reports/runs)")
    p.add_argument("-o", "--out", type=Path, default=Path("reports", REPORT), help="report path without suffix")
    a = p.parse_args(argv)
    paths = build(rungs(studies_at(a.runs.resolve())), a.out, f"python -m rbdc.report.ladder {a.runs}")
    print(", ".join(str(v) for v in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
