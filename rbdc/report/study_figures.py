"""The study report's figures: Fig. 2 (top-1 vs training FLOPs per panel, zoomed to the compared methods, baselines
far below in an inset), Fig. 3 (top-1 vs the training ratio beside scratch's band) and the saving vs budget."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from rbdc.units import human_flops

from .colors import figure_colors, series_colors
from .figure import save_png
from .fmt import budget as _budget
from .study import BOUND, PAPER_SAVING, Point, series, recipe_value
from .study_sections import ratio_meaning

FAR_BELOW = 5.0  # top-1 points: a series whose every upper 95% end is this far below scratch's curve goes to the inset
DODGE = 0.025  # share of the panel's width between neighbouring series at one budget: markers side by side
SAVING_LIM = (-45.0, 60.0)  # shows +-40% and the paper's 30%; an interval beyond it ends in an arrow
SCRATCH = "#4d4d4d"
TITLE_WIDTH = 60  # characters of a panel title's line: a longer one reached past its panel into the next
FIG2_NOTE = (
    f"Each panel is zoomed to the compared methods; a series whose every point lies more than "
    f"{FAR_BELOW:g} top-1 points below scratch's curve is drawn in the inset at full scale. Markers at one "
    f"budget are dodged sideways by a few percent of the panel's width to stay apart (their FLOPs agree within "
    f"0.1%: the tables); the ticks are scratch's budgets."
)


def _figure(width: float, height: float):
    # Figure + FigureCanvasAgg instead of pyplot: no global backend switch, no figure manager to leak
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def has_panel_runs(points: dict, spec: dict) -> bool:
    return any(series(points, n) for pn in spec.get("panels", []) for n in (pn["baseline"], *pn["series"]))


def panel_colors(points: dict, spec: dict) -> list[dict[str, tuple[str, str]]]:
    """``(colour, marker)`` of each panel's series with runs, one style per series across the figure
    (:func:`rbdc.report.colors.figure_colors`): a series in two panels looks the same in both."""
    return figure_colors(
        [
            [(n, ps[0].protocol) for n in (pn["baseline"], *pn["series"]) if (ps := series(points, n))]
            for pn in spec.get("panels", [])
        ]
    )


def figures(points: dict, spec: dict, savings: dict, out: Path) -> dict[str, Path]:
    paths = {}
    if has_panel_runs(points, spec):  # no empty axes while only tuning trials have finished
        paths["fig2"] = _fig2(points, spec, out.with_name(out.name + "-fig2.png"))
    if spec.get("ratio"):
        paths["fig3"] = _fig3(points, spec, out.with_name(out.name + "-fig3.png"))
    if savings:
        paths["saving"] = _saving_figure(points, spec, savings, out.with_name(out.name + "-saving.png"))
    return paths


def _curve(scratch: list[Point]):
    """Scratch's mean top-1 at any FLOPs, log-linear between its budgets, flat beyond them."""
    xs, ys = np.log10([s.flops_mean for s in scratch]), np.array([s.mean for s in scratch])
    return lambda f: float(np.interp(np.log10(f), xs, ys))


def _split(scratch: list[Point], named: list[tuple[str, list[Point]]]) -> tuple[list, list]:
    """The series near scratch's curve (the panel's zoom) and those far below it (the inset)."""
    at = _curve(scratch)
    far = [(n, ps) for n, ps in named if all(p.mean + (p.half_width or 0) < at(p.flops_mean) - FAR_BELOW for p in ps)]
    return [x for x in named if x not in far], far


def _draw(ax, named, colors: dict, step: float, scratch_name: str) -> None:
    """Each series' means with their 95% intervals; the series other than scratch ``step`` log2 FLOPs apart at one
    budget (0: not dodged)."""
    others = [n for n, _ in named if n != scratch_name]
    for name, ps in named:
        color, marker = colors[name]
        j = others.index(name) if name in others else None
        shift = 2 ** (step * _slot(j, len(others))) if j is not None else 1.0
        ax.errorbar(
            [p.flops_mean * shift for p in ps],
            [p.mean for p in ps],
            yerr=[p.half_width or 0 for p in ps],
            color=color,
            marker=marker,
            markersize=5.5,
            capsize=2.5,
            label=name,
            linewidth=2.0 if j is None else 1.2,
            zorder=3 if j is None else 4,
        )


def _slot(j: int, n: int) -> int:
    """Sideways slot of the j-th of n series at a budget: ..., -2, -1, +1, +2, ...; slot 0 is scratch's."""
    k = j - n // 2
    return k + 1 if k >= 0 else k


