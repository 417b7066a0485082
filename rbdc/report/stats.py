"""Statistics over runs: groups over seeds, FLOPs relative to the baseline, matched-FLOPs interpolation,
seed noise.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rbdc import protocols
from rbdc.errors import UserError

from .load import Run


NOISE_FACTOR = 2.0  # a top-1 difference beats seed noise when |diff| > NOISE_FACTOR * pooled std


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


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    # statistics.mean/stdev are exact (fraction based), so the result does not depend on summation order or platform
    mean = statistics.mean(values)
    return float(mean), (float(statistics.stdev(values)) if len(values) > 1 else None)


def _optional_mean(runs: Sequence[Run], key: str) -> float | None:
    values = [float(r.results[key]) for r in runs if r.results.get(key) is not None]
    return float(statistics.mean(values)) if values else None


def _protocol_rank(protocol: str, baseline_protocol: str) -> tuple:
    """Row order: the baseline, then the registry's order (RBDC, the growth baselines), then unregistered ones."""
    if protocol == baseline_protocol:
        return (0, 0, "")
    order = protocols.names()
    if protocol in order:
        return (1, order.index(protocol), "")
    return (2, 0, protocol)


def _stages_text(results: dict) -> str:
    stages = results.get("stages") or []
    parts = []
    for s in stages:
        if isinstance(s, dict) and "stage" in s:
            epochs = s.get("epochs")
            parts.append(f"{s['stage']}:{s.get('model', '?')}:{epochs if epochs is not None else '?'}ep")
    return " + ".join(parts)


def summarize_groups(runs: Sequence[Run], baseline_protocol: str = "scratch") -> list[GroupRow]:
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
        members.sort(key=lambda r: (r.results["seed"], r.results["name"], str(r.path)))
        _check_group(group, members)
        rows.append(_group_row(group, members))
    rows.sort(key=lambda g: (g.dataset, g.model, _protocol_rank(g.protocol, baseline_protocol), g.flops_mean, g.group))
    out = []
    for row in rows:
        ref = _reference(rows, row, baseline_protocol)
        if ref is not None and ref.flops_mean > 0:
            row = dataclasses.replace(row, baseline=ref.group, flops_rel=row.flops_mean / ref.flops_mean)
        out.append(row)
    return out


def _check_group(group: str, members: Sequence[Run]) -> None:
    """One group is one experiment: one protocol, dataset and model, each seed once (``members`` sorted by seed)."""
    first = members[0]
    for r in members[1:]:
        for key in ("protocol", "dataset", "model"):
            if r.results[key] != first.results[key]:
                raise UserError(
                    f'group "{group}" mixes {key} {first.results[key]!r} ({first.path}) and '
                    f'{r.results[key]!r} ({r.path}): give the runs different "group" names'
                )
    for a, b in zip(members, members[1:]):
        if a.results["seed"] == b.results["seed"]:
            raise UserError(
                f'group "{group}" has seed {a.results["seed"]} twice ({a.path} and {b.path}): '
                "pass only one of them, or the mean would count that seed twice"
            )


def _group_row(group: str, members: Sequence[Run]) -> GroupRow:
    """The runs of one group reduced to mean and std (no baseline yet)."""
    first = members[0]
    top1_mean, top1_std = _mean_std([float(r.results["eval_top1"]) for r in members])
    top5 = [float(r.results["eval_top5"]) for r in members if r.results.get("eval_top5") is not None]
    top5_mean, top5_std = _mean_std(top5) if top5 else (None, None)
    return GroupRow(
        group=group,
        protocol=first.protocol,
        dataset=first.results["dataset"],
        model=first.results["model"],
        seeds=tuple(r.results["seed"] for r in members),
        runs=tuple(members),
        top1_mean=top1_mean,
        top1_std=top1_std,
        top5_mean=top5_mean,
        top5_std=top5_std,
        flops_mean=float(statistics.mean([float(r.results["total_train_flops"]) for r in members])),
        peak_mem_mb_mean=_optional_mean(members, "peak_mem_mb"),
        wall_s_mean=_optional_mean(members, "wall_s"),
        devices=tuple(sorted({str(r.results["device"]) for r in members if r.results.get("device")})),
        stages=_stages_text(first.results),
    )


def _baselines(rows: Sequence[GroupRow], row: GroupRow, baseline_protocol: str) -> list[GroupRow]:
    return [g for g in rows if g.protocol == baseline_protocol and g.dataset == row.dataset and g.model == row.model]


def _reference(rows: Sequence[GroupRow], row: GroupRow, baseline_protocol: str) -> GroupRow | None:
    candidates = _baselines(rows, row, baseline_protocol)
    return max(candidates, key=lambda g: (g.flops_mean, g.group)) if candidates else None


def _envelope(points: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Log10 FLOPs and the running maximum of top-1: the monotone curve "best accuracy reached with F FLOPs"."""
    pts = np.array(sorted((float(f), float(a)) for f, a in points)).reshape(-1, 2)
    if (pts[:, 0] <= 0).any():
        raise ValueError(f"FLOPs must be positive for a log-FLOPs curve, got {pts[:, 0].tolist()}")
    return np.log10(pts[:, 0]), np.maximum.accumulate(pts[:, 1])


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
        raise ValueError("matched_flops needs at least one baseline point")
    xs, ys = _envelope(points)
    if len(xs) == 1:
        return Match("one_budget", 10 ** float(xs[0]))
    if top1 < ys[0]:
        return Match("below_range", 10 ** float(xs[0]))
    if top1 > ys[-1]:
        return Match("above_range", 10 ** float(xs[-1]))
    # The inverse of the curve, read from its far end: on a flat stretch np.interp takes the last point at or below
    # the value, which, reversed, is the first FLOPs that reach it.
    return Match("matched", 10 ** float(np.interp(-top1, -ys[::-1], xs[::-1])))


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
    return float(np.interp(x, xs, ys))


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


# Two-sided 95% Student t quantiles by degrees of freedom; other dofs round down to a tabulated one (a wider,
# conservative interval).
T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    30: 2.042,
}


def t975(dof: float) -> float:
    d = max(1, int(math.floor(dof)))
    return T975[max(k for k in T975 if k <= d)]


def t_half_width(values: Sequence[float]) -> float | None:
    """Half width of the 95% t-interval of the mean of ``values`` (None with fewer than two)."""
    n = len(values)
    if n < 2:
        return None
    return t975(n - 1) * statistics.stdev(values) / math.sqrt(n)


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float | None]:
    """Mean difference a - b and the half width of its Welch interval (None without two values each): at 95% from
    :data:`T975`, at another ``level`` from scipy's t quantile, both at the rounded-down Welch degrees of freedom."""
    d = statistics.mean(a) - statistics.mean(b)
    if len(a) < 2 or len(b) < 2:
        return d, None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return d, 0.0
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    if level == 0.95:
        return d, t975(dof) * math.sqrt(va + vb)
    from scipy import stats as scipy_stats  # only the detection verdict's family-wise intervals need it

    return d, float(scipy_stats.t.ppf(0.5 + level / 2, max(1, math.floor(dof)))) * math.sqrt(va + vb)
