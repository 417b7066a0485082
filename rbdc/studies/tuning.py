"""A study's ``tuning:`` section: every compared protocol gets the same number of trials, scored on a held-out part
of the train split (``data.holdout``), never on the reported val split; each point then runs at its best trial.

::

    tuning:
      set: {data.holdout: 0.1}        # the tuning split (required: a trial never reads val)
      seeds: [0, 1]                   # seeds of every trial
      budgets: [8, 32]                # budgets (target epochs) of every trial
      trials:                         # point id -> its trials (overrides); the same count for every point
        vit-scratch: [{lr_base: 2.0e-3}, {lr_base: 4.0e-3}, {lr_base: 8.0e-3}]
        vit-rbdc-d1: [{lr_base: 2.0e-3}, {lr_base: 4.0e-3}, {rbdc.narrow_lr_scale: 2.0}]

A trial's score is its holdout top-1 averaged over seeds within a budget, then over budgets (a diverged run scores
0); the best score wins, ties go to the earlier trial. Selection is deterministic: it reads finished runs only.
Trial runs are named ``<study>/tune/<point>/t<j>/b<budget>`` and run before the points they tune, cheapest budget
first. A tuned point's runs wait until every run of its trials has finished.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..runs import rundir
from ..errors import UserError

TUNING_KEYS = {"set", "seeds", "budgets", "trials"}
HOLDOUT_KEY = "data.holdout"


@dataclass(frozen=True)
class Trial:
    point: str
    index: int  # 1-based, as in the run names
    overrides: dict


@dataclass
class Tuning:
    split: dict  # the tuning split's overrides (data.holdout, ...)
    seeds: list[int]
    budgets: list[float]
    trials: dict[str, list[Trial]]


def trial_point(point: str, index: int) -> str:
    return f"tune/{point}/t{index}"


def is_trial_point(point: str) -> bool:
    """A point id :func:`trial_point` made (a tuning trial, not a reported point)."""
    return point.startswith("tune/")


def parse(section, where: str, points: list[str], known_key) -> Tuning:
    """Check the ``tuning:`` section; ``known_key(point, key)`` is False where the point's protocol has no such
    recipe key. Every problem is one :class:`UserError` naming the field."""
    if not isinstance(section, dict):
        raise UserError(f"{where}: `tuning` maps set/seeds/budgets/trials")
    unknown = sorted(set(section) - TUNING_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown tuning key(s) {unknown}; known: {', '.join(sorted(TUNING_KEYS))}")
    split = section.get("set") or {}
    if not isinstance(split, dict) or split.get(HOLDOUT_KEY) is None:
        raise UserError(
            f"{where}: tuning.set needs `{HOLDOUT_KEY}: FRACTION` (e.g. 0.1): trials are scored on "
            "held-out train images, never on the reported val split"
        )
    seeds = section.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise UserError(f"{where}: tuning.seeds must be a list of non-negative integers, got {seeds!r}")
    budgets = section.get("budgets")
    if (
        not isinstance(budgets, list)
        or not budgets
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and b > 0 for b in budgets)
    ):
        raise UserError(f"{where}: tuning.budgets must be a list of positive numbers (target epochs), got {budgets!r}")
    trials = section.get("trials")
    if not isinstance(trials, dict) or not trials:
        raise UserError(f"{where}: tuning.trials maps point ids to lists of overrides")
    out: dict[str, list[Trial]] = {}
    for pid, rows in trials.items():
        if pid not in points:
            raise UserError(f"{where}: tuning.trials.{pid}: no point has that id; points: {', '.join(points)}")
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            raise UserError(f"{where}: tuning.trials.{pid} must be a non-empty list of override mappings")
        for j, row in enumerate(rows, 1):
            for key in row:
                if not known_key(pid, key):
                    raise UserError(
                        f"{where}: tuning.trials.{pid} trial {j}: recipe key {key!r} is not a key of "
                        f"this point's protocol (`rbdc keys` lists them; a growth.* key is one protocol's)"
                    )
        out[pid] = [Trial(pid, j, dict(row)) for j, row in enumerate(rows, 1)]
    counts = {pid: len(t) for pid, t in out.items()}
    if len(set(counts.values())) > 1:
        raise UserError(
            f"{where}: tuning.trials gives points different numbers of trials {counts}: every compared "
            "protocol gets the same tuning budget"
        )
    return Tuning(dict(split), list(seeds), [float(b) for b in budgets], out)


def _top1(path: Path) -> float | None:
    """A finished run's top-1, 0 for a run marked failed (diverged), None while it is unfinished."""
    if (path / rundir.RESULTS).is_file():
        return float(json.loads((path / rundir.RESULTS).read_text())["eval_top1"])
    if (path / rundir.FAILED).is_file():
        return 0.0
    return None


def scores(tuning: Tuning, pid: str, run_dir) -> list[dict]:
    """Per trial of ``pid``: its overrides, per-budget seed means, the score (None until every run finished)."""
    rows = []
    for t in tuning.trials[pid]:
        per_budget = {}
        for b in tuning.budgets:
            vals = [_top1(run_dir(trial_point(pid, t.index), b, s)) for s in tuning.seeds]
            per_budget[b] = None if any(v is None for v in vals) else sum(vals) / len(vals)
        done = all(v is not None for v in per_budget.values())
        score = sum(per_budget.values()) / len(per_budget) if done else None
        rows.append({"trial": t.index, "overrides": t.overrides, "per_budget": per_budget, "score": score})
    return rows


def chosen_row(rows: list[dict]) -> dict | None:
    """The row a point's runs use: the best score of :func:`scores` (ties: the earlier trial) once every trial has
    its score, None before (a trial still running may win). The study's runs, the report's table and its settings
    line all decide through here."""
    if any(r["score"] is None for r in rows):
        return None
    return max(rows, key=lambda r: (r["score"], -r["trial"]), default=None)


def grid_edges(tuning: Tuning, pid: str, overrides: dict) -> list[str]:
    """Where a chosen trial sits at the edge of the point's grid: per numeric key of ``overrides`` that the point's
    trials set to two or more values, "largest <key> tried" or "smallest <key> tried" when the chosen value is the
    extreme one. The held-out score may still rise past that edge, so the report says so."""

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)  # a switch has no edge

    edges = []
    for key, value in overrides.items():
        tried = {t.overrides[key] for t in tuning.trials[pid] if number(t.overrides.get(key))}
        if len(tried) < 2 or not number(value):
            continue
        if value == max(tried):
            edges.append(f"largest {key} tried")
        elif value == min(tried):
            edges.append(f"smallest {key} tried")
    return edges


def choice(tuning: Tuning, pid: str, run_dir) -> tuple[Trial | None, str]:
    """The best trial of ``pid`` and a one-line account, or (None, what is still missing)."""
    rows = scores(tuning, pid, run_dir)
    missing = [r["trial"] for r in rows if r["score"] is None]
    if missing:
        return None, f"awaiting tuning: trial(s) {', '.join(map(str, missing))} of {len(rows)} unfinished"
    best = chosen_row(rows)
    trial = tuning.trials[pid][best["trial"] - 1]
    return trial, f"tuned: trial {trial.index} {trial.overrides} (holdout top-1 {best['score']:.2f})"
