"""``reports/perf.md``'s sections on where the time goes (``time-split``), the levers (``levers``) and the cost model,
called by :mod:`benchmarks.perf_report` for every device JSON that holds those groups.

Figures: ``reports/perf-time-<device JSON stem>.png`` (model FLOP/s against the ViT's width, one line per precision;
the time split of every width's step as stacked bars).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from benchmarks.perf_costmodel import costmodel_section
from benchmarks.time_split import grouped

SPLIT_COLS = [
    ("forward_gemm", "fwd GEMM"),
    ("forward_attention", "fwd attention"),
    ("forward_elementwise", "fwd norm/act/elementwise"),
    ("backward_gemm", "bwd GEMM"),
    ("backward_attention", "bwd attention"),
    ("backward_elementwise", "bwd norm/act/elementwise"),
    ("optimizer", "optimizer + clipping"),
    ("other", "other"),
]
LEVER_WIN = 0.05  # a lever "wins" above 1.05x in the median and above 1x in every pair
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#aec7e8", "#ffbb78", "#98df8a", "#9467bd", "#c7c7c7"]


def busy_ips(b: dict, key: str = "round_busy_s", images: str = "images_per_round") -> float:
    """Images per second on the busy clock (the median round)."""
    e = b["extra_info"]
    return e[images] / float(np.median(e.get(key) or [b["stats"]["median"]]))


def _rows(benches: list[dict]) -> list[dict]:
    """One row per case; img/s, GEMM rate and fraction over the rounds in the machine's fast state (the cost
    model's rule, :func:`rbdc.cost.bench.fast_state`), the wall img/s over all rounds."""
    from rbdc.cost.bench import fast_state

    probes: dict[str, list[float]] = {}
    for b in benches:
        probes.setdefault(b["extra_info"].get("amp", ""), []).extend(b["extra_info"].get("gemm_busy_flops_per_s", []))
    floor = {amp: fast_state(p) for amp, p in probes.items()}
    rows = []
    for b in benches:
        e = b["extra_info"]
        if e.get("family") == "data":
            continue
        busy = e.get("round_busy_s") or [b["stats"]["median"]]
        gemm = e.get("gemm_busy_flops_per_s") or [float("nan")] * len(busy)
        fast = [(t, g) for t, g in zip(busy, gemm) if not g < floor.get(e["amp"], 0.0)]
        state = f"{len(fast)}/{len(busy)}" if fast else f"0/{len(busy)} (all rounds shown)"
        fast = fast or list(zip(busy, gemm))
        step_s, wall_s = float(np.median([t for t, _ in fast])), b["stats"]["median"]
        ips = e["images_per_round"] / step_s
        frac = float(np.median([e["images_per_round"] * e["train_flops_per_image"] / t / g for t, g in fast]))
        rows.append(
            {
                "width": e["width"],
                "family": e["family"],
                "amp": e["amp"],
                "model": e["model"],
                "batch": e["batch"],
                "study": e.get("study"),
                "ips": ips,
                "fast": state,
                "wall_ips": e["images_per_round"] / wall_s,
                "share": float(np.median(busy)) / wall_s,
                "flops": ips * e["train_flops_per_image"],
                "frac": frac,
                "gemm": float(np.median([g for _, g in fast])),
                "split": grouped(e["split_s"]),
                "prof": e["profiled_step_busy_s"] / (step_s / e["steps"]),
                "device_type": e["device_type"],
            }
        )
    return rows


