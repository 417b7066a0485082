"""Result tables and the accuracy-vs-training-FLOPs figure, regenerated from run directories alone.

Every number in a report comes from the ``results.json`` and ``summary.csv`` of the run directories given on the
command line, and every table row names the run directories it comes from (relative to the report), so a paper-style
table traces back to its runs. The paper's claims and the DeiT reference numbers sit beside the measured rows, marked
as quoted, in :data:`QUOTED`.

Output is deterministic: inputs are sorted, floats have fixed formats, nothing depends on the clock or on where the
run directories lie (paths are written relative to the output file), so ``rbdc report`` regenerates a committed
report byte for byte from the committed run summaries.

Example::

    rbdc report runs/imagenette-deit-tiny -o reports/imagenette-deit-tiny --title "Imagenette, DeiT-Ti"
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import re
import sys
import textwrap
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from rbdc import protocols
from rbdc.errors import UserError
from rbdc.rundir import atomic_write, atomic_write_bytes

__all__ = [
    'QUOTED', 'Quoted', 'Run', 'GroupRow', 'Match', 'discover_run_dirs', 'load_run', 'summarize_groups',
    'matched_flops', 'top1_at_flops', 'seed_noise', 'generate_report', 'add_cli',
]

RESULTS_FILE = 'results.json'
SUMMARY_FILE = 'summary.csv'
RECIPE_FILE = 'recipe.yaml'
FAILED_FILE = 'failed.json'
# Order of rows and colours: the protocol registry's (the baseline first, then RBDC, then the growth baselines);
# protocols that are not registered (runs of other code) come after them.
EXTRA_COLORS = ('#8c564b', '#e377c2', '#17becf', '#bcbd22', '#7f7f7f')
REQUIRED_RESULT_KEYS = ('name', 'protocol', 'group', 'seed', 'model', 'dataset', 'eval_top1', 'total_train_flops')
REQUIRED_SUMMARY_COLUMNS = ('stage', 'epoch', 'eval_top1', 'cum_train_flops')
NOISE_FACTOR = 2.0  # a top-1 difference beats seed noise when |diff| > NOISE_FACTOR * pooled std
DASH = '–'
PM = ' ± '


@dataclass(frozen=True)
class Quoted:
    """A published number shown beside the measured rows, never mixed into them.

    Attributes:
        label: How the row is marked in the table, e.g. ``quoted (paper)``.
        protocol: Protocol the number belongs to.
        dataset: Dataset it was measured on.
        model: timm model name of the target model.
        top1: Quoted ImageNet top-1 in percent, or None when the claim is relative.
        flops_rel: Quoted training FLOPs relative to standard training, or None.
        epochs: Training epochs behind the number, when quoted.
        claim: The claim in words.
        source: Where it is quoted from.
    """
    label: str
    protocol: str
    dataset: str
    model: str
    top1: float | None
    flops_rel: float | None
    epochs: int | None
    claim: str
    source: str


QUOTED: tuple[Quoted, ...] = (
    Quoted(
        'quoted (paper)', 'rbdc', 'imagenet-1k', 'deit_base_patch16_224', None, 0.70, None,
        'RBDC: 30% fewer training FLOPs than standard training at matched ImageNet accuracy (DeiT-B)',
        'arXiv 2605.23656 (abstract)',
    ),
    Quoted(
        'quoted (DeiT)', 'scratch', 'imagenet-1k', 'deit_tiny_patch16_224', 72.2, None, 300,
        'DeiT-Ti, standard training, 300 epochs', 'facebookresearch/deit README_deit.md',
    ),
    Quoted(
        'quoted (DeiT)', 'scratch', 'imagenet-1k', 'deit_small_patch16_224', 79.9, None, 300,
        'DeiT-S, standard training, 300 epochs', 'facebookresearch/deit README_deit.md',
    ),
    Quoted(
        'quoted (DeiT)', 'scratch', 'imagenet-1k', 'deit_base_patch16_224', 81.8, None, 300,
        'DeiT-B, standard training, 300 epochs', 'facebookresearch/deit README_deit.md',
    ),
)


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
        return str(self.results['group'])

    @property
    def protocol(self) -> str:
        return str(self.results['protocol'])


@dataclass(frozen=True)
class GroupRow:
    """One table row: the runs of one group (one experiment over seeds) reduced to mean and std.

    Std is the sample std over seeds (ddof=1) and None with one seed. Optional fields are None when no run has them.
    """
    group: str
    protocol: str
    dataset: str
    model: str
    seeds: tuple[int, ...]
    runs: tuple[Run, ...]
    top1_mean: float
    top1_std: float | None
    top5_mean: float | None
    top5_std: float | None
    flops_mean: float
    gmac_epochs_mean: float | None
    peak_mem_mb_mean: float | None
    wall_s_mean: float | None
    devices: tuple[str, ...]
    stages: str
    baseline: str | None = None  # group the FLOPs ratio is relative to
    flops_rel: float | None = None

    @property
    def n(self) -> int:
        return len(self.runs)


@dataclass(frozen=True)
class Match:
    """Where an accuracy falls on the baseline's accuracy-vs-FLOPs curve.

    Attributes:
        status: ``matched`` (inside the curve's range), ``above_range`` (more than its best budget reaches),
            ``below_range`` (less than its smallest budget reaches) or ``one_budget`` (no curve to interpolate).
        flops: Matched FLOPs for ``matched``; the largest budget for ``above_range`` (a lower bound on the FLOPs
            needed); the smallest budget for ``below_range`` (an upper bound); the only budget for ``one_budget``.
    """
    status: str
    flops: float


# ---------------------------------------------------------------------------------------------------------------
# Reading run directories


def discover_run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expands run directories and parent folders into the sorted list of finished run directories they hold
    (see :func:`scan_run_dirs`)."""
    return scan_run_dirs(paths)[0]


def _why_skipped(run_dir: Path, files: list[str]) -> str | None:
    """Why a run directory cannot enter a report (None: it can): it failed, or it has not finished."""
    if FAILED_FILE in files:
        try:
            info = json.loads((run_dir / FAILED_FILE).read_text(encoding='utf-8'))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            info = {}
        info = info if isinstance(info, dict) else {}
        where = ' '.join(f'{k} {info[k]}' for k in ('stage', 'step') if info.get(k) is not None)
        return f'failed{" at " + where if where else ""}: {info.get("reason") or "see its failed.json"}'
    if RESULTS_FILE not in files:
        return 'unfinished (no results.json): resume it with the same rbdc train command'
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
            raise UserError(f'run directory {path} does not exist: pass a run directory (holding {RESULTS_FILE}) '
                            'or a folder above run directories')
        if not path.is_dir():
            raise UserError(f'{path} is not a directory: pass a run directory (holding {RESULTS_FILE}) '
                            'or a folder above run directories')
        here = []
        for dirpath, dirnames, filenames in os.walk(path):
            if not {RESULTS_FILE, RECIPE_FILE, FAILED_FILE} & set(filenames):
                continue
            dirnames.clear()
            why = _why_skipped(Path(dirpath), filenames)
            if why:
                skipped[Path(dirpath).resolve()] = why
            else:
                here.append(Path(dirpath).resolve())
        if not here:
            listed = ''.join(f'; {d}: {why}' for d, why in sorted(skipped.items()) if d.is_relative_to(path.resolve()))
            raise UserError(f'no finished run directory under {path}: no folder there holds {RESULTS_FILE} without '
                            f'{FAILED_FILE}{listed}')
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
    results_path = run_dir / RESULTS_FILE
    summary_path = run_dir / SUMMARY_FILE
    if not results_path.is_file():
        raise UserError(f'{results_path} is missing: {run_dir} is not a finished run directory')
    try:
        results = json.loads(results_path.read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f'{results_path} is not valid JSON ({e}); re-run or restore the run') from None
    if not isinstance(results, dict):
        raise UserError(f'{results_path} must hold a JSON object, got {type(results).__name__}')
    missing = [k for k in REQUIRED_RESULT_KEYS if k not in results]
    if missing:
        raise UserError(f'{results_path} lacks {", ".join(missing)}; it was not written by the rbdc training engine '
                        'or is from an older version')
    for key in ('name', 'protocol', 'group', 'model', 'dataset'):
        if not isinstance(results[key], str) or not results[key]:
            raise UserError(f'{results_path}: "{key}" must be a non-empty string, got {results[key]!r}')
    if isinstance(results['seed'], bool) or not isinstance(results['seed'], int):
        raise UserError(f'{results_path}: "seed" must be an integer, got {results["seed"]!r}')
    _number(results['eval_top1'], 'eval_top1', results_path)
    if _number(results['total_train_flops'], 'total_train_flops', results_path) <= 0:
        raise UserError(f'{results_path}: "total_train_flops" must be positive, got {results["total_train_flops"]!r}')
    for key in ('eval_top5', 'total_train_gmac_epochs', 'wall_s', 'peak_mem_mb'):
        _number(results.get(key), key, results_path, allow_none=True)

    if not summary_path.is_file():
        raise UserError(f'{summary_path} is missing: {run_dir} is not a complete run directory')
    try:
        text = summary_path.read_text(encoding='utf-8')
        reader = csv.DictReader(io.StringIO(text, newline=''))
        columns = [c.strip() for c in reader.fieldnames or ()]
        rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f'{summary_path} is not a readable CSV ({e})') from None
    if text and not text.endswith('\n'):
        raise UserError(f'{summary_path} is truncated (its last row has no line end); resume the run with the same '
                        f'rbdc train command, which rewrites it')
    missing = [c for c in REQUIRED_SUMMARY_COLUMNS if c not in columns]
    if missing:
        raise UserError(f'{summary_path} lacks column(s) {", ".join(missing)} (header: {",".join(columns)})')
    if not rows:
        raise UserError(f'{summary_path} has a header but no epoch rows')
    curve = []
    for i, row in enumerate(rows, start=2):
        if None in row or None in row.values():  # more or fewer fields than the header
            raise UserError(f'{summary_path} line {i} does not have the header\'s {len(columns)} fields; the file is '
                            f'damaged: resume the run with the same rbdc train command, which rewrites it')
        row = {k.strip(): v.strip() for k, v in row.items()}
        try:
            flops = float(row['cum_train_flops']) if row['cum_train_flops'] else math.nan
            top1 = float(row['eval_top1']) if row['eval_top1'] else math.nan  # epochs without eval stay blank
        except ValueError:
            raise UserError(f'{summary_path} line {i}: cum_train_flops/eval_top1 must be numbers, '
                            f'got {row["cum_train_flops"]!r}/{row["eval_top1"]!r}') from None
        curve.append((row['stage'], flops, top1))
    return Run(path=run_dir, results=results, curve=tuple(curve))


