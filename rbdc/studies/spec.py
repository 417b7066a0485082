"""A study file read into its runs (:func:`load_study`): the study-wide keys, each point's grid expanded into point
ids, the tuning trials first, then every point x budget x seed as a :class:`StudyRun`. Running them:
:mod:`rbdc.studies.study`."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import tuning
from ..errors import UserError
from ..recipe import load_yaml, SCHEMA, resolve
from ..runs import rundir
from .. import protocols, recipe as recipes

__all__ = ["Study", "StudyRun", "load_study", "read_study_file", "group_name", "trial_dir"]

STUDY_KEYS = {"name", "seeds", "jobs", "threads", "nproc", "set", "points", "output", "description", "report", "tuning"}
POINT_KEYS = {"id", "recipe", "budgets", "grid", "set"}


@dataclass(frozen=True)
class StudyRun:
    """One run of a study: a recipe, its overrides, a seed, and the run directory's name."""

    name: str  # <study>/<point>/b<budget>: the report's group
    recipe: str  # absolute path of the recipe file
    overrides: tuple[str, ...] = ()
    seed: int = 0
    budget_epochs: float | None = None
    point: str = ""
    waiting: str = ""  # why it cannot start yet (a tuned point before its trials finish)

    def run_dir(self, output: str | Path) -> Path:
        return rundir.run_dir(output, self.name, self.seed)

    def extra_args(self) -> list[str]:
        """``rbdc train`` arguments after the recipe and output."""
        args = ["--name", self.name, "--seed", str(self.seed)]
        for o in self.overrides:
            args += ["--set", o]
        return args

    def train_args(self, output: str | Path) -> list[str]:
        return ["train", "-c", self.recipe, "-o", str(output), *self.extra_args()]

    def changed(self, output: str | Path) -> list[str]:
        """The recipe keys in which this run's stored ``recipe.yaml`` differs from what the study now asks (none
        for a run not started)."""
        path = self.run_dir(output) / rundir.RECIPE
        if not path.is_file():
            return []
        want = _flat(recipes.resolve(self.recipe, list(self.overrides), seed=self.seed, name=self.name).to_dict())
        try:
            have = _flat(recipes.resolve(path).to_dict())
        except UserError as e:  # damaged, or not written by rbdc train: never counted as the study's run
            return [f"{rundir.RECIPE} unreadable ({e})"]
        return sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))

    def status(self, output: str | Path) -> str:
        d = self.run_dir(output)
        if self.waiting:
            return "waiting"
        if (d / rundir.RESULTS).is_file():
            return "done"
        if (d / rundir.FAILED).is_file():
            return "failed"
        return "started" if (d / rundir.RECIPE).is_file() else "pending"


@dataclass
class Study:
    name: str
    path: Path
    runs: list[StudyRun]
    jobs: int = 2
    threads: int = 1
    description: str = ""
    points: list[str] = field(default_factory=list)
    nproc: int = 1  # processes (GPUs) per run: > 1 runs each through torchrun
    tuning: tuning.Tuning | None = None
    choices: dict[str, str] = field(default_factory=dict)  # tuned point -> its trial's account (rbdc.studies.tuning)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k in ("data", "rbdc", "growth"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _fmt_value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def group_name(study: str, point: str, budget) -> str:
    """The report group (and run folder) of a point at a budget: ``<study>/<point>/b<budget>``."""
    return f"{study}/{point}" + ("" if budget is None else f"/b{_fmt_value(budget)}")


def _override(key: str, value) -> str:
    return f"{key}={json.dumps(value) if isinstance(value, (list, dict)) else value}"