def time_split(benches: list[dict], json_path: Path, figure_dir: Path) -> list[str]:
    """The per-width table of one device, and its figure."""
    rows = _rows(benches)
    gpu = any(r["device_type"] == "cuda" for r in rows)
    unit, scale = ("TFLOP/s", 1e12) if gpu else ("GFLOP/s", 1e9)
    data = [b for b in benches if b["extra_info"].get("family") == "data"]
    clock = "wall (synchronised)" if gpu else "the process's CPU time (the busy clock)"
    out = [
        "### Where the time goes: the study step per width and precision",
        "",
        f"`{json_path.name}`, group `time-split` (`benchmarks/test_bench_time_split.py`; one JSON: `pytest "
        f"benchmarks/test_bench_time_split.py --bench-device={'cuda' if gpu else 'cpu'} --benchmark-json=...`, "
        f"1 thread). The ViT with timm's explicit attention"
        + (", the ResNet channels-last" if not gpu else "")
        + ". *img/s* on "
        + clock
        + ", over the rounds "
        "whose same-precision GEMM probe (1024^3, before each round) found the machine in its fast state (this VM "
        "kind switches for minutes at a time between two: a bf16 GEMM of ~1,100 or ~400 GFLOP/s, fp32 ~150 or "
        "~120, and whole steps slow with it; `rbdc.cost.bench.fast_state` splits the probes at their widest "
        "gap); "
        "*wall img/s*: all rounds on the wall; *core share*: busy over wall time (below 1: other jobs took turns "
        "on the core). *fraction of GEMM*: model FLOP/s over the GEMM probe of the same round. The split: a "
        "profile of 2 further steps (`torch.profiler`, each op's self time, grouped as in "
        "`benchmarks/time_split.py`), as % of the profiled step; *profiled / timed*: the profiled step over "
        "the timed one (the profiler's overhead lands mostly in *other*).",
        "",
    ]
    cols = (
        [
            "width",
            "precision",
            "batch",
            "rounds in the fast state",
            "img/s",
            "wall img/s",
            "core share",
            f"model {unit}",
            f"GEMM {unit}",
            "fraction of GEMM",
        ]
        + [c for _, c in SPLIT_COLS]
        + ["profiled / timed"]
    )
    out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [
            r["width"] + (" (study path)" if r["study"] else ""),
            r["amp"],
            str(r["batch"]),
            r["fast"],
            f"{r['ips']:,.0f}",
            f"{r['wall_ips']:,.0f}",
            f"{r['share']:.2f}",
            f"{r['flops'] / scale:.1f}",
            f"{r['gemm'] / scale:.0f}",
            "n/a" if r["frac"] is None else f"{100 * r['frac']:.1f}%",
        ]
        cells += [f"{100 * r['split'][k]:.0f}%" for k, _ in SPLIT_COLS] + [f"{r['prof']:.2f}"]
        out.append("| " + " | ".join(cells) + " |")
    for b in data:
        out += [
            "",
            f"In-memory loader ({b['extra_info']['source']}, {b['extra_info']['img_size']} px, batch "
            f"{b['extra_info']['batch']}, crop + flip on the training thread): {busy_ips(b):,.0f} img/s "
            f"({1e6 / busy_ips(b):.1f} us per image) on the busy clock.",
        ]
    near = sorted({re.sub(r", \d+%", "", x) for b in benches for x in b["extra_info"].get("beside", [])})
    if near:
        out += [
            "",
            "Running beside the timings (other processes above 20% of a core, per case): "
            + "; ".join(f"`{x}`" for x in near)
            + ".",
        ]
    out += ["", _findings(rows), ""]
    if figure_dir is not None:
        png = figure(rows, Path(figure_dir) / f"perf-time-{json_path.stem}.png", unit, scale)
        out += [f"![FLOP/s against width, and the time split]({png.name})", ""]
    return out


