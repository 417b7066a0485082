"""``reports/perf.md``'s sections on where the time goes (``time-split``), the levers (``levers``) and the cost model,
called by :mod:`benchmarks.perf_report` for every device JSON that holds those groups.

Figures: ``reports/perf-time-<device JSON stem>.png`` (model FLOP/s against the ViT's width, one line per precision;
the time split of every width's step as stacked bars).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

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
TARGET = 0.10  # the cost model's target error against the runs' stage walls
LEVER_WIN = 0.05  # a lever "wins" above 1.05x in the median and above 1x in every pair
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#aec7e8", "#ffbb78", "#98df8a", "#9467bd", "#c7c7c7"]


def busy_ips(b: dict, key: str = "round_busy_s", images: str = "images_per_round") -> float:
    """Images per second on the busy clock (the median round)."""
    e = b["extra_info"]
    return e[images] / float(np.median(e.get(key) or [b["stats"]["median"]]))


def _rows(benches: list[dict]) -> list[dict]:
    """One row per case; img/s, GEMM rate and fraction over the rounds in the machine's fast state (the cost
    model's rule, :func:`rbdc.cost.costmodel.fast_state`), the wall img/s over all rounds."""
    from rbdc.cost.costmodel import fast_state

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
        "~120, and whole steps slow with it; `rbdc.cost.costmodel.fast_state` splits the probes at their widest "
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
    wins, rest = [], []
    for b in benches:
        e = b["extra_info"]
        ref = [e["ref_images_per_round"] / t for t in e["ref_busy_s"]]
        var = [e["images_per_round"] / t for t in e["busy_s"]]
        ratios = [v / r for v, r in zip(var, ref)]
        r = float(np.median(ratios))
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


