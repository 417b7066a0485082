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
    position (:func:`figure_colors` of a one-panel figure)."""
    return figure_colors([series])[0]


def figure_colors(panels: Sequence[Sequence[tuple[str, str]]]) -> list[dict[str, tuple[str, str]]]:
    """``(colour, marker)`` of each ``(series name, protocol)`` of each panel of one figure. The first panel is
    styled as :func:`series_colors` does; a series already shown in an earlier panel keeps its style, so a colour
    means one series across the figure; a new series takes its protocol's registered colour where its panel has
    not used it, else a spare colour no series of the figure has. Markers: a panel whose first series (its
    reference) is new to the figure is another model's, and its series take their positions' markers, so ResNet's
    scratch and d1 look like ViT's; a panel on a reference already shown (an ablation) gives a new series a marker
    no series of the figure has yet (the copies ablation must not look like RBDC d2 of the ViT panel), falling back
    to one its panel has not used."""
    colors, spares, named, out = registered(), spare(), {}, []
    used_spares: set[str] = set()
    for panel in panels:
        ablation = bool(panel) and panel[0][0] in named
        style: dict[str, tuple[str, str]] = {}
        new = [(i, n, p) for i, (n, p) in enumerate(panel) if n not in named]
        style.update({n: named[n] for n, _ in panel if n in named})
        for i, name, protocol in new:
            taken = {c for c, _ in style.values()}
            color = colors.get(protocol)
            if color is None or color in taken:
                color = next((c for c in spares if c not in used_spares and c not in taken), "#000000")
                used_spares.add(color)
            marks = {m for _, m in style.values()}
            seen = marks | ({m for _, m in named.values()} if ablation else set())
            marker = MARKERS[i % len(MARKERS)]
            if marker in seen:
                marker = next((m for m in MARKERS if m not in seen), None) or next(
                    (m for m in MARKERS if m not in marks), marker
                )
            style[name] = named[name] = (color, marker)
        out.append({n: style[n] for n, _ in panel})
    return out