def _findings(rows: list[dict]) -> str:
    """One paragraph of what the table says, from its numbers (the smallest batch's rows)."""
    b0 = min((r["batch"] for r in rows), default=0)
    vit = {(r["amp"], r["width"]): r for r in rows if r["family"] == "vit" and r["batch"] == b0}
    parts = []
    for amp in ("bf16", "fp32"):
        ws = sorted((int(w) for a, w in vit if a == amp))
        if len(ws) >= 2:
            lo, hi = vit[(amp, str(ws[0]))], vit[(amp, str(ws[-1]))]
            gemm = [100 * (r["split"]["forward_gemm"] + r["split"]["backward_gemm"]) for r in (lo, hi)]
            parts.append(
                f"{amp}: width {ws[0]} reaches {lo['flops'] / hi['flops']:.2f}x the model FLOP/s of width "
                f"{ws[-1]}, and GEMMs are {gemm[0]:.0f}% of its step against {gemm[1]:.0f}%"
            )
    both = [w for (a, w) in vit if a == "bf16" and ("fp32", w) in vit]
    if both:
        ratios = ", ".join(
            f"{w}: {vit[('bf16', w)]['ips'] / vit[('fp32', w)]['ips']:.2f}x" for w in sorted(both, key=int)
        )
        parts.append(f"bf16 over fp32 img/s per width: {ratios}")
    return "Read: " + "; ".join(parts) + "." if parts else ""


