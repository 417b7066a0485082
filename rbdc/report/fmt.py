"""Formatting shared by every report (runs, studies, detection studies): one ``±`` formatter, budgets, p-values,
signed percentages and paths relative to a report."""

from __future__ import annotations

import os
from pathlib import Path

DASH = "–"


def pm(mean: float | None, spread: float | None, digits: int = 2, missing: str | None = None) -> str:
    """``mean ± spread`` with ``digits`` decimals. Without a spread: the mean alone, or ``mean ± missing`` where a
    table column shows that the spread is unknown (one seed); without a mean: a dash."""
    if mean is None:
        return DASH
    m = f"{mean:.{digits}f}"
    if spread is None:
        return m if missing is None else f"{m} ± {missing}"
    return f"{m} ± {spread:.{digits}f}"


def budget(b) -> str:
    """A budget in target epochs (``-`` for a point without one)."""
    return "-" if b is None else f"{b:g}"


def p_value(p: float | None, stated: bool = False) -> str:
    """``0.004`` / ``< 0.001`` in a table cell; ``stated``: as a sentence says it, ``p = 0.004`` / ``p < 0.001``."""
    if p is None:
        return DASH
    text = "< 0.001" if p < 0.001 else f"{p:.3f}"
    return f"p {text if p < 0.001 else '= ' + text}" if stated else text


def opt(v: float | None, digits: int = 2) -> str:
    return DASH if v is None else f"{v:.{digits}f}"


def signed_pct(v: float, digits: int = 1) -> str:
    """A fraction as a signed percentage: 0.118 -> ``+11.8%``; a value that rounds to zero is ``+0.0%`` (a bound
    of -0.0001% at the edge of scratch's range must not read as "-0.0%")."""
    x = round(100 * v, digits)
    return f"{x if x != 0 else 0.0:+.{digits}f}%"


def rel(path, base) -> str:
    """``path`` relative to ``base`` (the report's folder), so a report does not depend on where it was made."""
    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()