def _window(scratch: list[Point], near: list[tuple[str, list[Point]]]) -> tuple[float, float]:
    """The panel's FLOPs range: the compared series (scratch without them) and half a budget step beyond, widened to
    the scratch budgets that bracket each compared point's top-1 on scratch's curve (the first at or above it, the
    last at or below it, in FLOPs order), so the figure shows where its saving is read; a point above (below)
    scratch's whole curve reaches scratch's last (first) budget, which shows why its saving is a bound."""
    compared = [p for n, ps in near for p in ps] or scratch
    lo, hi = min(p.flops_mean for p in compared) / 1.45, max(p.flops_mean for p in compared) * 1.45
    for p in compared if scratch else ():
        up = next((s for s in scratch if s.mean >= p.mean), scratch[-1])
        down = next((s for s in reversed(scratch) if s.mean <= p.mean), scratch[0])
        hi, lo = max(hi, up.flops_mean * 1.2), min(lo, down.flops_mean / 1.2)
    return lo, hi


def _no_runs(ax) -> None:
    ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _zoom(ax, scratch: list[Point], near: list[tuple[str, list[Point]]], lo: float, hi: float) -> None:
    """Limits: the FLOPs window ``lo``-``hi`` (:func:`_window`) and the compared series' and scratch's top-1 inside
    it; ticks at scratch's budgets inside it, labelled with their FLOPs and budget (one label per budget)."""
    from matplotlib.ticker import FixedLocator, NullLocator

    compared = [p for n, ps in near for p in ps] or scratch
    at = _curve(scratch)
    ys = [at(lo), at(hi)] + [
        v
        for p in [*compared, *(s for s in scratch if lo <= s.flops_mean <= hi)]
        for v in (p.mean - (p.half_width or 0), p.mean + (p.half_width or 0))
    ]
    pad = 0.06 * (max(ys) - min(ys) or 1.0)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(min(ys) - pad, max(ys) + pad)
    ticks = [s for s in scratch if lo <= s.flops_mean <= hi]
    ax.xaxis.set_major_locator(FixedLocator([s.flops_mean for s in ticks]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{human_flops(s.flops_mean, '')}\nb{_budget(s.budget)}" for s in ticks], fontsize=7)


def _inset(ax, scratch_name: str, scratch: list[Point], far: list, colors: dict) -> None:
    """The series far below scratch, at full scale, beside scratch's whole curve."""
    from matplotlib.ticker import NullFormatter

    ins = ax.inset_axes([0.60, 0.08, 0.38, 0.36])
    _draw(ins, [(scratch_name, scratch), *far], colors, 0.0, scratch_name)
    ins.set_xscale("log")
    ins.xaxis.set_minor_formatter(NullFormatter())
    ins.tick_params(labelsize=6)
    ins.set_xticks([s.flops_mean for s in scratch], [f"b{_budget(s.budget)}" for s in scratch])
    ins.set_title("far below scratch (full scale)", fontsize=7)
    ins.legend(fontsize=5.5, loc="lower right")
    ins.grid(True, alpha=0.3)


def _fig2(points: dict, spec: dict, path: Path) -> Path:
    panels = spec.get("panels", [])
    fig = _figure(5.6 * len(panels), 4.8)
    styles = panel_colors(points, spec)
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        colors = styles[i]
        scratch = series(points, panel["baseline"])
        named = [(n, ps) for n in panel["series"] if (ps := series(points, n))]
        near, far = _split(scratch, named) if len(scratch) >= 2 else (named, [])
        drawn = ([(panel["baseline"], scratch)] if scratch else []) + near
        if not drawn:  # a study under way: say so, not an empty 0-1 frame
            _no_runs(ax)
        lo, hi = _window(scratch, near) if drawn else (1.0, 2.0)
        # a step in share of the panel's log width: a fixed log2 step vanished on panels spanning 16x of FLOPs
        _draw(ax, drawn, colors, DODGE * np.log2(hi / lo), panel["baseline"])
        if scratch:
            _zoom(ax, scratch, near, lo, hi)
        if far:
            _inset(ax, panel["baseline"], scratch, far, colors)
        ax.set_xlabel("total training FLOPs (ticks: scratch's budgets, target epochs)", fontsize=8)
        ax.set_ylabel("final top-1 (%), mean ± 95% CI over seeds", fontsize=8)
        ax.set_title(textwrap.fill(panel["title"], TITLE_WIDTH), fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return save_png(fig, path)


def _fig3(points: dict, spec: dict, path: Path) -> Path:
    """Top-1 against the training ratio at one budget, scratch's mean and 95% band at that budget behind it; each
    tick names the ratio and the epochs per level it gives."""
    r = spec["ratio"]
    rows = sorted(
        (p for name in r["points"] for p in series(points, name) if p.budget == r["budget"]),
        key=lambda p: recipe_value(p, r["key"]),
    )
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot()
    base = r.get("baseline") or next(
        (pn["baseline"] for pn in spec.get("panels", []) if set(pn["series"]) & set(r["points"])), None
    )
    ref = [s for s in series(points, base) if s.budget == r["budget"]] if base else []
    if ref:
        s = ref[0]
        hw = s.half_width or 0.0
        ax.axhspan(s.mean - hw, s.mean + hw, color=SCRATCH, alpha=0.15, linewidth=0)
        ax.axhline(s.mean, color=SCRATCH, linewidth=1.5, label=f"{base} at budget {r['budget']:g} (mean, 95% CI)")
    if rows:
        color, marker = series_colors([(rows[0].point, rows[0].protocol)])[rows[0].point]
        xs = [recipe_value(p, r["key"]) for p in rows]
        ax.errorbar(
            xs,
            [p.mean for p in rows],
            yerr=[p.half_width or 0 for p in rows],
            color=color,
            marker=marker,
            capsize=3,
            label=f"RBDC, {r['key']} = r",
        )
        ax.set_xticks(xs, [f"{x:g}\n{p.label()}" for x, p in zip(xs, rows)], fontsize=7)
        ax.set_xlabel(
            f"training ratio r: {ratio_meaning(rows[0], r['key'])}\n(under each r: epochs per level)", fontsize=8
        )
    ax.set_ylabel("final top-1 (%), mean ± 95% CI over seeds", fontsize=8)
    ax.set_title(f"RBDC at budget {r['budget']:g} target epochs: every point at the same FLOPs", fontsize=9)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return save_png(fig, path)


def _saving_figure(points: dict, spec: dict, savings: dict, path: Path) -> Path:
    """The saving vs budget, one panel per model (the report's panels), each series dodged sideways; a series whose
    every saving lies off the axis is named under the panel instead of drawn."""
    styles = panel_colors(points, spec)
    panels = [(pn, [n for n in pn["series"] if n in savings], st) for pn, st in zip(spec.get("panels", []), styles)]
    panels = [(pn, names, st) for pn, names, st in panels if names]
    fig = _figure(5.6 * len(panels), 4.2)
    for k, (panel, names, colors) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        off = []
        for j, name in enumerate(names):
            rows = savings[name]
            if all(not SAVING_LIM[0] <= 100 * s["saving"] <= SAVING_LIM[1] for _, s in rows):
                values = ", ".join(BOUND.get(s["status"], "") + f"{100 * s['saving']:+.0f}%" for _, s in rows)
                off.append(f"{name} ({values})")
                continue
            _saving_series(ax, rows, colors[name], name, SAVING_LIM, dodge=2 ** (0.12 * (j - (len(names) - 1) / 2)))
        budgets = sorted({p.budget for n in names for p, _ in savings[n] if p.budget is not None})
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [_budget(b) for b in budgets])
        ax.set_xlim(min(budgets) / 1.5, max(budgets) * 1.5)
        ax.set_ylim(*SAVING_LIM)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.axhline(100 * PAPER_SAVING, color="gray", linestyle="--", linewidth=0.8, label="paper: 30%")
        ax.set_title(textwrap.fill(panel["title"], TITLE_WIDTH), fontsize=9)
        ax.set_xlabel("budget (target epochs)" + ("\noff the axis: " + "; ".join(off) if off else ""), fontsize=8)
        ax.set_ylabel("saving vs scratch at equal top-1 (%)\n95% interval; hollow: a bound" if k == 0 else "")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the panel: arrows reach the top
    fig.tight_layout()
    return save_png(fig, path)


def _saving_series(ax, rows, style: tuple[str, str], name: str, lim: tuple[float, float], dodge: float) -> None:
    """One series of the saving figure (:func:`saving_mark` at each budget, dodged sideways)."""
    color, marker = style
    for i, (p, s) in enumerate(rows):
        saving_mark(ax, p.budget * dodge, s, color, marker, name if i == 0 else None, lim)


def saving_mark(ax, x: float, s: dict, color: str, marker: str, label: str | None, lim=SAVING_LIM) -> None:
    """One saving at ``x``: its estimate (hollow: a bound, the point is outside scratch's range) with its interval
    clipped to ``lim``; an end that is open or beyond ``lim`` is an arrow. An estimate beyond ``lim`` is not drawn
    at the edge, where it would read as a value there: the edge carries its value as text instead."""
    lo, hi = (max(min(100 * v, lim[1]), lim[0]) for v in (s["lo"], s["hi"]))
    ax.plot([x, x], [lo, hi], color=color, linewidth=1.2)
    for end, edge, arrow in ((lo, lim[0], "v"), (hi, lim[1], "^")):
        # an arrow sits on the axis' edge: unclipped, or its outer half (its point) is cut off
        ax.plot([x], [end], color=color, marker=arrow if end == edge else "_", markersize=7, clip_on=end != edge)
    y = 100 * s["saving"]
    face = "white" if s["status"] != "matched" else color
    if lim[0] <= y <= lim[1]:
        ax.plot([x], [y], color=color, marker=marker, markersize=6, markerfacecolor=face, label=label)
        return
    ax.plot([], [], color=color, marker=marker, markersize=6, markerfacecolor=face, label=label)  # legend only
    inside = lim[1] - 0.04 * (lim[1] - lim[0]) if y > lim[1] else lim[0] + 0.04 * (lim[1] - lim[0])
    ax.annotate(
        f"{BOUND.get(s['status'], '')}{y:+.0f}%",
        (x, inside),
        xytext=(4, 0),
        textcoords="offset points",
        fontsize=6.5,
        color=color,
        va="center",
    )