# ---------------------------------------------------------------------------------------------------------------
# Statistics


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    # statistics.mean/stdev are exact (fraction based), so the result does not depend on summation order or platform
    mean = statistics.mean(values)
    return float(mean), (float(statistics.stdev(values)) if len(values) > 1 else None)


def _optional_mean(runs: Sequence[Run], key: str) -> float | None:
    values = [float(r.results[key]) for r in runs if r.results.get(key) is not None]
    return float(statistics.mean(values)) if values else None


def _protocol_rank(protocol: str, baseline_protocol: str) -> tuple:
    if protocol == baseline_protocol:
        return (0, 0, '')
    order = protocols.names()
    if protocol in order:
        return (1, order.index(protocol), '')
    return (2, 0, protocol)


def _stages_text(results: dict) -> str:
    stages = results.get('stages') or []
    parts = []
    for s in stages:
        if isinstance(s, dict) and 'stage' in s:
            epochs = s.get('epochs')
            parts.append(f'{s["stage"]}:{s.get("model", "?")}:{epochs if epochs is not None else "?"}ep')
    return ' + '.join(parts)


def summarize_groups(runs: Sequence[Run], baseline_protocol: str = 'scratch') -> list[GroupRow]:
    """Reduces runs to one row per group and attaches the FLOPs ratio to the baseline.

    The baseline of a row is the ``baseline_protocol`` group of the same dataset and model with the largest mean
    training FLOPs (the full standard recipe; smaller budgets of it are "fewer epochs" baselines).

    Args:
        runs: Loaded runs.
        baseline_protocol: Protocol whose groups are the 1.00x reference.

    Returns:
        Rows sorted by dataset, model, protocol (baseline first), training FLOPs and group name.

    Raises:
        UserError: Runs of one group disagree on protocol, dataset or model, or two runs share a group and a seed.
    """
    by_group: dict[str, list[Run]] = {}
    for run in runs:
        by_group.setdefault(run.group, []).append(run)
    rows = []
    for group, members in by_group.items():
        members.sort(key=lambda r: (r.results['seed'], r.results['name'], str(r.path)))
        first = members[0]
        for r in members[1:]:
            for key in ('protocol', 'dataset', 'model'):
                if r.results[key] != first.results[key]:
                    raise UserError(f'group "{group}" mixes {key} {first.results[key]!r} ({first.path}) and '
                                    f'{r.results[key]!r} ({r.path}): give the runs different "group" names')
        for a, b in zip(members, members[1:]):
            if a.results['seed'] == b.results['seed']:
                raise UserError(f'group "{group}" has seed {a.results["seed"]} twice ({a.path} and {b.path}): '
                                'pass only one of them, or the mean would count that seed twice')
        top1_mean, top1_std = _mean_std([float(r.results['eval_top1']) for r in members])
        top5 = [float(r.results['eval_top5']) for r in members if r.results.get('eval_top5') is not None]
        top5_mean, top5_std = _mean_std(top5) if top5 else (None, None)
        rows.append(GroupRow(
            group=group, protocol=first.protocol, dataset=first.results['dataset'], model=first.results['model'],
            seeds=tuple(r.results['seed'] for r in members), runs=tuple(members),
            top1_mean=top1_mean, top1_std=top1_std, top5_mean=top5_mean, top5_std=top5_std,
            flops_mean=float(statistics.mean([float(r.results['total_train_flops']) for r in members])),
            gmac_epochs_mean=_optional_mean(members, 'total_train_gmac_epochs'),
            peak_mem_mb_mean=_optional_mean(members, 'peak_mem_mb'), wall_s_mean=_optional_mean(members, 'wall_s'),
            devices=tuple(sorted({str(r.results['device']) for r in members if r.results.get('device')})),
            stages=_stages_text(first.results),
        ))
    rows.sort(key=lambda g: (g.dataset, g.model, _protocol_rank(g.protocol, baseline_protocol), g.flops_mean, g.group))
    out = []
    for row in rows:
        ref = _reference(rows, row, baseline_protocol)
        if ref is not None and ref.flops_mean > 0:
            row = dataclasses.replace(row, baseline=ref.group, flops_rel=row.flops_mean / ref.flops_mean)
        out.append(row)
    return out


