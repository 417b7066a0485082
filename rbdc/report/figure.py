"""The run report's figure: eval top-1 per epoch vs cumulative training FLOPs, one line per run, coloured by
protocol; writing any report figure (:func:`save_png`)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Sequence

from rbdc.runs.rundir import atomic_write

from .colors import protocol_colors
from .load import Run
from .stats import GroupRow, _protocol_rank

__all__ = ["save_png", "protocol_colors", "run_segments"]

MODEL_STYLES = ("-", "--", "-.", (0, (5, 1, 1, 1)))  # one per model; ':' is kept for the narrow parts
PART_STYLE = ":"


def save_png(fig, path: Path) -> Path:
    """Write a matplotlib figure as PNG, atomically; no Software/date chunks, so the bytes depend only on the data
    and the matplotlib version."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png", metadata={"Software": None}))


def run_segments(run: Run) -> list[tuple[str, list[float], list[float], bool]]:
    """``(stage, x, top-1, is_part)`` per stage of a run, for drawing.

    The parts of one level (RBDC's narrow models, trained independently; levels from the run's manifest) are drawn
    side by side over the level's FLOPs: a part's epoch sits at the level's start plus k times the part's own FLOPs
    so far (k parts), so every part spans the whole level and ends where the coupled model starts. Drawn one after
    another on the ledger's cumulative FLOPs, the second part would look like the lineage dropping back to a fresh
    model's accuracy. A level of one stage is the lineage itself, on the cumulative FLOPs.
    """
    levels = run.levels()
    siblings: dict[int, list[str]] = {}
    for stage in dict.fromkeys(s for s, _, _ in run.curve):
        siblings.setdefault(levels.get(stage, -1), []).append(stage)
    start: dict[str, float] = {}
    before = 0.0
    for stage, flops, _ in run.curve:
        start.setdefault(stage, before)
        if math.isfinite(flops):
            before = flops
    out: dict[str, tuple[str, list[float], list[float], bool]] = {}
    for stage, flops, top1 in run.curve:
        if not (flops > 0 and math.isfinite(top1)):
            continue
        group = siblings[levels.get(stage, -1)] if stage in levels else [stage]
        k = len(group)
        x = flops if k == 1 else start[group[0]] + k * (flops - start[stage])
        seg = out.setdefault(stage, (stage, [], [], k > 1))
        seg[1].append(x)
        seg[2].append(top1)
    return list(out.values())


def _plot(rows: Sequence[GroupRow], path: Path, title: str, baseline_protocol: str) -> None:
    # Figure + FigureCanvasAgg instead of pyplot: no global backend switch, no figure manager to leak
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    colors = protocol_colors(g.protocol for g in rows)
    models = sorted({g.model for g in rows})
    styles = {m: MODEL_STYLES[i % len(MODEL_STYLES)] for i, m in enumerate(models)}
    fig = Figure(figsize=(8.0, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    parts = False
    for g in rows:
        color, style = colors[g.protocol], styles[g.model]
        for run in g.runs:
            for i, (_, xs, ys, part) in enumerate(run_segments(run)):
                parts |= part
                ax.plot(
                    xs,
                    ys,
                    color=color,
                    linestyle=PART_STYLE if part else style,
                    linewidth=1.0 if part else 1.3,
                    alpha=0.6 if part else 0.8,
                )
                if i > 0 and not part:
                    ax.plot(xs[:1], ys[:1], linestyle="none", marker="D", markersize=4, color=color)
        if g.flops_mean > 0:
            ax.errorbar(
                [g.flops_mean],
                [g.top1_mean],
                yerr=[g.top1_std or 0.0],
                color=color,
                marker="s",
                markersize=6,
                markeredgecolor="black",
                capsize=3,
                linestyle="none",
                zorder=3,
            )
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short ranges
    ax.set_xlabel(
        "cumulative training FLOPs (narrow parts: side by side over their level's FLOPs)"
        if parts
        else "cumulative training FLOPs"
    )
    ax.set_ylabel("eval top-1 (%)")
    ax.set_title(textwrap.fill(title, 70), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(
        handles=_legend(rows, colors, styles, baseline_protocol, parts),
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
    )
    fig.tight_layout()
    save_png(fig, path)


def _legend(rows, colors: dict, styles: dict, baseline_protocol: str, parts: bool) -> list:
    from matplotlib.lines import Line2D

    present = [
        p
        for p in sorted(colors, key=lambda p: _protocol_rank(p, baseline_protocol))
        if any(g.protocol == p for g in rows)
    ]
    handles = [Line2D([], [], color=colors[p], label=p) for p in present]
    if len(styles) > 1:
        handles += [Line2D([], [], color="black", linestyle=s, label=m) for m, s in styles.items()]
    if parts:
        handles.append(Line2D([], [], color="gray", linestyle=PART_STYLE, label="narrow parts of a level"))
    handles += [
        Line2D([], [], color="gray", marker="D", linestyle="none", markersize=4, label="coupled / grown model"),
        Line2D([], [], color="gray", marker="s", markeredgecolor="black", linestyle="none", label="final mean ± std"),
    ]
    return handles
