"""FLOPs saving of a method point against scratch's curve, with a test-inversion (Fieller-type) 95% interval.

Scratch has runs at budgets F_1 < ... < F_m (several seeds each), a method point seeds at FLOPs F. The saving is
s = 1 - F / F_match, F_match where scratch's curve (the monotone envelope of its per-budget means, piecewise linear in
log10 FLOPs, as :func:`rbdc.report.stats.matched_flops` draws it) reaches the method's mean top-1. At a candidate s0
the curve's value at F / (1 - s0) is a fixed combination of at most two budget means, so "saving = s0" is a Welch
t-test of the method's mean against it, the curve's own seed noise included; the interval is every s0 in scratch's
range the test does not reject at 5%. The percentile bootstrap it replaces covers ~78% with 3 seeds (a resample of 3
seeds underrates their spread); this one carries the t distribution's small-sample width. Nothing here draws random
numbers, so a verdict's words never depend on a draw.

Inputs are plain: ``scratch`` is ``[(flops, [top1 per seed]), ...]`` sorted by FLOPs, the method ``[top1 per seed]``
and its FLOPs.
"""

from __future__ import annotations

import logging
import math
import statistics
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import special  # scipy comes with scikit-learn, a dependency
from scipy.interpolate import PchipInterpolator
from scipy.optimize import OptimizeWarning, curve_fit

from rbdc.errors import UserError

from .fmt import signed_pct
from .stats import matched_flops

ALPHA = 0.05
# The fewest seeds a group (a point's runs, or scratch's at one budget) may have for an interval or a test here.
# Coverage is tested with every group at 3 to 5 seeds (tests/test_saving_interval.py). A 2-seed point beside
# 5-seed groups under-covered (0.89-0.91 for the saving, 0.92 for a pair, in 1,000 simulated studies each): the
# Welch dof of a 2-seed group's variance is 1. A point with fewer seeds (e.g. one still running) gets its mean only.
MIN_SEEDS = 3
GRID = 401  # candidate savings, uniform in log10 F_match: only finds the accepted set, bisection places its ends
TOL = 1e-6  # bisection stops when a bound is known to this (absolute, in saving)
EPS = 1e-9  # log10 FLOPs slack at the range ends, e.g. a method at exactly a scratch budget

Scratch = Sequence[tuple[float, Sequence[float]]]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SavingInterval:
    """Point estimate and 95% interval of the saving (fractions: 0.3 is 30% fewer FLOPs than scratch).

    ``status`` is ``matched``, ``above_range`` or ``below_range`` (the method's mean lies beyond scratch's curve;
    ``estimate`` is then None). An open end (``lo_open``/``hi_open``) means the accepted savings reach the edge of what
    scratch's budgets can measure: the interval only bounds the saving from the other side, and ``lo``/``hi`` there is
    that edge, not a bound.
    """

    estimate: float | None
    lo: float
    hi: float
    lo_open: bool
    hi_open: bool
    status: str

    def contains(self, s: float) -> bool:
        return (self.lo_open or s >= self.lo) and (self.hi_open or s <= self.hi)

    def text(self) -> str:
        """``[+5.1%, +20.0%]``, or a one-sided bound ``≥ +5.1%`` / ``≤ +20.0%`` where an end is open."""
        lo, hi = signed_pct(self.lo), signed_pct(self.hi)
        if self.lo_open and self.hi_open:
            return f"unbounded (every saving scratch's range can measure, {lo} to {hi}, is accepted)"
        return f"≥ {lo}" if self.hi_open else f"≤ {hi}" if self.lo_open else f"[{lo}, {hi}]"


@dataclass(frozen=True)
class Gap:
    """Top-1 difference (method - scratch), its standard error, Welch-Satterthwaite dof and 95% interval."""

    gap: float
    se: float
    dof: float
    lo: float
    hi: float


