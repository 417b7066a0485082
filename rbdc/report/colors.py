"""One colour table for every report figure, read from the protocol registry.

A protocol's first series in a figure panel takes the protocol's registered colour (``Protocol.color``); a second
series of the same protocol (RBDC depth 2 beside depth 1, an ablation) takes the next spare colour, one no registered
protocol uses, and every series of a panel its own marker, so no two series of a panel look alike.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from rbdc import protocols

# tab10's and tab20's colours, in the order spare colours are handed out (any a protocol registers is skipped)
PALETTE = ("#17becf", "#e377c2", "#bcbd22", "#393b79", "#ff9896", "#98df8a", "#c5b0d5", "#7f7f7f")
MARKERS = ("o", "s", "D", "P", "X", "h", "p", "*")  # no triangles: the saving figure's arrows are triangles


def registered() -> dict[str, str]:
    """Each registered protocol's colour."""
    return {name: p.color for name, p in protocols.registry().items()}


def spare() -> list[str]:
    """The palette's colours that no registered protocol uses, in order."""
    used = set(registered().values())
    return [c for c in PALETTE if c not in used]


def protocol_colors(names: Iterable[str]) -> dict[str, str]:
    """A colour per protocol: registered ones their own, others (runs of other code) spare colours by name."""
    colors = registered()
    free = spare()
    for i, p in enumerate(sorted(p for p in set(names) if p not in colors)):
        colors[p] = free[i % len(free)]
    return colors


def series_colors(series: Sequence[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """``(colour, marker)`` of each ``(series name, protocol)`` of one panel, in order: the first series of a
    protocol takes its registered colour, later ones (and unregistered protocols) spare colours; markers by
    position."""
    colors, free, out, taken = registered(), iter(spare()), {}, set()
    for i, (name, protocol) in enumerate(series):
        color = colors.get(protocol)
        if color is None or color in taken:
            color = next(free, "#000000")
        taken.add(color)
        out[name] = (color, MARKERS[i % len(MARKERS)])
    return out
