"""The width ladder report's figures, in the study report's style (:mod:`rbdc.report.study_figures`): the saving vs
width at the matched budgets, the saving vs budget per parameter coloured by width (both with the fit and its 95%
prediction band where the points support one), and the coupled model before training and the narrow stages' speed
vs width."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from . import ladder_fit
from .colors import MARKERS, series_colors
from .figure import save_png
from .ladder import DEIT_B, MATCHED, Rung, fit_points, shape
from .ladder_sections import coupled_rows, speeds
from .study import PAPER_SAVING
from .study_figures import SAVING_LIM, _figure, saving_mark

DODGE = 0.12  # log2 width between the matched budgets' markers at one width: side by side, not on top
GRID = (64, 80, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768)  # widths the fit is drawn at (heads of 16)


def width_colors(widths) -> dict[int, str]:
    """One colour per width, light to dark along viridis, so the order of widths reads from the colour."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    ws = sorted(set(widths))
    return {w: to_hex(colormaps["viridis"](0.85 * (1 - i / max(1, len(ws) - 1)))) for i, w in enumerate(ws)}


def budget_styles() -> dict[float, tuple[str, str]]:
    """``(colour, marker)`` of each matched budget: RBDC's registered colour first, then a spare one."""
    styles = series_colors([(f"b{b}", "rbdc") for b in MATCHED])
    return {b: styles[f"b{b}"] for b in MATCHED}


def figures(rungs: list[Rung], out: Path) -> dict[str, Path]:
    rows = [(r, row) for r in rungs for row in r.rows if row.s is not None]
    pts = fit_points(rungs)
    fit = None if ladder_fit.why_not(pts) else ladder_fit.fit(pts)
    paths = {}
    if any(row.point.budget in MATCHED for _, row in rows):
        paths["width"] = _width_figure(rungs, rows, fit, out.with_name(out.name + "-width.png"))
    if rows:
        paths["budget"] = _budget_figure(rungs, rows, fit, out.with_name(out.name + "-budget.png"))
    if coupled_rows(rungs) or speeds(rungs):
        paths["coupling"] = _coupling_figure(rungs, out.with_name(out.name + "-coupling.png"))
    return paths


def _band(ax, xs, ivs, color: str, label: str, dashed: bool, alpha: float = 0.12) -> None:
    ax.plot(
        xs,
        [100 * iv.estimate for iv in ivs],
        color=color,
        linestyle="--" if dashed else "-",
        linewidth=1.0,
        label=label,
    )
    ax.fill_between(
        xs, [100 * iv.lo for iv in ivs], [100 * iv.hi for iv in ivs], color=color, alpha=alpha, linewidth=0, zorder=0
    )


def _frame(ax, xlabel: str) -> None:
    ax.set_ylim(*SAVING_LIM)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axhline(100 * PAPER_SAVING, color="gray", linestyle="--", linewidth=0.8, label="paper: 30%")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("saving vs scratch at equal top-1 (%)\n95% interval; hollow: a bound", fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _width_figure(rungs: list[Rung], rows, fit, path: Path) -> Path:
    fig = _figure(7.6, 4.4)
    ax = fig.add_subplot()
    styles = budget_styles()
    widest = rungs[-1]
    for j, b in enumerate(MATCHED):
        color, marker = styles[b]
        dodge = 2 ** (DODGE * (j - (len(MATCHED) - 1) / 2))
        at = [(r, row) for r, row in rows if row.point.budget == b]
        for i, (r, row) in enumerate(at):
            saving_mark(ax, r.width * dodge, row.s, color, marker, f"RBDC d1, {b} target epochs" if i == 0 else None)
        if fit is not None:
            grid = [w for w in GRID if w >= rungs[0].width]
            ivs = [fit.predict(w, b * widest.train_images / shape(widest.model, w)[1]) for w in grid]
            _band(ax, grid, ivs, color, f"fit at {b} target epochs (95% prediction band)", dashed=True)
    if fit is not None:
        ax.axvline(max(fit.widths), color="gray", linestyle=":", linewidth=0.8)
        ax.text(max(fit.widths) * 1.04, SAVING_LIM[0] + 2, "extrapolated →", fontsize=7, color="gray")
    ticks = sorted({r.width for r in rungs} | {DEIT_B.width})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(w) for w in ticks])
    ax.set_xlim(ticks[0] / 1.25, ticks[-1] * 1.25)
    ax.set_title("The saving vs width at matched budgets (Imagenette, 32 px, depth 4)", fontsize=9)
    _frame(ax, "width (embedding dimension)" + ("; the fit's band continues to DeiT-B's width" if fit else ""))
    fig.tight_layout()
    return save_png(fig, path)


