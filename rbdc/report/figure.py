"""The figure: eval top-1 per epoch vs cumulative training FLOPs, one line per run, coloured by protocol."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Iterable, Sequence

from rbdc import protocols
from rbdc.rundir import atomic_write

from .stats import GroupRow, _protocol_rank


# colours of the protocols that are not registered (runs of other code); registered ones bring their own
EXTRA_COLORS = ('#8c564b', '#e377c2', '#17becf', '#bcbd22', '#7f7f7f')


def save_png(fig, path: Path) -> Path:
    """Write a matplotlib figure as PNG, atomically; no Software/date chunks, so the bytes depend only on the data
    and the matplotlib version."""
    return atomic_write(path, lambda f: fig.savefig(f, format='png', metadata={'Software': None}))


def protocol_colors(names: Iterable[str]) -> dict[str, str]:
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

    colors = protocol_colors(g.protocol for g in rows)
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
    save_png(fig, path)
