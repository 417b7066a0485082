"""The report's tuning parts: the table of every trial's held-out scores and the one each point uses, and the line
near the top naming each point's tuned setting and where it sits at its grid's edge."""

from __future__ import annotations

from pathlib import Path

from rbdc.studies import tuning
from rbdc.studies.spec import Study, trial_dir

from .fmt import budget as _budget
from .fmt import opt


def tuning_section(study: Study, root: Path) -> list[str]:
    """Each tuned point's trials, their held-out top-1 per budget and score, and the trial its runs use."""
    tune = study.tuning
    if tune is None:
        return []
    split = ", ".join(f"{k}={v}" for k, v in tune.split.items())
    budgets = [_budget(b) for b in tune.budgets]
    md = [
        "## Tuning on a held-out split",
        "",
        f"Every tuned point had {len(next(iter(tune.trials.values())))} trials, each at budgets "
        f"{', '.join(budgets)} with seeds {', '.join(map(str, tune.seeds))}, trained on train minus the held-out "
        f"part ({split}) and scored on that part, never on val (where every number above is measured). Score: the "
        f"held-out top-1 averaged over seeds, then over budgets (a diverged run scores 0); the best score wins, "
        f"ties go to the earlier trial.",
        "",
        "| point | trial | settings | " + " | ".join(f"held-out top-1 b{b}" for b in budgets) + " | score | used |",
        "|---|---|---|" + "---|" * len(budgets) + "---|---|",
    ]
    for pid in tune.trials:
        rows = tuning.scores(tune, pid, trial_dir(study.name, root.parent))
        best = tuning.chosen_row(rows)
        for r in rows:
            cells = [opt(r["per_budget"][b]) for b in tune.budgets]
            used = "**yes**" if r is best else ""
            settings = ", ".join(f"{k}={v}" for k, v in r["overrides"].items())
            md.append(f"| {pid} | {r['trial']} | {settings} | {' | '.join(cells)} | {opt(r['score'])} | {used} |")
    return md + [""]


def tuned_choices(study: Study, root: Path) -> dict[str, tuple[dict, list[str]] | None]:
    """Per tuned point: its best trial's row and where that trial sits at its grid's edge
    (:func:`rbdc.studies.tuning.grid_edges`), or None while a trial is unfinished."""
    tune = study.tuning
    found: dict[str, tuple[dict, list[str]] | None] = {}
    for pid in tune.trials if tune else ():
        rows = tuning.scores(tune, pid, trial_dir(study.name, root.parent))
        best = tuning.chosen_row(rows)
        found[pid] = None if best is None else (best, tuning.grid_edges(tune, pid, best["overrides"]))
    return found


def tuned_settings(choices: dict[str, tuple[dict, list[str]] | None]) -> list[str]:
    """One line near the top of the report naming the setting each tuned point runs at (the trial the tuning
    section marks 'used'), so a reader need not find the bold cells of its table; ``choices`` from
    :func:`tuned_choices` (empty: the study tunes nothing)."""
    if not choices:
        return []
    named, at_edge = [], False
    for pid, chosen in choices.items():
        if chosen is None:
            named.append(f"{pid} not tuned yet")
            continue
        best, edges = chosen
        at_edge = at_edge or bool(edges)
        settings = ", ".join(f"{k}={v}" for k, v in best["overrides"].items())
        named.append(f"{pid} {settings} (trial {best['trial']}{''.join(f', the {e}' for e in edges)})")
    line = (
        "**Tuned settings** (each point's best trial on the held-out split, never on val; every trial under "
        "'Tuning on a held-out split'): " + "; ".join(named) + "."
    )
    if at_edge:  # the grid did not bracket the optimum: say which way that may bias the comparison
        line += (
            " A setting that is the largest (or smallest) value tried may be beaten by one past the grid: that point "
            "may be tuned less well than the others."
        )
    return [line, ""]