def costmodel_section(benches: list[dict], json_path: Path) -> list[str]:
    """The fitted cost model of the benches' CPU kind (``rbdc/cost/fitted/costmodel-<kind>.json``), its in-sample
    fit and its error against the committed runs (``benchmarks/costmodel_check.py``)."""
    import json

    from rbdc.cost.costmodel import TERMS, costmodel_path

    kinds = [b["extra_info"]["kind"] for b in benches if "kind" in b["extra_info"]]
    if not kinds:
        return []
    # a device check's fresh fit lies beside its JSON (benchmarks/device_check.sh); a committed one in the package
    path = costmodel_path(kinds[0], json_path.parent)
    path = path if path.is_file() else costmodel_path(kinds[0])
    if not path.is_file():
        return [f"No cost model fitted for this CPU kind yet (`python -m rbdc.cost.costmodel {json_path.name}`).", ""]
    data = json.loads(path.read_text())
    out = [
        "### Cost model: seconds per image on this device kind",
        "",
        f"`{path.name}` (`python -m rbdc.cost.costmodel reports/bench/{json_path.name}`, `rbdc/cost/costmodel.py`), "
        f"kind "
        f"`{data['device_kind']['key']}`. Seconds per training image = a x training FLOPs + b x activation elements "
        "+ d x parameters / batch + c, one non-negative least-squares fit (relative errors) per precision and "
        "family on the table above (busy clock). Activation elements: what the leaf layers write in one image's "
        "forward, plus the attention's score and probability matrices (the memory-bound work that FLOPs do not "
        "count); parameters / batch: the optimizer's and clipping's sweep over the weights per image.",
        "",
        "| precision / family | a (s per GFLOP) | b (ns per element) | d (ns per parameter-step) | c (us) | "
        "in-sample error, per width |",
        "|---|---|---|---|---|---|",
    ]
    for key, coef in data["coefs"].items():
        amp, fam = key.split("/")
        errs = ", ".join(
            f"{r['width']}: {100 * r['fit_error']:+.0f}%"
            for r in data["fitted_on"]
            if (r["amp"], r["family"]) == (amp, fam)
        )
        out.append(
            f"| {amp} {fam} | {coef[TERMS[0]] * 1e9:.4f} | {coef[TERMS[1]] * 1e9:.3f} | "
            f"{coef[TERMS[2]] * 1e9:.3f} | {coef[TERMS[3]] * 1e6:.1f} | {errs} |"
        )
    val = data.get("validation")
    if val:
        roots = ", ".join(f"`{r}`" for r in val["runs_roots"])
        loader = 1e6 * data["data_s_per_image"].get("32", 0)
        out += [
            "",
            f"Against the committed runs' stage walls (`python -m benchmarks.costmodel_check`; {roots}; "
            f"predicted = images x (cost model + the loader's {loader:.1f} us/img); error = predicted / "
            "measured - 1):",
            "",
            "| runs folder @ code commit | runs | stages | median error | median abs error | range | all stages "
            "summed | vs each stage's fastest epoch (median) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for group, g in val["groups"].items():
            out.append(
                f"| {group} | {g['runs']} | {g['stages']} | {100 * g['median_error']:+.1f}% | "
                f"{100 * g['median_abs_error']:.1f}% | {100 * g['min_error']:+.0f}..{100 * g['max_error']:+.0f}%"
                f" | {100 * g['total_error']:+.1f}% | {100 * g['fastest_median_error']:+.1f}% |"
            )
        out += ["", *_by_model(val["stages"]), "", _verdict(val["stages"])]
    return out + [""]


def _verdict(stages: list[dict]) -> str:
    """Which (runs, model) groups the model predicts within the target, and why the others miss it."""
    keys = list(dict.fromkeys((s["group"], s["model"]) for s in stages))
    med = {k: float(np.median([s["error"] for s in stages if (s["group"], s["model"]) == k])) for k in keys}
    good = [f"{k[1]} in {k[0]} ({100 * v:+.0f}%)" for k, v in med.items() if abs(v) <= TARGET]
    return (
        f"Within the {100 * TARGET:.0f}% target (median over a group's stages): "
        + ("; ".join(good) if good else "none")
        + f"; {len(keys) - len(good)} of {len(keys)} groups miss it. "
        "Why they miss, from the measurements above: the machine has two speed states (the GEMM probes), and a "
        "run's stages ran in either; runs that shared their cores with other jobs are slower on the wall than "
        "their busy time (the 61f9d7f runs, made while other helpers ran on both cores); and a training beside "
        "another one is slower when both are memory-bound (the ResNets ran two at once, the benchmark beside a "
        "ViT). The model is fitted on the fast state, one process on a core beside the study's run on the other: "
        "read its walls as the floor on this kind, not a promise."
    )


def _by_model(stages: list[dict]) -> list[str]:
    """The validation per runs folder, model and precision: measured and predicted seconds per image."""
    out = [
        "| runs folder @ code commit | model | precision | stages | measured us/img (median) | fastest epoch us/img "
        "(median) | predicted us/img | median error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in dict.fromkeys((s["group"], s["model"], s["amp"]) for s in stages):
        mine = [s for s in stages if (s["group"], s["model"], s["amp"]) == key]
        meas = np.median([s["wall_s"] / s["images"] for s in mine])
        fast = np.median([s["fastest_s_per_image"] for s in mine])
        pred = mine[0]["predicted_s"] / mine[0]["images"]
        out.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {len(mine)} | {1e6 * meas:.0f} | {1e6 * fast:.0f} | "
            f"{1e6 * pred:.0f} | {100 * np.median([s['error'] for s in mine]):+.0f}% |"
        )
    return out


def sections(by_group: dict[str, list[dict]], json_path: Path, figure_dir: Path | None) -> list[str]:
    """Everything this module adds to one device's section of ``reports/perf.md``."""
    out = []
    if "time-split" in by_group:
        out += time_split(by_group["time-split"], json_path, figure_dir)
        out += costmodel_section(by_group["time-split"], json_path)
    if "levers" in by_group:
        out += levers(by_group["levers"], json_path)
    return out