def figure(rows: list[dict], path: Path, unit: str, scale: float) -> Path:
    """Model FLOP/s vs width (one line per precision; the ResNets, which have no ViT width, as horizontal lines) and
    the split per width as stacked bars, one panel per precision."""
    from matplotlib.figure import Figure

    from rbdc.report.figure import save_png

    amps = [a for a in ("bf16", "fp32") if any(r["amp"] == a for r in rows)]
    fig = Figure(figsize=(5 + 5.5 * len(amps), 4.2), dpi=110)
    axes = fig.subplots(1, 1 + len(amps), gridspec_kw={"width_ratios": [1.0] + [1.25] * len(amps)})
    ax = axes[0]
    for amp, style in zip(amps, ("o-", "s--")):
        vit = sorted(
            (int(r["width"]), r["flops"] / scale)
            for r in rows
            if r["amp"] == amp and r["family"] == "vit" and r["batch"] == min(x["batch"] for x in rows)
        )
        if vit:
            ax.plot(*zip(*vit), style, label=f"ViT {amp}")
        for r, color in zip(
            (r for r in rows if r["amp"] == amp and r["family"] == "resnet"), ("silver", "grey", "black")
        ):
            ax.axhline(
                r["flops"] / scale,
                lw=0.8,
                ls=":" if amp == "fp32" else "-.",
                color=color,
                label=f"ResNet-18 {r['width'].split()[-1]} {amp}",
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ViT width (depth 4, heads of 16, 32 px)" if unit == "GFLOP/s" else "ViT width")
    ax.set_ylabel(f"model {unit} (1 thread)" if unit == "GFLOP/s" else f"model {unit}")
    ax.set_title("training FLOP/s against width", fontsize=9)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    for ax, amp in zip(axes[1:], amps):
        mine = [r for r in rows if r["amp"] == amp]
        bottom = np.zeros(len(mine))
        for (key, label), color in zip(SPLIT_COLS, COLORS):
            vals = np.array([100 * r["split"][key] for r in mine])
            ax.bar(range(len(mine)), vals, bottom=bottom, color=color, label=label, width=0.7)
            bottom += vals
        ax.set_xticks(
            range(len(mine)),
            [r["width"].replace("resnet18 ", "R18") + ("" if r["batch"] == 128 else f"\nb{r['batch']}") for r in mine],
            fontsize=7,
        )
        ax.set_ylabel("% of the profiled step")
        ax.set_title(f"{amp}: where a step's time goes", fontsize=9)
        ax.set_ylim(0, 100)
    axes[-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return save_png(fig, path)


def levers(benches: list[dict], json_path: Path) -> list[str]:
    """One row per lever and width: the median over interleaved pairs of (lever img/s) / (reference img/s)."""
    out = [
        "### Levers on the narrow parts' speed, as ratios to the study path (one run each)",
        "",
        f"`{json_path.name}`, group `levers` (`benchmarks/test_bench_levers.py`, `benchmarks/levers.py`). Each "
        "lever's rounds alternate with its reference's in one process; *ratio*: the median over the pairs of "
        "lever img/s / reference img/s (above 1: the lever is faster), on the busy clock (the threads lever on "
        "the wall), with the range over pairs. Reference: the study path (bf16 autocast, explicit attention, 1 "
        "thread, batch 128 per part); for *batched* and *vmap* the k parts trained one after another.",
        "",
        "| lever | width | parts k | reference img/s | lever img/s | ratio (median over pairs) | range | pairs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    what = {
        "batched": "k parts as one batched model",
        "vmap": "torch.func.vmap over stacked parts",
        "compile": "torch.compile",
        "batch256": "batch 256 (vs 128)",
        "fp32": "fp32 (vs bf16 autocast)",
        "threads": "2 threads x 1 part (vs 1 thread x 2 parts in 2 processes)",
    }
    wins, rest, ratio_of = [], [], []
    for b in benches:
        e = b["extra_info"]
        ref = [e["ref_images_per_round"] / t for t in e["ref_busy_s"]]
        var = [e["images_per_round"] / t for t in e["busy_s"]]
        ratios = [v / r for v, r in zip(var, ref)]
        r = float(np.median(ratios))
        ratio_of.append(r)
        out.append(
            f"| {what.get(e['lever'], e['lever'])} | {e['width']} | {e['k']} | {np.median(ref):,.0f} | "
            f"{np.median(var):,.0f} | {r:.2f}x | {min(ratios):.2f}-{max(ratios):.2f} | {len(ratios)} |"
        )
        (wins if r > 1 + LEVER_WIN and min(ratios) > 1 else rest).append(
            f"{e['lever']} at width {e['width']} ({r:.2f}x)"
        )
    if not any(b["extra_info"]["lever"] == "threads" for b in benches):
        out += [
            "",
            "2 threads x 1 part vs 1 thread x 2 parts in two processes: not measured (`test_threads` needs "
            "both cores and skips while core 0 is busy; the fair study ran there throughout these runs).",
        ]
    threads = {b["extra_info"]["width"]: r for b, r in zip(benches, ratio_of) if b["extra_info"]["lever"] == "threads"}
    if threads:
        slower = all(r < 1 for r in threads.values())
        out += [
            "",
            "Threads: one part on 2 threads reaches "
            + ", ".join(f"{r:.2f}x at width {w}" for w, r in sorted(threads.items()))
            + " of two 1-thread parts in two processes"
            + (
                ", so a level's parts (and a study's runs) go one per core, one thread each (`jobs: 2, threads: 1`)."
                if slower
                else "; the study default (`jobs: 2, threads: 1`) is not the faster path at every width."
            ),
        ]
    out += [
        "",
        f"Faster than the study path by more than {100 * LEVER_WIN:.0f}% in every pair: "
        + (", ".join(wins) if wins else "none")
        + ". Rows come from different runs of the benchmark under "
        "different load (the JSON's `beside` lists the other processes on the cores): read the ratios, not "
        "the img/s across rows. A lever becomes a study's path only after an accuracy check (3 seeds on a "
        "short Imagenette-32 budget): torch.compile passed it ([compile-check32](compile-check32.md): RBDC d1 "
        "at budget 8, compiled vs eager, the same top-1 within seed noise) and the width ladder "
        "(width-ladder32) runs compiled at every width (`compile: true`, recorded in each run's recipe.yaml); "
        "the studies already under way keep their eager path. Batch 256 and fp32 win at width 16 only (RBDC "
        "d2's first level at width 64, a small part of its run): not checked, not defaults. The batched path "
        "for a level's parts is slower than separate parts at widths 32 and 64 and equal at 16: not wired.",
    ]
    return out + [""]


def sections(by_group: dict[str, list[dict]], json_path: Path, figure_dir: Path | None) -> list[str]:
    """Everything this module adds to one device's section of ``reports/perf.md``."""
    out = []
    if "time-split" in by_group:
        out += time_split(by_group["time-split"], json_path, figure_dir)
        out += costmodel_section(by_group["time-split"], json_path)
    if "levers" in by_group:
        out += levers(by_group["levers"], json_path)
    return out
