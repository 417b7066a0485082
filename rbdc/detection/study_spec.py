"""A detection study file (``configs/studies/balloon32.yaml``, ``kind: detection``): its keys and checks, and the
runs it names: one (backbone point, pretraining seed, fine-tuning seed) each, seed-major; ``rbdc det-study`` runs
them (:mod:`rbdc.detection.study`)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from rbdc.runs import rundir
from rbdc.errors import UserError
from rbdc.studies.spec import read_study_file, group_name
from rbdc.detection.random_init import parse_spec


KEYS = {
    "name",
    "description",
    "backbones",
    "config",
    "scale",
    "epochs",
    "iters",
    "finetune_seeds",
    "jobs",
    "threads",
    "report",
    "cfg_options",
    "kind",
    "keep_backbone_weights",
}
BACKBONE_KEYS = {"study", "budget", "seeds", "points"}  # required; `random_init` is optional
GENERATED = "backbone"  # the folder of a random-init run's seed that holds its generated backbone
BACKBONES = "backbones"  # the folder of reports/runs/<name>/ that keeps the backbone runs' light files


@dataclass(frozen=True)
class DetRun:
    label: str  # the report's name for the backbone, e.g. rbdc
    point: str  # the classification study's point, e.g. vit-rbdc-d1
    seed: int  # pretraining seed (for the random-init control: the seed of its initialisation)
    ft_seed: int  # fine-tuning seed
    generated: bool = False  # the random-init control: `point` is the timm model, the study writes the backbone

    def work_dir(self, output: Path, study: "DetStudy") -> Path:
        return Path(output) / study.name / self.label / f"seed{self.seed}" / f"ft{self.ft_seed}"

    def generated_dir(self, output: Path, study: "DetStudy") -> Path:
        """Where the study writes a random-init control's backbone: ``OUTPUT/<name>/<label>/seed<S>/backbone``."""
        return Path(output) / study.name / self.label / f"seed{self.seed}" / GENERATED

    def backbone(self, backbones: Path, study: "DetStudy", output: Path | None = None) -> Path:
        """The checkpoint the run loads: its classification run's final model under ``backbones``, or for the
        random-init control the file the study writes under ``output``."""
        if self.generated:
            if output is None:
                raise ValueError("a random-init control's backbone is under the study's output: pass output")
            return self.generated_dir(output, study) / rundir.FINAL
        return rundir.run_dir(backbones, group_name(study.source, self.point, study.budget), self.seed) / rundir.FINAL


@dataclass
class DetStudy:
    name: str
    path: Path
    source: str  # the classification study
    budget: int | float
    config: Path
    scale: tuple[int, int]
    epochs: int | None
    iters: int | None
    runs: list[DetRun]
    labels: list[str]
    jobs: int = 2
    threads: int = 1
    description: str = ""
    report: str | None = None
    cfg_options: tuple[str, ...] = ()  # extra --cfg-options of every run (KEY=VALUE)
    # --report also copies each backbone's final.safetensors to reports/runs (for small backbones): the fine-tunings
    # then replay from the repository alone, and with the very weights they loaded (a backbone retrained on another
    # CPU's kernels differs in its low bits, so its sha256 would not match the runs')
    keep_backbone_weights: bool = False
    random_init: dict | None = None  # {label, model, num_classes} of the random-init control, if the study has one

    def length_args(self) -> list[str]:
        return ["--epochs", str(self.epochs)] if self.epochs else ["--iters", str(self.iters)]

    def argv(self, run: DetRun, output: Path, backbones: Path) -> tuple[str, ...]:
        """The ``python -m`` command of one run: validation every epoch, a checkpoint every epoch (the resume point,
        one kept), the fine-tuning seed."""
        every = [] if self.iters else ["train_cfg.val_interval=1", "default_hooks.checkpoint.interval=1"]
        return (
            "rbdc.cli",
            "det-train",
            str(self.config),
            "--backbone",
            str(run.backbone(backbones, self, output)),
            "--work-dir",
            str(run.work_dir(output, self)),
            *self.length_args(),
            "--resume",
            "--cfg-options",
            f"randomness.seed={run.ft_seed}",
            *every,
            *self.cfg_options,
        )


def _fail(path: Path, what: str) -> UserError:
    return UserError(f"detection study {path}: {what}")