@dataclass(frozen=True)
class _Data:
    flops: tuple[float, ...]
    log_f: np.ndarray
    means: np.ndarray
    u: np.ndarray  # variance of each budget's mean: s^2 / n
    n: np.ndarray
    arg: np.ndarray  # budget whose mean is the envelope's value at each budget (running maximum)
    m_mean: float
    m_u: float
    m_n: int
    f: float


def _prepare(scratch: Scratch, method: Sequence[float], flops: float) -> _Data:
    if len(scratch) < 2:
        raise UserError(f"the saving needs scratch at 2 or more budgets to draw a curve, got {len(scratch)}")
    fs = [float(f) for f, _ in scratch]
    if not all(math.isfinite(f) and f > 0 for f in [*fs, float(flops)]):
        raise UserError(f"FLOPs must be positive and finite, got scratch {fs} and method {flops}")
    if any(b <= a for a, b in zip(fs, fs[1:])):
        raise UserError(f"scratch's FLOPs must be sorted strictly increasing (one group per budget), got {fs}")
    groups = [[float(v) for v in vals] for _, vals in scratch] + [[float(v) for v in method]]
    for i, g in enumerate(groups):
        name = "the method" if i == len(scratch) else f"scratch budget {fs[i]:.4g}"
        if len(g) < MIN_SEEDS:
            raise UserError(
                f"{name} has {len(g)} seed(s): an interval here needs {MIN_SEEDS} or more seeds per group "
                "(its coverage is tested from 3 seeds up)"
            )
        if not all(math.isfinite(v) for v in g):
            raise UserError(f"{name} has a non-finite top-1: {g}")
    # statistics.mean is exact, as in the report's Point.mean, so the estimate matches _saving bit for bit
    means = np.array([statistics.mean(g) for g in groups[:-1]])
    arg = [0]
    for j in range(1, len(means)):
        arg.append(j if means[j] >= means[arg[-1]] else arg[-1])
    m = groups[-1]
    return _Data(
        tuple(fs),
        np.log10(fs),
        means,
        np.array([np.var(g, ddof=1) / len(g) for g in groups[:-1]]),
        np.array([len(g) for g in groups[:-1]]),
        np.array(arg),
        statistics.mean(m),
        float(np.var(m, ddof=1)) / len(m),
        len(m),
        float(flops),
    )


