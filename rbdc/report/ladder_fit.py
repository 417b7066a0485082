"""The width ladder's extrapolation: the saving linear in log2 width at a fixed budget per parameter.

Model: ``saving = a + b log2(width) + c log2(budget per parameter)``, by ordinary least squares over the point
estimates, one per (width, budget). ``b`` is the change per doubling of width *at a fixed budget per parameter*: a
fixed budget in target epochs gives a wider model fewer image-epochs per parameter (4x fewer per doubling of width),
and no budget per parameter is measured at two widths of the ladder (their ranges do not overlap), so the budget term
is what lets the fit compare widths at an equal one. ``c`` is shared by every width (parallel lines): the simplest
model that separates the two.

Unweighted: each point's interval comes from 3-5 seeds, so its width is itself a noisy estimate (a 3-seed variance
varies over a factor ~40 at 95%), and inverse-variance weights would let one lucky, narrow point set the line; the
residual scatter of an unweighted fit measures seed noise and lack of fit alike, and lack of fit (is the saving
really linear in log width?) is what an extrapolation to DeiT-B's width most depends on. The prediction interval is
the t one with n - 3 degrees of freedom; nothing draws random numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import special

from rbdc.errors import UserError

ALPHA = 0.05
MIN_WIDTHS = 3
TERMS = ("intercept", "per doubling of width", "per doubling of budget per parameter")

Points = Sequence[tuple[float, float, float]]  # (width, budget per parameter, saving)


@dataclass(frozen=True)
class Interval:
    estimate: float
    lo: float
    hi: float


@dataclass(frozen=True)
class Fit:
    """Coefficients (a, b, c) of the saving in (1, log2 width, log2 budget per parameter), ``(X'X)^-1``, the residual
    standard deviation and its degrees of freedom, over ``n`` points at ``widths``."""

    coef: tuple[float, float, float]
    xtx_inv: np.ndarray
    resid_sd: float
    dof: int
    n: int
    widths: tuple[float, ...]

    def _t(self) -> float:
        return float(special.stdtrit(self.dof, 1 - ALPHA / 2))

    def coef_interval(self, j: int) -> Interval:
        hw = self._t() * self.resid_sd * math.sqrt(self.xtx_inv[j, j])
        return Interval(self.coef[j], self.coef[j] - hw, self.coef[j] + hw)

    def predict(self, width: float, bpp: float) -> Interval:
        """The fitted saving at ``width`` and budget per parameter ``bpp``, with its 95% prediction interval (a new
        point's estimate lies in it 95% of the time when the model holds)."""
        x = _row(width, bpp)
        est = float(x @ np.array(self.coef))
        hw = self._t() * self.resid_sd * math.sqrt(1.0 + float(x @ self.xtx_inv @ x))
        return Interval(est, est - hw, est + hw)


def _row(width: float, bpp: float) -> np.ndarray:
    return np.array([1.0, math.log2(width), math.log2(bpp)])


def why_not(points: Points) -> str | None:
    """Why the points cannot support the fit (None: they can)."""
    widths = sorted({w for w, _, _ in points})
    if len(widths) < MIN_WIDTHS:
        listed = ", ".join(f"{w:g}" for w in widths) or "none"
        return (
            f"{len(widths)} width(s) have a saving with an interval ({listed}); a line in log width needs "
            f"{MIN_WIDTHS} or more"
        )
    if not any(len({b for w, b, _ in points if w == width}) >= 2 for width in widths):
        return (
            "no width has savings at two budgets, so the budget per parameter (which falls as the width grows at "
            "a fixed budget) cannot be told apart from the width"
        )
    return None


def fit(points: Points) -> Fit:
    """OLS of the saving on (1, log2 width, log2 budget per parameter); see the module doc.

    Raises:
        UserError: the points cannot support it (:func:`why_not`), or a width or budget is not positive.
    """
    if any(not (w > 0 and b > 0 and math.isfinite(s)) for w, b, s in points):
        raise UserError(f"the ladder fit needs positive widths and budgets and finite savings, got {list(points)}")
    why = why_not(points)
    if why:
        raise UserError(f"the points cannot support a fit: {why}")
    x = np.array([_row(w, b) for w, b, _ in points])
    y = np.array([s for _, _, s in points])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    dof = len(y) - x.shape[1]
    resid = y - x @ coef
    sd = math.sqrt(float(resid @ resid) / dof)
    return Fit(
        tuple(float(c) for c in coef), np.linalg.inv(x.T @ x), sd, dof, len(y), tuple(sorted({w for w, _, _ in points}))
    )