def load_study(path: str | Path) -> DetStudy:
    path, data = read_study_file(path)
    _check_keys(path, data)
    bb = data["backbones"]
    control = _check_backbones(path, bb)
    scale = data["scale"]
    if not (isinstance(scale, list) and len(scale) == 2 and all(isinstance(v, int) and v > 0 for v in scale)):
        raise _fail(path, f"scale must be [width, height] in pixels, got {scale!r}")
    config = (path.parent / data["config"]).resolve()
    if not config.is_file():
        raise _fail(path, f"config {config} not found (paths are relative to the study file)")
    options = data.get("cfg_options") or []
    if not (isinstance(options, list) and all(isinstance(o, str) and "=" in o for o in options)):
        raise _fail(path, f"cfg_options must be a list of KEY=VALUE strings, got {options!r}")
    seeds, ft_seeds = bb["seeds"], data.get("finetune_seeds") or [0]
    _check_numbers(path, data, seeds, ft_seeds)
    # seed-major: the pool starts runs in this order, so a study stopped part-way has every backbone at the same seeds
    # the control after the pretrained backbones at each seed: its initialisation seed is the pretraining seed
    points = [(label, point, False) for label, point in bb["points"].items()]
    points += [(control["label"], control["model"], True)] if control else []
    runs = [DetRun(label, point, s, f, gen) for s, f, (label, point, gen) in itertools.product(seeds, ft_seeds, points)]
    return DetStudy(
        name=data["name"],
        path=path,
        source=bb["study"],
        budget=bb["budget"],
        config=config,
        scale=(scale[0], scale[1]),
        epochs=data.get("epochs"),
        iters=data.get("iters"),
        runs=runs,
        labels=[label for label, _, _ in points],
        jobs=int(data.get("jobs", 2)),
        threads=int(data.get("threads", 1)),
        description=data.get("description", ""),
        report=data.get("report"),
        cfg_options=tuple(options),
        keep_backbone_weights=data.get("keep_backbone_weights", False),
        random_init=control,
    )


def _check_keys(path: Path, data: dict) -> None:
    """A detection study, with known keys only, the required ones, and exactly one of epochs and iters."""
    if data.get("kind") != "detection":
        raise _fail(path, "a detection study says `kind: detection` (a classification study runs with rbdc study)")
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise _fail(path, f"unknown key(s) {unknown}; known: {', '.join(sorted(KEYS))}")
    missing = [k for k in ("name", "backbones", "config", "scale") if k not in data]
    if missing:
        raise _fail(path, f"missing key(s) {missing}")
    if bool(data.get("epochs")) == bool(data.get("iters")):
        raise _fail(path, "give exactly one of epochs (the real runs) or iters (a smoke test)")


def _check_backbones(path: Path, bb) -> dict | None:
    """Checks the ``backbones`` section; returns its random-init control (:func:`parse_spec`), or None."""
    if not isinstance(bb, dict) or not BACKBONE_KEYS <= set(bb) <= BACKBONE_KEYS | {"random_init"}:
        raise _fail(
            path,
            f"backbones needs exactly the keys {sorted(BACKBONE_KEYS)} (and optionally random_init), "
            f"got {sorted(bb or {})}",
        )
    if not isinstance(bb["points"], dict) or not bb["points"]:
        raise _fail(path, "backbones.points maps report labels to the classification study's points")
    if BACKBONES in bb["points"]:
        raise _fail(path, f"`{BACKBONES}` is the folder of the backbone runs' copies: choose another label")
    try:
        return parse_spec(bb.get("random_init"), {*bb["points"], BACKBONES})
    except ValueError as e:
        raise _fail(path, str(e)) from None


def _check_numbers(path: Path, data: dict, seeds, ft_seeds) -> None:
    """Seeds, counts and the backbones' budget: of the right type and range."""
    for key, values in (("backbones.seeds", seeds), ("finetune_seeds", ft_seeds)):
        if not (isinstance(values, list) and values and all(isinstance(v, int) and v >= 0 for v in values)):
            raise _fail(path, f"{key} must be a list of non-negative integers, got {values!r}")
    if not isinstance(data.get("keep_backbone_weights", False), bool):
        raise _fail(path, f"keep_backbone_weights must be true or false, got {data['keep_backbone_weights']!r}")
    for key in ("jobs", "threads", "epochs", "iters"):
        v = data.get(key)
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            raise _fail(path, f"{key} must be a positive integer, got {v!r}")
    budget = data["backbones"]["budget"]
    if not (isinstance(budget, (int, float)) and budget > 0):
        raise _fail(path, f"backbones.budget must be the classification study's budget (target epochs), got {budget!r}")
