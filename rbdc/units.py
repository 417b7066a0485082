"""Human units for what the suite prints: FLOPs with SI prefixes (T, P, E), durations as h:mm:ss."""

from __future__ import annotations

import math

_PREFIXES = ((1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def human_flops(flops: float, unit: str = "FLOPs") -> str:
    """``2.83e19`` -> ``'28.3 EFLOPs'``; three significant digits."""
    if not math.isfinite(flops):
        return f"{flops} {unit}"
    for scale, prefix in _PREFIXES:
        if abs(flops) >= scale:
            return f"{flops / scale:.3g} {prefix}{unit}"
    return f"{flops:.3g} {unit}"


def human_time(seconds: float) -> str:
    """``75`` -> ``'1:15'``, ``3725`` -> ``'1:02:05'``, ``90061`` -> ``'1 d 1:01:01'``."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(max(seconds, 0)))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    text = f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
    return f"{d} d {text}" if d else text