def _curve_weights(d: _Data, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The curve at log10 FLOPs ``x`` as ``ca * means[a] + cb * means[b]`` (budgets a, b of the envelope)."""
    j = np.clip(np.searchsorted(d.log_f, x, side="right") - 1, 0, len(d.log_f) - 2)
    w = (x - d.log_f[j]) / (d.log_f[j + 1] - d.log_f[j])
    a, b = d.arg[j], d.arg[j + 1]
    return a, b, np.where(a == b, 1.0, 1.0 - w), np.where(a == b, 0.0, w)  # a flat stretch: both ends one mean


def _test(d: _Data, x) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gap (method - curve), its se, Welch dof and two-sided p at log10 FLOPs ``x`` inside scratch's range.

    The curve there is (1-w) E_j + w E_j+1 on the envelope; E_j is one budget's mean, so the curve is a linear
    combination of at most two independent means and its own seed noise enters the variance with weights w^2.
    """
    x = np.atleast_1d(np.asarray(x, float))
    a, b, ca, cb = _curve_weights(d, x)
    gap = d.m_mean - ca * d.means[a] - cb * d.means[b]
    terms = np.stack([np.full_like(x, d.m_u), ca**2 * d.u[a], cb**2 * d.u[b]])
    var = terms.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        dof = var**2 / (terms**2 / np.stack([np.full_like(x, d.m_n - 1.0), d.n[a] - 1.0, d.n[b] - 1.0])).sum(0)
        p = np.where(var > 0, 2 * special.stdtr(dof, -np.abs(gap) / np.sqrt(var)), np.abs(gap) <= 1e-9)
    return gap, np.sqrt(var), dof, p.astype(float)


def _x(d: _Data, s):
    return np.log10(d.f / (1.0 - np.asarray(s, float)))


def _inside(d: _Data, x: float) -> float | None:
    """``x`` (log10 FLOPs) clipped to scratch's range, None when it lies outside (no extrapolation)."""
    return float(np.clip(x, d.log_f[0], d.log_f[-1])) if d.log_f[0] - EPS <= x <= d.log_f[-1] + EPS else None


def _refine(d: _Data, out: float, inside: float, alpha: float) -> float:
    """Accepted end of the bracket [inside, out] where the test turns from accepting to rejecting, to TOL.

    Bisection with 32 sections per step: one vectorised test of 33 savings shrinks the bracket 32-fold, so 3-4 steps
    reach TOL where plain bisection would need ~15 scalar tests.
    """
    while abs(out - inside) > TOL:
        s = np.linspace(inside, out, 33)
        k = int(np.argmax(_test(d, _x(d, s))[3] < alpha))  # s[-1] is rejected, so a rejected point exists
        inside, out = s[k - 1], s[k]
    return float(inside)


def saving_interval(scratch: Scratch, method: Sequence[float], flops: float, alpha: float = ALPHA) -> SavingInterval:
    """Saving of the method against scratch and its test-inversion ``1 - alpha`` interval (see the module doc).

    The interval is the hull of the accepted savings and the estimate (the accepted set of a t-test with varying
    variance is an interval in practice; the hull keeps it one). When the method's mean is outside scratch's range
    the interval is open on that side: scratch never reaches (or never falls to) it, so that bound is unmeasured.

    Raises:
        UserError: fewer than 2 budgets, a group with fewer than 2 seeds, FLOPs not sorted or not positive.
    """
    d = _prepare(scratch, method, flops)
    m = matched_flops(list(zip(d.flops, d.means.tolist())), d.m_mean)
    est = 1.0 - d.f / m.flops if m.status == "matched" else None
    s = 1.0 - d.f / 10 ** np.linspace(d.log_f[0], d.log_f[-1], GRID)
    s_min, s_max = 1.0 - d.f / d.flops[0], 1.0 - d.f / d.flops[-1]
    s[0], s[-1] = s_min, s_max
    if est is not None:  # the estimate is accepted (p = 1) even when the whole accepted set falls between grid points
        s = np.unique(np.append(s, est))
    ok = np.flatnonzero(_test(d, _x(d, s))[3] >= alpha)
    if not len(ok):  # every measurable saving is rejected: the method is beyond the curve, on its mean's side
        up = m.status == "above_range"
        return SavingInterval(None, s_max if up else s_min, s_max if up else s_min, not up, up, m.status)
    i, k = ok[0], ok[-1]
    lo_open, hi_open = i == 0 or m.status == "below_range", k == len(s) - 1 or m.status == "above_range"
    lo = s_min if lo_open else _refine(d, s[i - 1], s[i], alpha)
    hi = s_max if hi_open else _refine(d, s[k + 1], s[k], alpha)
    return SavingInterval(est, float(lo), float(hi), bool(lo_open), bool(hi_open), m.status)


def p_value_saving(scratch: Scratch, method: Sequence[float], flops: float, s0: float) -> float | None:
    """Two-sided Welch p-value of "the saving is ``s0``" (e.g. 0.30, the paper's claim).

    None when F / (1 - s0) lies outside scratch's budgets: the curve is not measured there, so nothing is tested.
    """
    d = _prepare(scratch, method, flops)
    x = _inside(d, float(_x(d, s0))) if s0 < 1 else None
    return None if x is None else float(_test(d, x)[3][0])


@dataclass(frozen=True)
class OverBudgets:
    """One test over a series' points: the mean over them of (point - scratch's curve at F / (1 - s0)).

    ``gap`` is that mean contrast (top-1 points) with its Welch interval, ``p`` the two-sided p-value of "it is 0",
    i.e. of "the saving is s0 at every budget" (s0 = 0: the top-1 gap at equal FLOPs). ``used``: the indices of the
    points inside scratch's range at their F / (1 - s0) (the others are left out: no extrapolation).
    """

    gap: Gap
    p: float
    used: tuple[int, ...]


def over_budgets(scratch: Scratch, points: Sequence[tuple[Sequence[float], float]], s0: float) -> OverBudgets | None:
    """The mean over ``points`` (``[(top1 per seed, flops), ...]``, one per budget) of each point's contrast with
    scratch's curve at ``flops / (1 - s0)``, as one Welch t-test.

    The points share scratch's curve, so their separate tests are positively correlated and Fisher's combination
    (or an inverse-variance mean of the gaps) would overstate the evidence. The mean contrast is instead one fixed
    linear combination of independent group means (each point's seeds, each scratch budget's seeds), so its variance
    is exact: sum of coefficient^2 x s^2 / n over the groups, a budget used by two points counted once with its
    summed coefficient; Welch-Satterthwaite dof. Coverage at 3 to 5 seeds: tests/test_saving_interval.py.
    None when no point lies inside scratch's range.
    """
    coef: dict[int, float] = {}  # scratch budget -> coefficient of its mean
    means, terms, used, d = [], [], [], None
    for i, (top1, flops) in enumerate(points):
        d = _prepare(scratch, top1, flops)
        x = _inside(d, float(_x(d, s0))) if s0 < 1 else None
        if x is not None:
            used.append(i)
            means.append(d.m_mean)
            terms.append((d.m_u, d.m_n))
            a, b, ca, cb = (float(v[0]) for v in _curve_weights(d, np.array([x])))
            coef[int(a)] = coef.get(int(a), 0.0) - ca
            coef[int(b)] = coef.get(int(b), 0.0) - cb
    if not used:
        return None
    k = len(used)
    gap = (sum(means) + sum(c * d.means[j] for j, c in coef.items())) / k
    parts = [(u / k**2, n - 1.0) for u, n in terms] + [((c / k) ** 2 * d.u[j], d.n[j] - 1.0) for j, c in coef.items()]
    return _contrast(gap, parts, tuple(used))


def enough_seeds(*groups: Sequence[float]) -> bool:
    """Whether every group has the :data:`MIN_SEEDS` seeds an interval needs."""
    return all(len(g) >= MIN_SEEDS for g in groups)


def pair_over_budgets(pairs: Sequence[tuple[Sequence[float], Sequence[float]]]) -> OverBudgets | None:
    """Two series head to head over the budgets both ran: the mean over ``pairs`` (``[(a's top-1 per seed, b's),
    ...]``, one per budget, equal FLOPs) of mean(a) - mean(b), as one Welch t-test. Every group is its own seeds, so
    the contrast is a fixed combination of independent means with an exact variance (no curve: the budgets match);
    ``p`` tests "no difference", ``used`` every pair. None without :data:`MIN_SEEDS` seeds in every group.
    Coverage at 3 to 5 seeds: tests/test_saving_interval.py."""
    if not pairs or not all(enough_seeds(a, b) for a, b in pairs):
        return None
    k = len(pairs)
    gap = sum(statistics.mean(a) - statistics.mean(b) for a, b in pairs) / k
    parts = [(statistics.variance(g) / len(g) / k**2, len(g) - 1.0) for pair in pairs for g in pair]
    return _contrast(gap, parts, tuple(range(k)))


def _contrast(gap: float, parts: list[tuple[float, float]], used: tuple[int, ...]) -> OverBudgets:
    """Welch's test of a contrast of independent group means: ``parts`` holds each group's variance term
    (coefficient^2 x s^2 / n) and its dof (n - 1); Welch-Satterthwaite dof for the sum, two-sided p of "it is 0"."""
    var = sum(v for v, _ in parts)
    dof = var**2 / sum(v**2 / f for v, f in parts if v > 0) if var > 0 else math.inf
    p = float(2 * special.stdtr(dof, -abs(gap) / math.sqrt(var))) if var > 0 else float(abs(gap) <= 1e-9)
    return OverBudgets(_gap(float(gap), math.sqrt(var), float(dof)), p, used)


def _gap(gap: float, se: float, dof: float) -> Gap:
    hw = float(special.stdtrit(dof, 1 - ALPHA / 2)) * se if se > 0 else 0.0
    return Gap(float(gap), float(se), float(dof), float(gap - hw), float(gap + hw))


def gap_at_equal_flops(scratch: Scratch, method: Sequence[float], flops: float) -> Gap | None:
    """Top-1 of the method minus scratch's curve at the method's own FLOPs, with its Welch 95% interval.

    None when ``flops`` lies outside scratch's budgets (no extrapolation).
    """
    d = _prepare(scratch, method, flops)
    x = _inside(d, math.log10(d.f))
    if x is None:
        return None
    gap, se, dof, _ = _test(d, x)
    return _gap(gap[0], se[0], dof[0])


def _power_match(d: _Data) -> float | None:
    """F_match on top1 = a - b (F/F_1)^-c fitted to scratch's means; None (and a log line) when it does not fit."""
    if len(d.means) < 3:
        log.warning("curve_spread: power law skipped: it has 3 parameters and scratch has %d budgets", len(d.means))
        return None
    x = np.array(d.flops) / d.flops[0]  # FLOPs ~1e15 would make F^-c underflow; the unit only rescales b
    top, span = float(d.means.max()), float(np.ptp(d.means))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)  # 3 points, 3 parameters: no covariance, which is fine
            (a, b, c), _ = curve_fit(
                lambda x, a, b, c: a - b * x**-c,
                x,
                d.means,
                p0=(top + 1, span + 1, 0.5),
                bounds=([-np.inf, 0, 1e-6], [np.inf, np.inf, 20]),
                maxfev=10000,
            )
    except (RuntimeError, ValueError) as e:
        log.warning("curve_spread: power law skipped: the fit failed (%s)", e)
        return None
    if a <= d.m_mean or b <= 0:
        return None  # the fitted curve never reaches the method's mean
    return float(d.flops[0] * (b / (a - d.m_mean)) ** (1 / c))