def _baselines(rows: Sequence[GroupRow], row: GroupRow, baseline_protocol: str) -> list[GroupRow]:
    return [g for g in rows if g.protocol == baseline_protocol and g.dataset == row.dataset and g.model == row.model]


def _reference(rows: Sequence[GroupRow], row: GroupRow, baseline_protocol: str) -> GroupRow | None:
    candidates = _baselines(rows, row, baseline_protocol)
    return max(candidates, key=lambda g: (g.flops_mean, g.group)) if candidates else None


def _envelope(points: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Log10 FLOPs and the running maximum of top-1: the monotone curve "best accuracy reached with F FLOPs"."""
    pts = sorted((float(f), float(a)) for f, a in points)
    if any(f <= 0 for f, _ in pts):
        raise ValueError(f'FLOPs must be positive for a log-FLOPs curve, got {[f for f, _ in pts]}')
    xs, ys, best = [], [], -math.inf
    for f, a in pts:
        best = max(best, a)
        xs.append(math.log10(f))
        ys.append(best)
    return xs, ys


def matched_flops(points: Sequence[tuple[float, float]], top1: float) -> Match:
    """FLOPs the baseline needs to reach ``top1``, from its final top-1 at several budgets.

    The baseline curve is made monotone (running maximum of top-1 over increasing FLOPs, so a noisy larger budget
    never lowers the curve) and is piecewise linear in log10 FLOPs between budgets; the matched FLOPs are where the
    curve first reaches ``top1``.

    Args:
        points: ``(total_train_flops, top1)`` of each baseline budget.
        top1: Accuracy to match.

    Returns:
        The match; see :class:`Match` for the statuses.

    Raises:
        ValueError: ``points`` is empty or holds non-positive FLOPs.
    """
    if not points:
        raise ValueError('matched_flops needs at least one baseline point')
    xs, ys = _envelope(points)
    if len(xs) == 1:
        return Match('one_budget', 10 ** xs[0])
    if top1 < ys[0]:
        return Match('below_range', 10 ** xs[0])
    if top1 == ys[0]:
        return Match('matched', 10 ** xs[0])
    for i in range(1, len(xs)):
        if ys[i] >= top1:
            t = (top1 - ys[i - 1]) / (ys[i] - ys[i - 1])  # ys[i-1] < top1 <= ys[i], so no division by zero
            return Match('matched', 10 ** (xs[i - 1] + t * (xs[i] - xs[i - 1])))
    return Match('above_range', 10 ** xs[-1])


def top1_at_flops(points: Sequence[tuple[float, float]], flops: float) -> float | None:
    """Baseline top-1 at ``flops`` on the same monotone log-FLOPs curve as :func:`matched_flops`.

    Returns:
        The interpolated top-1, or None when ``flops`` lies outside the budgets (no extrapolation) or there is only
        one budget.
    """
    if len(points) < 2 or flops <= 0:
        return None
    xs, ys = _envelope(points)
    x = math.log10(flops)
    eps = 1e-9  # tolerate float noise at the ends, e.g. a group whose FLOPs equal a baseline budget
    if x < xs[0] - eps or x > xs[-1] + eps:
        return None
    x = min(max(x, xs[0]), xs[-1])
    for i in range(1, len(xs)):
        if x <= xs[i]:
            if xs[i] == xs[i - 1]:
                return ys[i]
            return ys[i - 1] + (x - xs[i - 1]) / (xs[i] - xs[i - 1]) * (ys[i] - ys[i - 1])
    return ys[-1]


def seed_noise(a: GroupRow, b: GroupRow) -> tuple[float | None, bool | None]:
    """Pooled std over seeds of two groups and whether their mean top-1 differ by more than the noise rule allows.

    Rule: ``|mean_a - mean_b| > NOISE_FACTOR * s_pooled`` with
    ``s_pooled = sqrt(((n_a - 1) s_a^2 + (n_b - 1) s_b^2) / (n_a + n_b - 2))``.

    Returns:
        ``(s_pooled, beyond_noise)``, both None when both groups have a single seed (noise unknown).
    """
    dof = a.n + b.n - 2
    if dof < 1:
        return None, None
    ss = (a.n - 1) * (a.top1_std or 0.0) ** 2 + (b.n - 1) * (b.top1_std or 0.0) ** 2
    pooled = math.sqrt(ss / dof)
    return pooled, abs(a.top1_mean - b.top1_mean) > NOISE_FACTOR * pooled


# ---------------------------------------------------------------------------------------------------------------
# Formatting


def _flops_unit(rows: Sequence[GroupRow]) -> tuple[float, str]:
    largest = max((g.flops_mean for g in rows), default=0.0)
    for scale, name in ((1e18, 'EFLOPs'), (1e15, 'PFLOPs'), (1e12, 'TFLOPs')):
        if largest >= scale:
            return scale, name
    return 1e9, 'GFLOPs'


def _wall_unit(rows: Sequence[GroupRow]) -> tuple[float, str]:
    largest = max((g.wall_s_mean or 0.0 for g in rows), default=0.0)
    if largest >= 7200:
        return 3600.0, 'h'
    if largest >= 120:
        return 60.0, 'min'
    return 1.0, 's'


def _pm(mean: float | None, std: float | None, pm: str) -> str:
    if mean is None:
        return DASH
    return f'{mean:.2f}{pm}{std:.2f}' if std is not None else f'{mean:.2f}{pm}{DASH}'


def _opt(value: float | None, fmt: str, scale: float = 1.0) -> str:
    return DASH if value is None else format(value / scale, fmt)


def _rel_paths(row: GroupRow, out_dir: Path) -> list[str]:
    # relative to the report so that moving runs and report together leaves the report unchanged
    return [Path(os.path.relpath(r.path.resolve(), out_dir.resolve())).as_posix() for r in row.runs]


@dataclass(frozen=True)
class _Cells:
    """Display strings of one table row, shared by the Markdown and LaTeX writers."""
    group: str
    source: str
    protocol: str
    dataset: str
    model: str
    seeds: str
    top1: str
    top5: str
    flops: str
    rel: str
    mem: str
    wall: str
    device: str
    runs: list[str]


def _cells(rows: Sequence[GroupRow], out_dir: Path) -> list[_Cells]:
    fscale, _ = _flops_unit(rows)
    wscale, _ = _wall_unit(rows)
    cells = []
    for g in rows:
        cells.append(_Cells(
            group=g.group, source='measured', protocol=g.protocol, dataset=g.dataset, model=g.model,
            seeds=str(g.n), top1=_pm(g.top1_mean, g.top1_std, PM), top5=_pm(g.top5_mean, g.top5_std, PM),
            flops=f'{g.flops_mean / fscale:.2f}',
            rel=DASH if g.flops_rel is None else f'{g.flops_rel:.2f}x', mem=_opt(g.peak_mem_mb_mean, '.0f'),
            wall=_opt(g.wall_s_mean, '.1f', wscale), device='; '.join(g.devices) or DASH,
            runs=_rel_paths(g, out_dir),
        ))
    for q in QUOTED:
        cells.append(_Cells(
            group=DASH, source=q.label, protocol=q.protocol, dataset=q.dataset, model=q.model,
            seeds=DASH, top1='matched' if q.top1 is None else f'{q.top1:.1f}', top5=DASH, flops=DASH,
            rel=DASH if q.flops_rel is None else f'{q.flops_rel:.2f}x', mem=DASH, wall=DASH, device=DASH,
            runs=[q.source],
        ))
    return cells


def _md_cell(text: str) -> str:
    return text.replace('|', '\\|')


def _render_markdown(
        rows: Sequence[GroupRow],
        out_dir: Path,
        png_name: str,
        title: str,
        baseline_protocol: str,
        n_runs: int,
        skipped: Sequence[tuple[Path, str]] = (),
) -> str:
    _, funit = _flops_unit(rows)
    _, wunit = _wall_unit(rows)
    header = ['Group', 'Source', 'Protocol', 'Dataset', 'Model', 'Seeds', 'Top-1 (%)', 'Top-5 (%)',
              f'Train {funit}', f'FLOPs vs {baseline_protocol}', 'Peak mem (MB)', f'Wall ({wunit})', 'Device',
              'Runs']
    out = io.StringIO()
    w = out.write
    w(f'# {title}\n\n')
    w(f'Generated by `rbdc report` from {n_runs} run(s) in {len(rows)} group(s); regenerate it with the same command '
      'rather than editing it.\n\n')
    w('## Results\n\n')
    w('| ' + ' | '.join(header) + ' |\n')
    w('|' + '|'.join('---' for _ in header) + '|\n')
    for c in _cells(rows, out_dir):
        values = [c.group, c.source, c.protocol, c.dataset, c.model, c.seeds, c.top1, c.top5, c.flops, c.rel, c.mem,
                  c.wall, c.device, '<br>'.join(c.runs)]
        w('| ' + ' | '.join(_md_cell(v) for v in values) + ' |\n')
    w('\n')
    w('- Top-1/Top-5: final eval accuracy, mean ± sample std (ddof=1) over seeds; std – with one seed.\n')
    w(f'- Train {funit}: total training FLOPs of the run (every model trained in it, every narrow model of every '
      'RBDC level included), mean over seeds.\n')
    w(f'- FLOPs vs {baseline_protocol}: ratio to the {baseline_protocol} group of the same dataset and model with the '
      'largest budget (1.00x).\n')
    w('- Runs: run directories, relative to this file.\n')
    for q in QUOTED:
        w(f'- {q.label}: {q.claim}; {q.dataset}; source: {q.source}. Not measured here.\n')
    w('\n')
    if skipped:
        w('## Skipped run directories\n\nNot in any table or figure:\n\n')
        for d, why in skipped:
            w(f'- `{os.path.relpath(d, out_dir.resolve())}`: {why}\n')
        w('\n')
    w(_render_savings(rows, baseline_protocol))
    w(_render_vs_rbdc(rows, baseline_protocol))
    w('\n## Figure\n\n')
    w(f'![Eval top-1 vs cumulative training FLOPs]({png_name})\n\n')
    w('Eval top-1 per epoch vs cumulative training FLOPs (log scale), one line per run, coloured by protocol; '
      'diamonds mark the first epoch of each new stage; squares with error bars are the mean final top-1 (± std '
      'over seeds) of each group.\n')
    return out.getvalue()


def _render_savings(rows: Sequence[GroupRow], baseline_protocol: str) -> str:
    fscale, funit = _flops_unit(rows)
    out = io.StringIO()
    w = out.write
    w('## FLOPs saving at matched accuracy\n\n')
    w(f'Each non-{baseline_protocol} group is compared with the {baseline_protocol} groups of the same dataset and '
      f'model. With several {baseline_protocol} budgets, the FLOPs {baseline_protocol} needs to reach the group\'s '
      f'mean top-1 are read off {baseline_protocol}\'s final top-1 vs total training FLOPs (made monotone by a running '
      'maximum, piecewise linear in log FLOPs); saving = 1 - F_group / F_matched. Nothing is extrapolated outside the '
      'budgets. The reference is the largest budget.\n\n')
    w(f'Seed-noise rule: a difference in mean top-1 counts as larger than seed noise when |diff| > {NOISE_FACTOR:g} x '
      's_pooled, s_pooled = sqrt(((n1-1) s1^2 + (n2-1) s2^2) / (n1+n2-2)) over seeds; with one seed on both sides '
      'the noise is unknown.\n\n')
    others = [g for g in rows if g.protocol != baseline_protocol]
    if not others:
        w(f'No non-{baseline_protocol} group in this report.\n')
    for g in others:
        bases = _baselines(rows, g, baseline_protocol)
        std = f' ± {g.top1_std:.2f}' if g.top1_std is not None else ''
        w(f'- **{g.group}** ({g.protocol}, {g.n} seed(s)): top-1 {g.top1_mean:.2f}{std} with '
          f'{g.flops_mean / fscale:.2f} {funit}.\n')
        if not bases:
            w(f'  - No {baseline_protocol} group for {g.model} on {g.dataset}: saving not measurable.\n')
            continue
        ref = max(bases, key=lambda b: (b.flops_mean, b.group))
        diff = g.top1_mean - ref.top1_mean
        pooled, beyond = seed_noise(g, ref)
        if beyond is None:
            noise = 'seed noise unknown (one seed each)'
        else:
            noise = f'{"larger than" if beyond else "within"} seed noise (s_pooled {pooled:.2f})'
        ref_std = f' ± {ref.top1_std:.2f}' if ref.top1_std is not None else ''
        w(f'  - vs {ref.group} ({ref.n} seed(s), top-1 {ref.top1_mean:.2f}{ref_std}, '
          f'{ref.flops_mean / fscale:.2f} {funit}): {diff:+.2f} top-1 at {g.flops_rel:.2f}x its FLOPs; {noise}.\n')
        points = [(b.flops_mean, b.top1_mean) for b in bases]
        match = matched_flops(points, g.top1_mean)
        ratio = g.flops_mean / match.flops
        if match.status == 'one_budget':
            w(f'  - Saving not measurable from one {baseline_protocol} budget: at {g.flops_rel:.2f}x the FLOPs '
              f'{g.protocol} is {diff:+.2f} top-1.\n')
            continue
        if match.status == 'matched':
            w(f'  - {baseline_protocol} reaches {g.top1_mean:.2f} top-1 with {match.flops / fscale:.2f} {funit} '
              f'(interpolated over {len(bases)} budgets): saving at matched accuracy {100 * (1 - ratio):.1f}%'
              f'{" (negative: more FLOPs than " + baseline_protocol + ")" if ratio > 1 else ""}.\n')
        elif match.status == 'above_range':
            w(f'  - Above every {baseline_protocol} budget (best {max(a for _, a in points):.2f} top-1, largest '
              f'{match.flops / fscale:.2f} {funit}): saving at matched accuracy at least {100 * (1 - ratio):.1f}% '
              '(lower bound; not extrapolated).\n')
        else:
            w(f'  - Below the smallest {baseline_protocol} budget ({min(points)[1]:.2f} top-1 with '
              f'{match.flops / fscale:.2f} {funit}): saving at matched accuracy at most {100 * (1 - ratio):.1f}% '
              '(upper bound; not extrapolated).\n')
        at_equal = top1_at_flops(points, g.flops_mean)
        if at_equal is None:
            w(f'  - At equal FLOPs: {g.flops_mean / fscale:.2f} {funit} lies outside the {baseline_protocol} '
              'budgets, not measurable.\n')
        else:
            w(f'  - At equal FLOPs {baseline_protocol} reaches {at_equal:.2f} top-1 (interpolated): '
              f'{g.top1_mean - at_equal:+.2f} top-1.\n')
    claims = [q for q in QUOTED if q.flops_rel is not None]
    for q in claims:
        w(f'- {q.label}: {q.claim} (saving {100 * (1 - q.flops_rel):.0f}%; {q.source}).\n')
    return out.getvalue()


EQUAL_FLOPS = 0.02  # two groups count as "at equal FLOPs" when their mean training FLOPs differ by less than this


def _render_vs_rbdc(rows: Sequence[GroupRow], baseline_protocol: str) -> str:
    """The paper's second claim, head to head: each other method's group vs each RBDC group at equal FLOPs."""
    subjects = [name for name, p in protocols.registry().items() if p.subject]  # the methods under study
    rbdc = [g for g in rows if g.protocol in subjects]
    others = [g for g in rows if g.protocol not in (*subjects, baseline_protocol)]
    pairs = [(r, g) for g in others for r in rbdc if (r.dataset, r.model) == (g.dataset, g.model)
             and abs(r.flops_mean / g.flops_mean - 1) < EQUAL_FLOPS]
    if not pairs:
        return ''
    out = io.StringIO()
    w = out.write
    w('\n## RBDC vs the other methods at equal FLOPs\n\n')
    w(f'Pairs of an RBDC group and another method\'s group on the same dataset and model whose training FLOPs differ '
      f'by less than {100 * EQUAL_FLOPS:g}%; the difference is RBDC minus the other method, same seed-noise rule.\n\n')
    w('| RBDC group | vs group | Protocol | Top-1 difference | FLOPs ratio | Seed noise |\n|---|---|---|---|---|---|\n')
    for r, g in pairs:
        pooled, beyond = seed_noise(r, g)
        noise = 'unknown (one seed each)' if beyond is None else \
            f'{"larger than" if beyond else "within"} noise (s_pooled {pooled:.2f})'
        w(f'| {r.group} ({r.n} seed(s)) | {g.group} ({g.n} seed(s)) | {g.protocol} | '
          f'{r.top1_mean - g.top1_mean:+.2f} | {r.flops_mean / g.flops_mean:.3f} | {noise} |\n')
    return out.getvalue()


_TEX_SPECIAL = {'\\': r'\textbackslash{}', '&': r'\&', '%': r'\%', '$': r'\$', '#': r'\#', '_': r'\_', '{': r'\{',
                '}': r'\}', '~': r'\textasciitilde{}', '^': r'\textasciicircum{}', DASH: '--', '±': r'$\pm$'}


def _tex(text: str) -> str:
    return ''.join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def _render_tex(rows: Sequence[GroupRow], out_dir: Path, name: str, title: str, baseline_protocol: str) -> str:
    _, funit = _flops_unit(rows)
    _, wunit = _wall_unit(rows)
    header = ['Group', 'Source', 'Protocol', 'Dataset', 'Model', 'Seeds', 'Top-1 (\\%)', 'Top-5 (\\%)',
              f'Train {funit}', f'FLOPs vs {_tex(baseline_protocol)}', 'Peak mem (MB)', f'Wall ({wunit})', 'Device']
    out = io.StringIO()
    w = out.write
    w('% Generated by `rbdc report`; regenerate it rather than editing it. Needs \\usepackage{booktabs}.\n')
    w('% The "% runs:" comment under each row lists its run directories, relative to this file.\n')
    w('\\begin{table}[t]\n\\centering\n\\small\n')
    label = re.sub(r'[^A-Za-z0-9_.:-]', '-', name)
    w(f'\\caption{{{_tex(title)}}}\n\\label{{tab:{label}}}\n')
    w('\\begin{tabular}{lllll' + 'r' * 6 + 'l}\n\\toprule\n')
    w(' & '.join(header) + ' \\\\\n\\midrule\n')
    quoted_started = False
    for c in _cells(rows, out_dir):
        if c.source != 'measured' and not quoted_started:
            w('\\midrule\n')
            quoted_started = True
        values = [c.group, c.source, c.protocol, c.dataset, c.model, c.seeds, c.top1, c.top5, c.flops, c.rel,
                  c.mem, c.wall, c.device]
        w(' & '.join(_tex(v) for v in values) + ' \\\\\n')
        w(('% runs: ' if c.source == 'measured' else '% source: ') + ', '.join(c.runs) + '\n')
    w('\\bottomrule\n\\end{tabular}\n\\end{table}\n')
    return out.getvalue()


def _render_csv(rows: Sequence[GroupRow], out_dir: Path) -> str:
    fields = ['group', 'source', 'protocol', 'dataset', 'model', 'n_seeds', 'seeds', 'top1_mean', 'top1_std',
              'top5_mean', 'top5_std', 'total_train_flops_mean', 'flops_rel_baseline', 'baseline_group',
              'total_train_gmac_epochs_mean', 'peak_mem_mb_mean', 'wall_s_mean', 'devices', 'stages', 'run_dirs',
              'note']

    def f(value: float | None, fmt: str) -> str:
        return '' if value is None else format(value, fmt)

    out = io.StringIO()
    writer = csv.writer(out, lineterminator='\n')
    writer.writerow(fields)
    for g in rows:
        writer.writerow([
            g.group, 'measured', g.protocol, g.dataset, g.model, g.n, ';'.join(map(str, g.seeds)),
            f(g.top1_mean, '.4f'), f(g.top1_std, '.4f'), f(g.top5_mean, '.4f'), f(g.top5_std, '.4f'),
            f(g.flops_mean, '.6e'), f(g.flops_rel, '.4f'), g.baseline or '', f(g.gmac_epochs_mean, '.6e'),
            f(g.peak_mem_mb_mean, '.1f'), f(g.wall_s_mean, '.1f'), ';'.join(g.devices), g.stages,
            ';'.join(_rel_paths(g, out_dir)), '',
        ])
    for q in QUOTED:
        writer.writerow([
            '', q.label, q.protocol, q.dataset, q.model, '', '', f(q.top1, '.1f'), '', '', '', '',
            f(q.flops_rel, '.4f'), '', '', '', '', '', f'{q.protocol}:{q.model}:{q.epochs}ep' if q.epochs else '',
            q.source, q.claim,
        ])
    return out.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# Figure


def _protocol_colors(names: Iterable[str]) -> dict[str, str]:
    colors = {name: p.color for name, p in protocols.registry().items()}
    extra = sorted(p for p in set(names) if p not in colors)
    for i, p in enumerate(extra):
        colors[p] = EXTRA_COLORS[i % len(EXTRA_COLORS)]
    return colors


def _plot(rows: Sequence[GroupRow], path: Path, title: str, baseline_protocol: str) -> None:
    # Figure + FigureCanvasAgg instead of pyplot: no global backend switch, no figure manager to leak
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    colors = _protocol_colors(g.protocol for g in rows)
    models = sorted({g.model for g in rows})
    styles = dict(zip(models, ('-', '--', ':', '-.') * (len(models) // 4 + 1)))
    fig = Figure(figsize=(8.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for g in rows:
        color, style = colors[g.protocol], styles[g.model]
        for run in g.runs:
            segments: list[tuple[str, list[float], list[float]]] = []
            for stage, flops, top1 in run.curve:
                if not (flops > 0 and math.isfinite(top1)):
                    continue
                if not segments or segments[-1][0] != stage:
                    segments.append((stage, [], []))
                segments[-1][1].append(flops)
                segments[-1][2].append(top1)
            # each stage is its own line: independent narrow models must not be joined into one zig-zag curve
            for i, (_, xs, ys) in enumerate(segments):
                ax.plot(xs, ys, color=color, linestyle=style, linewidth=1.0, alpha=0.6)
                if i > 0:
                    ax.plot(xs[:1], ys[:1], linestyle='none', marker='D', markersize=4, color=color)
        if g.flops_mean > 0:
            ax.errorbar([g.flops_mean], [g.top1_mean], yerr=[g.top1_std or 0.0], color=color, marker='s',
                        markersize=6, markeredgecolor='black', capsize=3, linestyle='none', zorder=3)
    ax.set_xscale('log')
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short ranges
    ax.set_xlabel('cumulative training FLOPs')
    ax.set_ylabel('eval top-1 (%)')
    ax.set_title(textwrap.fill(title, 70), fontsize=10)
    ax.grid(True, which='both', alpha=0.3)
    present = [p for p in sorted(colors, key=lambda p: _protocol_rank(p, baseline_protocol))
               if any(g.protocol == p for g in rows)]
    handles = [Line2D([], [], color=colors[p], label=p) for p in present]
    if len(models) > 1:
        handles += [Line2D([], [], color='black', linestyle=styles[m], label=m) for m in models]
    handles += [
        Line2D([], [], color='gray', marker='D', linestyle='none', markersize=4, label='stage start'),
        Line2D([], [], color='gray', marker='s', markeredgecolor='black', linestyle='none', label='final mean ± std'),
    ]
    ax.legend(handles=handles, fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    # no Software/date chunks, so the PNG bytes depend only on the data and the matplotlib version
    atomic_write(path, lambda f: fig.savefig(f, format='png', metadata={'Software': None}))


# ---------------------------------------------------------------------------------------------------------------
# Entry points

_SUFFIXES = ('.md', '.tex', '.csv', '.png')


def generate_report(
        run_dirs: Sequence[str | os.PathLike],
        out_prefix: str | os.PathLike,
        title: str | None = None,
        baseline_protocol: str = 'scratch',
) -> dict[str, Path]:
    """Writes ``<out_prefix>.md``, ``.tex``, ``.csv`` and ``.png`` from run directories.

    Args:
        run_dirs: Run directories or folders above them (searched recursively).
        out_prefix: Output path without suffix, e.g. ``reports/imagenette-deit-tiny``; a ``.md``/``.tex``/``.csv``/
            ``.png`` suffix is dropped. Parent folders are created.
        title: Report title; defaults to the output name.
        baseline_protocol: Protocol that is the 1.00x FLOPs reference and the curve to match accuracy on.

    Returns:
        Written paths keyed by ``md``, ``tex``, ``csv`` and ``png``.

    Raises:
        UserError: A run directory is missing or invalid; the message names the path.
    """
    if not run_dirs:
        raise UserError('no run directories given: pass run directories or folders above them')
    out_prefix = Path(out_prefix)
    if out_prefix.suffix in _SUFFIXES:
        out_prefix = out_prefix.with_suffix('')
    name = out_prefix.name
    if not name:
        raise UserError(f'output prefix {out_prefix} has no file name: use e.g. -o reports/NAME')
    title = title or name
    finished, skipped = scan_run_dirs(run_dirs)
    for d, why in skipped:
        print(f'rbdc report: skipped {d}: {why}', file=sys.stderr)
    runs = [load_run(d) for d in finished]
    rows = summarize_groups(runs, baseline_protocol)
    out_dir = out_prefix.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_prefix.with_name(f'{name}.{ext}') for ext in ('md', 'tex', 'csv', 'png')}
    texts = {
        'md': _render_markdown(rows, out_dir, paths['png'].name, title, baseline_protocol, len(runs), skipped),
        'tex': _render_tex(rows, out_dir, name, title, baseline_protocol),
        'csv': _render_csv(rows, out_dir),
    }
    for ext, text in texts.items():
        atomic_write_bytes(paths[ext], text.encode('utf-8'))
    _plot(rows, paths['png'], title, baseline_protocol)
    return paths


def _cmd_report(args: argparse.Namespace) -> int:
    paths = generate_report(args.run_dirs, args.output, title=args.title, baseline_protocol=args.baseline_protocol)
    for path in paths.values():
        print(path)
    return 0


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Adds the ``report`` subcommand to an argparse subparsers object.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers()``.

    Returns:
        The ``report`` parser.
    """
    p = subparsers.add_parser(
        'report', help='regenerate result tables and the top-1 vs FLOPs figure from run directories',
        description='Write OUT.md, OUT.tex, OUT.csv and OUT.png from run directories (folders holding results.json '
                    'and summary.csv); folders above run directories are searched recursively.',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='examples:\n'
               '  rbdc report runs/imagenette-vit-mini -o reports/imagenette-vit-mini\n'
               '  rbdc report runs/quickstart -o runs/quickstart-report --title "my quickstart"\n',
    )
    p.add_argument('run_dirs', nargs='+', metavar='RUN_DIR', help='run directories or folders above them')
    p.add_argument('-o', '--output', required=True, metavar='OUT',
                   help='output path without suffix, e.g. reports/NAME (required)')
    p.add_argument('--title', default=None, metavar='T', help='report title (default: the output name)')
    p.add_argument('--baseline-protocol', default='scratch', metavar='P',
                   help='protocol that is the 1.00x FLOPs reference and the accuracy curve to match '
                        '(default: scratch)')
    p.set_defaults(func=_cmd_report)
    return p
