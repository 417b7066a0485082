"""Reading run directories (their layout: :mod:`rbdc.runs.rundir`): which folders are finished runs, and their results
and accuracy curves."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from rbdc.runs import rundir
from rbdc.errors import UserError

REQUIRED_RESULT_KEYS = ("name", "protocol", "group", "seed", "model", "dataset", "eval_top1", "total_train_flops")
# the summary.csv columns a report reads (of rundir.SUMMARY_COLUMNS)
REQUIRED_SUMMARY_COLUMNS = ("stage", "epoch", "eval_top1", "cum_train_flops")


@dataclass(frozen=True)
class Run:
    """One run directory as read from disk.

    Attributes:
        path: The run directory.
        results: Parsed ``results.json``.
        curve: ``(stage, cum_train_flops, eval_top1)`` per ``summary.csv`` row, in file order.
    """

    path: Path
    results: dict
    curve: tuple[tuple[str, float, float], ...]

    @property
    def group(self) -> str:
        return str(self.results["group"])

    @property
    def protocol(self) -> str:
        return str(self.results["protocol"])

    def parents(self) -> dict[str, tuple[str, ...]]:
        """Each stage's parents (the stages its model was built from), as the run's manifest records them; empty
        for a run without a manifest."""
        stages = rundir.read_manifest(self.path).get("stages", {})
        return {s: tuple(p["stage"] for p in e.get("parents", ())) for s, e in stages.items()}

    def levels(self) -> dict[str, int]:
        """Each stage's level in the run's tree of stages (0: no parents; else one above its parents), from the
        manifest; without one, every stage of ``results.json`` is its own level, in order."""
        parents = self.parents()
        order = [s["stage"] for s in self.results.get("stages") or []]
        if not parents:
            return {s: i for i, s in enumerate(order)}
        levels: dict[str, int] = {}
        for s in [*order, *(p for p in parents if p not in order)]:
            levels[s] = _level(s, parents, levels)
        return levels


def _level(stage: str, parents: dict[str, tuple[str, ...]], known: dict[str, int]) -> int:
    if stage not in known:
        ps = parents.get(stage, ())
        known[stage] = 1 + max(_level(p, parents, known) for p in ps) if ps else 0
    return known[stage]


def discover_run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expands run directories and parent folders into the sorted list of finished run directories they hold
    (see :func:`scan_run_dirs`)."""
    return scan_run_dirs(paths)[0]


def _why_skipped(run_dir: Path, files: list[str]) -> str | None:
    """Why a run directory cannot enter a report (None: it can): it failed, or it has not finished."""
    if rundir.FAILED in files:
        info = rundir.read_failed(run_dir) or {}
        where = " ".join(f"{k} {info[k]}" for k in ("stage", "step") if info.get(k) is not None)
        return f"failed{' at ' + where if where else ''}: {info.get('reason') or 'see its failed.json'}"
    if rundir.RESULTS not in files:
        return "unfinished (no results.json): resume it with the same rbdc train command"
    return None