def _pchip_match(d: _Data) -> float | None:
    ys = np.maximum.accumulate(d.means)  # the envelope, so the cubic is monotone (PCHIP keeps the data's monotonicity)
    if not ys[0] <= d.m_mean <= ys[-1]:
        return None
    roots = PchipInterpolator(d.log_f, ys).solve(d.m_mean, extrapolate=False)
    roots = roots[np.isfinite(roots)]  # a flat stretch at the mean comes as (start, nan): its start is the root
    return float(10 ** roots.min()) if len(roots) else None  # the first FLOPs that reach it


def curve_spread(scratch: Scratch, method: Sequence[float], flops: float) -> dict[str, float | None]:
    """Point estimate of the saving under other scratch curves, a systematic of the curve model.

    Models: ``loglinear`` (the default curve), ``pchip`` (monotone cubic in log10 FLOPs through the envelope) and
    ``power`` (top1 = a - b F^-c fitted on the means). None where the method's mean is outside a model's curve over
    scratch's range (no model extrapolates), or where the model could not be fitted (logged as a warning).
    """
    d = _prepare(scratch, method, flops)
    lin = matched_flops(list(zip(d.flops, d.means.tolist())), d.m_mean)
    out = {
        "loglinear": lin.flops if lin.status == "matched" else None,
        "pchip": _pchip_match(d),
        "power": _power_match(d),
    }
    return {k: (1.0 - d.f / v if v and _inside(d, math.log10(v)) is not None else None) for k, v in out.items()}