def _budget_figure(rungs: list[Rung], rows, fit, path: Path) -> Path:
    fig = _figure(7.8, 4.6)
    ax = fig.add_subplot()
    colors = width_colors([*(r.width for r in rungs), DEIT_B.width])
    seen = set()
    for r, row in rows:
        marker = MARKERS[[x.width for x in rungs].index(r.width) % len(MARKERS)]
        saving_mark(ax, row.bpp, row.s, colors[r.width], marker, None if r.width in seen else f"width {r.width}")
        seen.add(r.width)
    lo = min(row.bpp for _, row in rows) / 2
    if fit is not None:
        for r in rungs:
            xs = [row.bpp for row in r.rows if row.fits]
            if xs:
                grid = np.geomspace(min(xs) / 1.4, max(xs) * 1.4, 20)
                _band(
                    ax,
                    grid,
                    [fit.predict(r.width, x) for x in grid],
                    colors[r.width],
                    f"fit at width {r.width}",
                    dashed=False,
                )
        grid = np.geomspace(lo, DEIT_B.bpp * 1.3, 40)
        _band(
            ax,
            grid,
            [fit.predict(DEIT_B.width, x) for x in grid],
            colors[DEIT_B.width],
            f"fit at width {DEIT_B.width} (95% prediction band)",
            dashed=True,
            alpha=0.06,
        )
        iv = fit.predict(DEIT_B.width, DEIT_B.bpp)
        saving_mark(
            ax,
            DEIT_B.bpp,
            {"saving": iv.estimate, "lo": iv.lo, "hi": iv.hi, "status": "matched"},
            "black",
            "D",
            f"{DEIT_B.name} predicted: {100 * iv.estimate:+.0f}% [{100 * iv.lo:+.0f}%, {100 * iv.hi:+.0f}%] (95% PI)",
        )
    ax.axvline(DEIT_B.bpp, color="black", linestyle=":", linewidth=0.8)
    ax.text(  # right of the line: the measured budgets lie left of it and reach close (width 64 at b64: 2.9)
        DEIT_B.bpp * 1.08,
        SAVING_LIM[0] + 2,
        f"{DEIT_B.name}, {DEIT_B.epochs:g} ImageNet epochs",
        fontsize=7,
        rotation=90,
        va="bottom",
        ha="left",
    )
    ax.set_xscale("log")
    ax.set_xlim(lo, DEIT_B.bpp * 2)
    _plain_log_ticks(ax)
    ax.set_title("The saving vs budget per parameter, by width", fontsize=9)
    _frame(ax, "budget per parameter (image-epochs per parameter: target epochs × train images / parameters)")
    fig.tight_layout()
    return save_png(fig, path)


def _plain_log_ticks(ax) -> None:
    """The log x axis' labels written as plain numbers, at 1, 2 and 5 of each decade on a short axis and at the
    decades on a long one (its limits set): matplotlib's default labels the minor ticks of an axis spanning under
    ~1.5 decades, and its "3×10⁻¹ 4×10⁻¹" ran into each other."""
    lo, hi = ax.get_xlim()
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if np.log10(hi / lo) <= 2 else (1.0,)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _coupling_figure(rungs: list[Rung], path: Path) -> Path:
    fig = _figure(11.0, 4.8)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    rows, styles = coupled_rows(rungs), budget_styles()
    for b in MATCHED:
        color, marker = styles[b]
        at = sorted((w, part, before) for w, b_, _, _, part, before in rows if b_ == b)
        if at:
            left.plot(
                [w for w, _, _ in at],
                [v for _, _, v in at],
                color=color,
                marker=marker,
                label=f"coupled, before training ({b} target epochs)",
            )
            parts = [(w, p) for w, p, _ in at if p is not None]
            left.plot(
                [w for w, _ in parts],
                [p for _, p in parts],
                color=color,
                marker=marker,
                linestyle="--",
                markerfacecolor="white",
                label=f"its parts' final top-1 ({b} target epochs)",
            )
    left.set_ylabel("top-1 (%), mean over seeds", fontsize=8)
    left.set_title("The coupled model before training (plain LayerNorm)", fontsize=9)
    fast = speeds(rungs)
    kinds = list(dict.fromkeys(k for k, _, _ in fast))
    kind_styles = series_colors([(k, "rbdc") for k in kinds])
    for i, kind in enumerate(kinds):  # one series per CPU kind, dodged so equal widths stand apart
        at = [(w, v) for k, w, v in fast if k == kind]
        med = [float(np.median(v)) for _, v in at]
        err = [[m - min(v) for m, (_, v) in zip(med, at)], [max(v) - m for m, (_, v) in zip(med, at)]]
        right.errorbar(
            [w * 2 ** (DODGE * (i - (len(kinds) - 1) / 2)) for w, _ in at],
            med,
            yerr=err,
            color=kind_styles[kind][0],
            marker=kind_styles[kind][1],
            capsize=3,
            label=f"{kind}: median over RBDC runs (range)",
        )
    right.axhline(1.0, color="black", linewidth=0.8, label="as fast as the full model")
    right.set_ylabel("narrow stages' FLOP/s ÷ target stage's", fontsize=8)
    right.set_title("The narrow parts' speed relative to the full model", fontsize=9)
    ticks = sorted({r.width for r in rungs})
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(w) for w in ticks])
        ax.set_xlim(ticks[0] / 1.25, ticks[-1] * 1.25)
        ax.set_xlabel("width (embedding dimension)", fontsize=8)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # under the panel: inside, it covered the lines it names
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.tight_layout()
    return save_png(fig, path)
