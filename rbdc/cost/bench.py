"""The ``time-split`` benchmark (``benchmarks/test_bench_time_split.py``) as the cost model's fit rows: seconds per
image in the machine's fast state, the forward's share of a profiled step, the in-memory loader's seconds."""

from __future__ import annotations

import numpy as np

STATE_GAP = 1.1  # two GEMM-rate clusters further apart than this ratio are two states of the machine


def fast_state(rates) -> float:
    """The GEMM rate above which a probe is in the machine's fast state: the middle of the widest gap between
    sorted rates when that gap is wider than :data:`STATE_GAP` (this VM kind switches for minutes at a time
    between a bf16 GEMM of ~1,100 and of ~400 GFLOP/s, and whole steps slow down with it), else 0 (one state)."""
    r = np.sort(np.log(np.asarray(rates, dtype=float)))
    if len(r) < 2:
        return 0.0
    i = int(np.argmax(np.diff(r)))
    return float(np.exp((r[i] + r[i + 1]) / 2)) if r[i + 1] - r[i] > np.log(STATE_GAP) else 0.0


def bench_rows(bench: dict) -> tuple[list[dict], dict[str, float]]:
    """The ``time-split`` rows of a pytest-benchmark JSON as fit rows (seconds per image on the busy clock: on a
    CPU the process's CPU time, on a GPU the wall), and the in-memory loader's seconds per image by image size.

    Only rounds whose same-precision GEMM probe is in the fast state (:func:`fast_state`, per precision over the
    whole JSON) count; a row without such rounds is left out (``rounds_used`` says how many counted)."""
    benches = [b for b in bench.get("benchmarks", []) if b.get("group") == "time-split"]
    probes: dict[str, list[float]] = {}
    for b in benches:
        probes.setdefault(b["extra_info"].get("amp", ""), []).extend(b["extra_info"].get("gemm_busy_flops_per_s", []))
    floor = {amp: fast_state(p) for amp, p in probes.items()}
    rows, data = [], {}
    for b in benches:
        e = b["extra_info"]
        busy = e.get("round_busy_s") or [b["stats"]["median"]]
        if e.get("family") == "data":
            data[str(e["img_size"])] = float(np.median(busy)) / e["images_per_round"]
            continue
        gemm = e.get("gemm_busy_flops_per_s") or [float("inf")] * len(busy)
        fast = [t for t, g in zip(busy, gemm) if g >= floor.get(e["amp"], 0.0)]
        if fast:
            rows.append(
                {
                    "model": e["model"],
                    "img_size": e["img_size"],
                    "batch": e["batch"],
                    "amp": e["amp"],
                    "family": e.get("family", ""),
                    "width": e.get("width", ""),
                    "rounds_used": len(fast),
                    "s_per_image": float(np.median(fast)) / e["images_per_round"],
                    "forward_fraction": forward_fraction(e.get("split_s")),
                }
            )
    return rows, data


def forward_fraction(split: dict | None) -> float | None:
    """The forward's share of a profiled training step (``time_split``'s ``split_s``: its ops' self time over the
    forward's, backward's and optimizer's; the untracked wall left out), None without a profile."""
    if not split:
        return None
    t = {ph: sum(split.get(ph, {}).values()) for ph in ("forward", "backward", "optimizer")}
    total = sum(t.values())
    return t["forward"] / total if total > 0 else None