def read_study_file(path: str | Path) -> tuple[Path, dict]:
    """The resolved path and the mapping of a study file (classification or detection)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise UserError(f"study {path} not found; studies live under configs/studies/")
    try:
        return path, load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"study {path} is not valid YAML: {e}") from e


def load_study(path: str | Path, output: str | Path | None = None) -> Study:
    """Read and expand a study file into its runs, in execution order (tuning trials, then points, then budgets,
    then seeds). A tuned point takes its best trial's overrides from the finished trial runs under ``output``; until
    they are all finished (or without ``output``) its runs wait."""
    path, data = read_study_file(path)
    seeds, jobs, threads, nproc, common = _check_header(path, data)
    expanded: list[tuple[str, Path, dict, list]] = []  # (point id, recipe, overrides, budgets)
    ids: list[str] = []
    for i, pt in enumerate(data["points"]):
        for pid, recipe, over, budgets in _expand_point(path, i, pt, common):
            if pid in ids:
                raise UserError(f"{path}: point {i + 1}: point id {pid!r} is used twice; give each point its own id")
            ids.append(pid)
            expanded.append((pid, recipe, over, budgets))
    tune = tuning.parse(data["tuning"], f"{path}", ids, _key_checker(expanded)) if "tuning" in data else None
    runs, choices = _runs(data["name"], expanded, seeds, tune, output)
    return Study(data["name"], path, runs, jobs, threads, data.get("description", ""), ids, nproc, tune, choices)


def _check_header(path: Path, data: dict) -> tuple[list[int], int, int, int, dict]:
    """The study-wide keys, checked: (seeds, jobs, threads, nproc, the overrides of every point)."""
    if data.get("kind") == "detection":
        raise UserError(f"{path} is a detection study: run it with rbdc det-study {path}")
    unknown = sorted(set(data) - STUDY_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown study key(s) {unknown}; known: {', '.join(sorted(STUDY_KEYS))}")
    for key in ("name", "points"):
        if not data.get(key):
            raise UserError(f"{path}: the study needs `{key}:`")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise UserError(f"{path}: `seeds` must be a list of non-negative integers, got {seeds!r}")
    jobs, threads, nproc = data.get("jobs", 2), data.get("threads", 1), data.get("nproc", 1)
    common = data.get("set") or {}
    if not isinstance(common, dict):
        raise UserError(f"{path}: `set` maps recipe keys to values (overrides of every point)")
    for key, v in (("jobs", jobs), ("threads", threads), ("nproc", nproc)):
        if not isinstance(v, int) or v < 1:
            raise UserError(f"{path}: `{key}` must be a positive integer, got {v!r}")
    return seeds, jobs, threads, nproc, common


def _expand_point(path: Path, i: int, pt, common: dict) -> list[tuple[str, Path, dict, list]]:
    """Point ``i`` of the study file, checked, as one (id, recipe, overrides, budgets) per combination of its grid."""
    where = f"{path}: point {i + 1}"
    if not isinstance(pt, dict):
        raise UserError(f"{where} must be a mapping with id, recipe, budgets")
    bad = sorted(set(pt) - POINT_KEYS)
    if bad:
        raise UserError(f"{where}: unknown key(s) {bad}; known: {', '.join(sorted(POINT_KEYS))}")
    if not pt.get("id") or not pt.get("recipe"):
        raise UserError(f"{where} needs `id` and `recipe`")
    recipe = (path.parent / pt["recipe"]).resolve()
    if not recipe.is_file():
        raise UserError(f"{where} ({pt['id']}): recipe {recipe} not found")
    budgets = pt.get("budgets", [None])
    if (
        not isinstance(budgets, list)
        or not budgets
        or not all(b is None or (isinstance(b, (int, float)) and b > 0) for b in budgets)
    ):
        raise UserError(
            f"{where} ({pt['id']}): `budgets` must be a list of positive numbers (epochs of the "
            f"target's training FLOPs), got {budgets!r}"
        )
    grid = pt.get("grid") or {}
    fixed = pt.get("set") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise UserError(f"{where} ({pt['id']}): `grid` maps recipe keys to non-empty lists of values")
    keys = list(grid)
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        out.append((_point_id(where, pt["id"], values), recipe, {**common, **fixed, **values}, budgets))
    return out


def _point_id(where: str, template: str, values: dict) -> str:
    """The id of one grid combination: ``{key}`` in the template replaced by its value, else the values appended."""
    pid = template
    for k, v in values.items():
        pid = pid.replace("{" + k + "}", _fmt_value(v))
    if "{" in pid:
        raise UserError(
            f"{where}: id {template!r} names a key in braces that is not a grid key "
            f"(grid: {', '.join(values) or 'none'})"
        )
    if values and pid == template:
        pid += "-" + "-".join(f"{k.split('.')[-1]}{_fmt_value(v)}" for k, v in values.items())
    return pid


def _runs(study: str, expanded: list, seeds: list[int], tune, output) -> tuple[list[StudyRun], dict[str, str]]:
    """Every run of the study in execution order, and each tuned point's account of its trial."""
    runs: list[StudyRun] = []
    choices: dict[str, str] = {}

    def add(name_pid: str, pid: str, recipe: Path, over: dict, b, seed: int, waiting: str = "") -> None:
        extra = tuple(_override(k, v) for k, v in over.items())
        extra += (f"budget_epochs={_fmt_value(b)}",) if b is not None else ()
        runs.append(StudyRun(group_name(study, name_pid, b), str(recipe), extra, seed, b, pid, waiting))

    if tune:  # trials first, the cheapest budget first for every point
        for b in sorted(tune.budgets):
            for pid, recipe, over, _ in expanded:
                for t in tune.trials.get(pid, []):
                    for s in tune.seeds:
                        tp = tuning.trial_point(pid, t.index)
                        add(tp, tp, recipe, {**over, **t.overrides, **tune.split}, b, s)
    for pid, recipe, over, budgets in expanded:
        waiting = ""
        if tune and pid in tune.trials:
            trial, choices[pid] = (
                tuning.choice(tune, pid, trial_dir(study, output)) if output is not None else (None, "awaiting tuning")
            )
            if trial is None:
                waiting = choices[pid]
            else:
                over = {**over, **trial.overrides}
        for b in budgets:
            for s in seeds:
                add(pid, pid, recipe, over, b, s, waiting)
    return runs, choices


def trial_dir(study: str, output: str | Path):
    """Where a trial run of ``study`` lives under ``output``, as ``run_dir(trial point, budget, seed)``."""
    return lambda point, b, seed: rundir.run_dir(output, group_name(study, point, b), seed)


def _key_checker(expanded: list[tuple[str, Path, dict, list]]):
    """``known(point, key)``: the key is in the recipe schema and read by the point's protocol."""
    points = {pid: (recipe, over) for pid, recipe, over, _ in expanded}

    def known(pid: str, key: str) -> bool:
        recipe, over = points[pid]
        return key in SCHEMA and protocols.get(over.get("protocol") or resolve(recipe).protocol).owns_key(key)

    return known