def scan_run_dirs(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The run directories under run directories and parent folders: those a report may use, and those it must
    skip with the reason.

    A run directory is a folder holding ``results.json``, ``recipe.yaml`` or ``failed.json``; one without
    ``results.json`` has not finished, one with ``failed.json`` failed (diverged, or stopped on an error). The
    search does not descend into a run directory, so anything a run keeps below itself is not counted as a run.

    Args:
        paths: Run directories or folders above them.

    Returns:
        ``(finished, skipped)``: unique finished run directories sorted by path, and ``(run_dir, reason)`` of the
        skipped ones.

    Raises:
        UserError: A path does not exist, is not a folder, or holds no finished run directory.
    """
    found: set[Path] = set()
    skipped: dict[Path, str] = {}
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise UserError(
                f"run directory {path} does not exist: pass a run directory (holding {rundir.RESULTS}) "
                "or a folder above run directories"
            )
        if not path.is_dir():
            raise UserError(
                f"{path} is not a directory: pass a run directory (holding {rundir.RESULTS}) "
                "or a folder above run directories"
            )
        here = []
        for dirpath, dirnames, filenames in os.walk(path):
            if not {rundir.RESULTS, rundir.RECIPE, rundir.FAILED} & set(filenames):
                continue
            dirnames.clear()
            why = _why_skipped(Path(dirpath), filenames)
            if why:
                skipped[Path(dirpath).resolve()] = why
            else:
                here.append(Path(dirpath).resolve())
        if not here:
            listed = "".join(f"; {d}: {why}" for d, why in sorted(skipped.items()) if d.is_relative_to(path.resolve()))
            raise UserError(
                f"no finished run directory under {path}: no folder there holds {rundir.RESULTS} without "
                f"{rundir.FAILED}{listed}"
            )
        found.update(here)
    return sorted(found), sorted(skipped.items())


def _number(value, key: str, where: Path, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f'{where}: "{key}" must be a finite number, got {value!r}; fix or re-run the run that wrote it')
    return float(value)


def load_run(run_dir: str | os.PathLike) -> Run:
    """Reads and checks one run directory.

    Args:
        run_dir: Folder holding ``results.json`` and ``summary.csv``.

    Returns:
        The run.

    Raises:
        UserError: A file is missing or unreadable, or a required key or column is missing or invalid; the message
            names the file.
    """
    run_dir = Path(run_dir)
    results = _read_results(run_dir)
    curve = _read_curve(run_dir)
    return Run(path=run_dir, results=results, curve=curve)


def _read_results(run_dir: Path) -> dict:
    """The run's ``results.json``, checked: the keys a report reads, with the right types."""
    results_path = run_dir / rundir.RESULTS
    if not results_path.is_file():
        raise UserError(f"{results_path} is missing: {run_dir} is not a finished run directory")
    try:
        results = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{results_path} is not valid JSON ({e}); re-run or restore the run") from None
    if not isinstance(results, dict):
        raise UserError(f"{results_path} must hold a JSON object, got {type(results).__name__}")
    missing = [k for k in REQUIRED_RESULT_KEYS if k not in results]
    if missing:
        raise UserError(
            f"{results_path} lacks {', '.join(missing)}; it was not written by the rbdc training engine "
            "or is from an older version"
        )
    for key in ("name", "protocol", "group", "model", "dataset"):
        if not isinstance(results[key], str) or not results[key]:
            raise UserError(f'{results_path}: "{key}" must be a non-empty string, got {results[key]!r}')
    if isinstance(results["seed"], bool) or not isinstance(results["seed"], int):
        raise UserError(f'{results_path}: "seed" must be an integer, got {results["seed"]!r}')
    _number(results["eval_top1"], "eval_top1", results_path)
    if _number(results["total_train_flops"], "total_train_flops", results_path) <= 0:
        raise UserError(f'{results_path}: "total_train_flops" must be positive, got {results["total_train_flops"]!r}')
    for key in ("eval_top5", "wall_s", "peak_mem_mb"):
        _number(results.get(key), key, results_path, allow_none=True)
    return results


def _read_curve(run_dir: Path) -> tuple[tuple[str, float, float], ...]:
    """The run's accuracy curve from ``summary.csv``: ``(stage, cum_train_flops, eval_top1)`` per epoch row."""
    summary_path = run_dir / rundir.SUMMARY
    if not summary_path.is_file():
        raise UserError(f"{summary_path} is missing: {run_dir} is not a complete run directory")
    columns, rows = rundir.read_summary(summary_path)
    missing = [c for c in REQUIRED_SUMMARY_COLUMNS if c not in columns]
    if missing:
        raise UserError(f"{summary_path} lacks column(s) {', '.join(missing)} (header: {','.join(columns)})")
    if not rows:
        raise UserError(f"{summary_path} has a header but no epoch rows")
    curve = []
    for i, row in enumerate(rows, start=2):
        try:
            flops = float(row["cum_train_flops"]) if row["cum_train_flops"] else math.nan
            top1 = float(row["eval_top1"]) if row["eval_top1"] else math.nan  # epochs without eval stay blank
        except ValueError:
            raise UserError(
                f"{summary_path} line {i}: cum_train_flops/eval_top1 must be numbers, "
                f"got {row['cum_train_flops']!r}/{row['eval_top1']!r}"
            ) from None
        curve.append((row["stage"], flops, top1))
    return tuple(curve)
