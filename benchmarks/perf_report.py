"""Run the benchmark suite per device and write ``reports/perf.md`` from its pytest-benchmark JSON.

    python -m benchmarks.perf_report run [pytest args]   # reports/bench/<device>.json: the CPU, then the GPU if any
    python -m benchmarks.perf_report                     # reports/perf.md from every reports/bench/*.json
    python -m benchmarks.perf_report merge OUT.json A.json B.json   # one device's JSON from several runs' parts

``reports/bench/diffusionblocks-memory-*.json`` (``python -m benchmarks.diffusionblocks_memory``, not
pytest-benchmark) become their own section: DiffusionBlocks' training memory against the number of blocks.

Each JSON holds one device's figures; the report keeps devices apart and never compares numbers across them. Within
a device it turns round times into images per second (``extra_info["images_per_round"]``), the harness/bare ratio
of the training step (median of interleaved per-round ratios with a bootstrap interval, and the ratio of fastest
rounds),
model TFLOP/s and, on a GPU, MFU against the peak of :mod:`rbdc.cost.perf`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from rbdc.runs.rundir import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "reports" / "bench"
REPORT = REPO / "reports" / "perf.md"
OVERHEAD_TARGET = 0.03  # the engine may add at most 3% to a bare step
GEMM_FRACTION_TARGET = 0.60  # the ViT proxy's CPU training step, as a fraction of the same-precision GEMM rate
DEIT_B_TARGET_TFLOPS = 360.0  # 45% of the ~798 TFLOP/s measured for dense bf16 matmuls on an H100


# ----------------------------------------------------------------------------------------------------------------
# Running


def device_slug(device: str) -> str:
    """File name for a device's JSON: ``cpu-<CPU kind>`` or the GPU's name in lower case
    (``nvidia-h100-80gb-hbm3``)."""
    if device == "cpu":  # one file per CPU kind (model, family-model, ISA: rbdc.cost.machine.cpu_kind)
        from rbdc.cost.machine import cpu_kind

        return f"cpu-{cpu_kind()['slug']}"
    import torch

    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")


def run(pytest_args: list[str], bench_dir: Path = BENCH_DIR) -> int:
    """Run ``pytest benchmarks`` once per available device, each into ``bench_dir/<device>.json``."""
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" not in devices:
        print("perf_report: no CUDA device here; running the CPU cases only (GPU figures not measured)")
    bench_dir.mkdir(parents=True, exist_ok=True)
    rc = 0
    for dev in devices:
        out = bench_dir / f"{device_slug(dev)}.json"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            str(REPO / "benchmarks"),
            f"--bench-device={dev}",
            f"--benchmark-json={out}",
            "--benchmark-columns=min,median,iqr,rounds",
            "-p",
            "no:cacheprovider",
            *pytest_args,
        ]
        print("perf_report:", " ".join(cmd), flush=True)
        rc = subprocess.call(cmd, cwd=REPO) or rc
        if out.is_file():  # the device kind's cost model, fitted on the time-split rows (if the run has them)
            subprocess.call([sys.executable, "-m", "rbdc.cost.costmodel", str(out)], cwd=REPO)
    # the train-step speeds `rbdc plan --gpu` reads, kept in the package (tests/test_package_data.py checks them)
    subprocess.call([sys.executable, "-m", "rbdc.cost.estimate", str(bench_dir)], cwd=REPO)
    return rc


# ----------------------------------------------------------------------------------------------------------------
# Reading

MEMORY_GLOB = "diffusionblocks-memory-*.json"  # benchmarks/diffusionblocks_memory.py's output, not pytest-benchmark
COSTMODEL_GLOB = "costmodel-*.json"  # rbdc.cost.costmodel's fits (a device check's, beside its JSON), not benchmarks
ENGINE_GAP_GLOB = "engine-gap-*.json"  # benchmarks/engine_gap.py's (read by the cost model's section), not benchmarks


def load(bench_dir: Path = BENCH_DIR) -> list[dict]:
    """Every ``*.json`` in ``bench_dir`` (pytest-benchmark output) but the memory measurements, sorted by name."""
    runs = []
    memory = (
        set(bench_dir.glob(MEMORY_GLOB)) | set(bench_dir.glob(COSTMODEL_GLOB)) | set(bench_dir.glob(ENGINE_GAP_GLOB))
    )
    for path in sorted(set(bench_dir.glob("*.json")) - memory):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path} is not valid JSON ({e}); delete it and run `python -m benchmarks.perf_report run` again"
            ) from e
        if "benchmarks" not in data:
            raise ValueError(f"{path} is not a pytest-benchmark JSON (no 'benchmarks' key); remove it from {bench_dir}")
        data["_path"] = path
        runs.append(data)
    return runs


def load_memory(bench_dir: Path = BENCH_DIR) -> list[dict]:
    """Every ``diffusionblocks-memory-*.json`` in ``bench_dir``, sorted by name."""
    out = []
    for path in sorted(bench_dir.glob(MEMORY_GLOB)):
        data = json.loads(path.read_text())
        if data.get("kind") != "diffusionblocks-memory":
            raise ValueError(
                f"{path} is not python -m benchmarks.diffusionblocks_memory's output (no kind "
                f"'diffusionblocks-memory'); remove it from {bench_dir}"
            )
        data["_path"] = path
        out.append(data)
    return out


def _ips(bench: dict, stat: str = "median") -> float:
    """Images per second of a round time statistic."""
    return bench["extra_info"]["images_per_round"] / bench["stats"][stat]


def _noise(bench: dict) -> float:
    """Spread of the round times: interquartile range over the median."""
    return bench["stats"]["iqr"] / bench["stats"]["median"]


def median_interval(values: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the median of ``values``."""
    v = np.asarray(values, dtype=float)
    meds = np.median(np.random.default_rng(seed).choice(v, size=(n, len(v))), axis=1)
    lo, hi = np.percentile(meds, [2.5, 97.5])
    return float(lo), float(hi)


def paired_ratios(harness: dict) -> list[float]:
    """harness_i / bare_i over the interleaved rounds of a harness benchmark (bare_i ran just before harness_i)."""
    times = harness["stats"].get("data") or []
    bare = harness["extra_info"].get("paired_bare_s") or []
    return [h / b for h, b in zip(times, bare)] if len(times) == len(bare) else []


def gemm_fraction(bench: dict) -> float | None:
    """Model FLOP/s over the same-precision GEMM FLOP/s measured in the same run (``gemm_flops_per_s``).

    One probe per round (``train-paths``): the median over rounds of the per-round ratios; otherwise (a probe before
    and after the rounds) the median round's rate over the probes' mean. None without probes.
    """
    e = bench["extra_info"]
    gemm = e.get("gemm_flops_per_s") or []
    if not gemm:
        return None
    flops = e["images_per_round"] * e["train_flops_per_image"]
    times = bench["stats"].get("data") or []
    if len(times) == len(gemm) > 2:
        return float(np.median([flops / t / g for t, g in zip(times, gemm)]))
    return flops / bench["stats"]["median"] / float(np.mean(gemm))


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def _peak(device: str) -> float | None:
    from rbdc.cost.perf import lookup_peak, peak_tflops

    env = os.environ.get("RBDC_PEAK_TFLOPS")
    return peak_tflops("cpu") if env else lookup_peak(device)


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def _train_step(benches: list[dict], gpu: bool, peak: float | None) -> list[str]:
    pairs: dict[str, dict] = {}
    for b in benches:
        pairs.setdefault(b["extra_info"]["case"], {})[b["extra_info"]["impl"]] = b
    cols = [
        "model",
        "px",
        "batch",
        "dtype",
        "attention",
        "channels_last",
        "compile",
        "bare img/s",
        "harness img/s",
        "harness/bare, interleaved rounds: median [95% interval]",
        "harness/bare, fastest rounds",
        "round noise bare / harness",
        f"within {100 * OVERHEAD_TARGET:.0f}%",
        "harness fraction of GEMM",
    ]
    cols += ["harness model TFLOP/s", "MFU"] if gpu else []
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for pair in pairs.values():
        if set(pair) != {"bare", "harness"}:
            continue
        bare, har = pair["bare"], pair["harness"]
        e = har["extra_info"]
        r_min = har["stats"]["min"] / bare["stats"]["min"]
        ratios = paired_ratios(har)
        if len(ratios) > 2:
            r = float(np.median(ratios))
            lo, hi = median_interval(ratios)
            paired = f"{r:.3f} ({_pct(r - 1)}) [{_pct(lo - 1)}, {_pct(hi - 1)}], {len(ratios)} pairs"
        else:
            r, paired = r_min, "n/a"
        frac = gemm_fraction(har)
        cells = [
            e["model"],
            e["img_size"],
            e["batch"],
            e["dtype"],
            _attention(e),
            e["channels_last"],
            e["compile"],
            f"{_ips(bare):,.0f}",
            f"{_ips(har):,.0f}",
            paired,
            f"{r_min:.3f} ({_pct(r_min - 1)})",
            f"{100 * _noise(bare):.1f}% / {100 * _noise(har):.1f}%",
            "yes" if r <= 1 + OVERHEAD_TARGET else "no",
            "n/a" if frac is None else f"{100 * frac:.0f}%",
        ]
        if gpu:
            tflops = _ips(har) * e["train_flops_per_image"] / 1e12
            cells += [
                f"{tflops:.1f}",
                f"{100 * tflops / peak:.1f}%" if peak else "n/a (device not in rbdc/cost/perf.py)",
            ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def _attention(e: dict) -> str:
    if "resnet" in e["model"]:
        return "-"
    fused = e.get("fused_attn")
    return "timm default (fused SDPA)" if fused is None else ("fused SDPA" if fused else "explicit")


def _train_paths(benches: list[dict], gpu: bool, peak: float | None) -> list[str]:
    """One row per path; *vs study path*: img/s over the study path's img/s of the same model."""
    unit, scale = ("TFLOP/s", 1e12) if gpu else ("GFLOP/s", 1e9)
    cols = [
        "model",
        "px",
        "batch",
        "precision",
        "attention",
        "channels_last",
        "compile",
        "threads x processes",
        "img/s",
        f"model {unit}",
        f"GEMM {unit} (same precision, same rounds)",
        "fraction of GEMM",
        "vs study path",
        "round noise",
    ] + (["MFU (spec peak)"] if gpu else [])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    study = {b["extra_info"]["model"]: _ips(b) for b in benches if b["extra_info"].get("study")}
    for b in benches:
        e = b["extra_info"]
        model_flops = _ips(b) * e["train_flops_per_image"]
        frac = gemm_fraction(b)
        gemm = np.median(e.get("gemm_flops_per_s") or [np.nan])
        ref = study.get(e["model"])
        cells = [
            e["model"] + (" **(study path)**" if e.get("study") else ""),
            e["img_size"],
            e["batch"],
            f"{e['amp']} ({e['gemm_dtype']} GEMM)",
            _attention(e),
            e["channels_last"],
            e["compile"],
            f"{e['threads']} x {e['procs']}",
            f"{_ips(b):,.0f}",
            f"{model_flops / scale:.1f}",
            f"{gemm / scale:.1f}",
            "n/a" if frac is None else f"{100 * frac:.0f}%",
            f"{_ips(b) / ref:.2f}x" if ref else "n/a",
            f"{100 * _noise(b):.1f}%",
        ]
        if gpu:
            cells.append(f"{100 * model_flops / 1e12 / peak:.1f}%" if peak else "n/a")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def _forward(benches: list[dict]) -> list[str]:
    lines = [
        "| model | px | batch | dtype | channels_last | img/s (median) | img/s (fastest round) | round noise | "
        "model TFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b in benches:
        e = b["extra_info"]
        tflops = _ips(b) * e["forward_flops_per_image"] / 1e12
        lines.append(
            f"| {e['model']} | {e['img_size']} | {e['batch']} | {e['dtype']} | {e['channels_last']} | "
            f"{_ips(b):,.1f} | {_ips(b, 'min'):,.1f} | {100 * _noise(b):.1f}% | {tflops:.3f} |"
        )
    return lines


def _coupling(benches: list[dict]) -> list[str]:
    lines = [
        "| target (k=2 parts of half width) | params per part | seconds (median) | fastest round | rounds |",
        "|---|---|---|---|---|",
    ]
    for b in benches:
        e, s = b["extra_info"], b["stats"]
        lines.append(
            f"| {e['target']} | {e['part_params'] / 1e6:.1f} M | {s['median']:.3f} | {s['min']:.3f} | {s['rounds']} |"
        )
    return lines


def _data(benches: list[dict]) -> list[str]:
    lines = [
        "| path | source | px | batch | augmentation | workers | img/s (median) | round noise |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in benches:
        e = b["extra_info"]
        if e["path"] == "stream":
            aug = f"timm DeiT transform {e['aug']}" + (" (posterize shim)" if e.get("posterize_shim") else "")
            workers = f"{e['workers']} (persistent: {e['persistent_workers']}, pinned: {e['pin_memory']})"
        else:
            aug = f"crop + flip, re_prob {e['re_prob']}, on the device"
            workers = "none (in memory)"
        lines.append(
            f"| {e['path']} | {e['source']} | {e['img_size']} | {e['batch']} | {aug} | {workers} | "
            f"{_ips(b):,.0f} | {100 * _noise(b):.1f}% |"
        )
    return lines


def _mb(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def _memory(data: dict) -> list[str]:
    """The section of one ``benchmarks.diffusionblocks_memory`` JSON: a table per device, then what scales."""
    rows = data["rows"]
    devices = [d for d in ("cpu", "cuda") if any(r["device"] == d for r in rows)]
    r0 = rows[0]
    how = "a fresh process" if r0.get("fresh_process", True) else "one process for all (a dry run at toy size)"
    out = [
        f"## DiffusionBlocks: training memory against the number of blocks B ({data['cpu']}"
        + (f"; {data['gpu']}" if data.get("gpu") else "")
        + ")",
        "",
        f"`reports/bench/{data['_path'].name}` (`python -m benchmarks.diffusionblocks_memory`) | run "
        f"{data['date']} | torch {data['torch']} | timm {data['timm']} | CPU {data['cpu_info']['capability']} | "
        f"{data['threads']} CPU thread(s)"
        + ("" if data.get("cuda_measured") else " | no GPU: CUDA peak memory not measured"),
        "",
        "A DiffusionBlocks step backpropagates through one block of depth/B layers, so the activations it keeps "
        "should fall as 1/B. Per configuration, " + how + " builds the model as its protocol does (the 32-px "
        f"study's recipes, batch {r0['batch']} at {r0['img_size']} px, explicit attention, drop-path, AdamW, "
        "clipping) and runs the engine's `train_step`; DiffusionBlocks trains every block in turn and the "
        "figures are the max over blocks. *Saved activations*: bytes the autograd graph holds for backward after "
        "one forward (once per storage; parameters and autocast's weight copies left out): exact and "
        "load-independent. *Layers*: the part saved inside the transformer layers, the part the method splits. "
        "*Peak RSS increment*: `ru_maxrss` after the steps minus the RSS right before the first one "
        "(activations, gradients, AdamW's moments, backward's temporaries and the runtime's one-time buffers); "
        "*retained*: what is still there after the steps (AdamW's moments, one-time buffers). B = 1: the "
        "DiffusionBlocks objective on one block of every layer (not a configuration of the method, which needs "
        "B >= 2). Ratios are to end-to-end backprop of the same ViT (the scratch protocol's model), same width "
        "and precision.",
        "",
    ]
    for dev in devices:
        cuda = dev == "cuda"
        cols = [
            "width (depth)",
            "precision",
            "method",
            "B",
            "saved activations (MB)",
            "ratio vs end-to-end",
            "promised 1/B",
            "layers' saved activations (MB)",
            "layers' ratio vs end-to-end",
        ]
        cols += (
            ["CUDA peak allocated increment (MB)", "ratio vs end-to-end"]
            if cuda
            else ["peak RSS increment (MB)", "ratio vs end-to-end", "retained (MB)"]
        )
        out += [
            f"### {'CUDA: ' + data['gpu'] if cuda else 'CPU: ' + data['cpu']}",
            "",
            "| " + " | ".join(cols) + " |",
            "|" + "---|" * len(cols),
        ]
        for r in (r for r in rows if r["device"] == dev):
            e2e = r["method"] == "end-to-end"
            cells = [
                f"{r['width']} ({r['depth']})",
                r["amp"],
                r["method"],
                "-" if e2e else r["blocks"],
                _mb(r["saved_activation_bytes"]),
                f"{r.get('saved_activation_ratio_vs_e2e', float('nan')):.3f}",
                "-" if e2e else f"{r['promised_ratio']:.3f}",
                _mb(r["saved_layer_bytes"]),
                f"{r.get('saved_layer_ratio_vs_e2e', float('nan')):.3f}",
            ]
            key = "cuda_peak_increment_bytes" if cuda else "peak_rss_increment_bytes"
            cells += [_mb(r[key]), f"{r.get(key.replace('_bytes', '_ratio_vs_e2e'), float('nan')):.3f}"]
            if not cuda:
                cells.append(_mb(r["retained_increment_bytes"]))
            out.append("| " + " | ".join(str(c) for c in cells) + " |")
        out.append("")
    out += _memory_findings(rows) + [""]
    return out


def _memory_findings(rows: list[dict]) -> list[str]:
    """What scales with 1/B and what does not, in the measured numbers."""

    def find(dev, amp, width, method, blocks):
        return next(
            (
                r
                for r in rows
                if (r["device"], r["amp"], r["width"], r["method"], r["blocks"]) == (dev, amp, width, method, blocks)
            ),
            None,
        )

    lines = []
    for dev in ("cpu", "cuda"):
        for amp in dict.fromkeys(r["amp"] for r in rows if r["device"] == dev):
            for width in dict.fromkeys(r["width"] for r in rows if r["device"] == dev and r["amp"] == amp):
                e2e, one = find(dev, amp, width, "end-to-end", 1), find(dev, amp, width, "diffusionblocks", 1)
                bs = [
                    r
                    for r in rows
                    if (r["device"], r["amp"], r["width"], r["method"]) == (dev, amp, width, "diffusionblocks")
                    and r["blocks"] > 1
                ]
                if not (e2e and one and bs):
                    continue
                within = ", ".join(
                    f"{r['saved_layer_bytes'] / one['saved_layer_bytes']:.3f} at B={r['blocks']}" for r in bs
                )
                last = bs[-1]
                text = (
                    f"- {dev} {amp}, width {width}: a DiffusionBlocks layer saves "
                    f"{one['saved_layer_bytes'] / e2e['saved_layer_bytes']:.2f}x a plain layer's activations; "
                    f"one block's layers save {within} of B = 1's; the shared parts save "
                    f"{_mb(one['saved_shared_bytes'])} MB at every B "
                    f"({100 * last['saved_shared_bytes'] / last['saved_activation_bytes']:.0f}% of a "
                    f"B = {last['blocks']} step's); weights {_mb(one['param_bytes'])} MB"
                )
                if "retained_increment_bytes" in one:
                    text += (
                        f"; retained after the steps {_mb(min(r['retained_increment_bytes'] for r in bs))}-"
                        f"{_mb(max(r['retained_increment_bytes'] for r in [one, *bs]))} MB at every B"
                    )
                lines.append(text + ".")
    big = max((r["blocks"] for r in rows), default=1)
    at_big = [
        r["peak_rss_increment_ratio_vs_e2e"]
        for r in rows
        if r["blocks"] == big and r["method"] != "end-to-end" and "peak_rss_increment_ratio_vs_e2e" in r
    ]
    rss = (
        f": at B = {big} it is {min(at_big):.2f}-{max(at_big):.2f} of end-to-end's, against {1 / big:.2f} promised"
        if at_big
        else ""
    )
    return [
        "What scales with B and what does not:",
        "",
        "- Scales as 1/B: the activations saved inside the layers, exactly (one block's layers against "
        "B = 1's, below: 1/B to the byte but for the conditioning vector, saved once).",
        "- Does not scale: the shared patch/label/time embeddings, final norm, head and loss (their saved "
        "activations, below); the weights (outside the increment); AdamW's two moments of every parameter "
        "(each block's are kept while the others train) and the runtime's one-time buffers, together "
        "*retained*, far above 3x the weights at these widths; and part of the rest of the increment "
        "(backward's temporaries, the gradients, the allocator's slack), which shrinks with B but more slowly. "
        "Hence the peak RSS increment falls more slowly than 1/B" + rss + ". RSS figures depend on the "
        "allocator (three runs of the script on a 2-core Xeon differed by up to 8% per configuration); the "
        "saved bytes are exact.",
        "- Against end-to-end the ratio is above 1/B because a DiffusionBlocks layer is not a plain ViT layer: "
        "adaLN-Zero (the official conditioning) keeps 4 more [batch, tokens, width] tensors per layer for "
        "backward, the two LayerNorm outputs that multiply (1 + scale) (fp32 under autocast) and the attention "
        "and MLP outputs that multiply the gates. So B blocks keep about that factor over B of end-to-end's "
        "activations, not 1/B.",
        "",
        *lines,
    ]


def render(runs: list[dict], memory: list[dict] = (), figure_dir: Path | None = None) -> str:
    """The Markdown report of every device's run, then the DiffusionBlocks memory measurements (figures, where a
    section has one, into ``figure_dir``)."""
    out = [
        "# Performance",
        "",
        "Generated by `python -m benchmarks.perf_report` from `reports/bench/*.json` (pytest-benchmark; "
        "regenerate with `tox -e bench`). Each section is one device; figures are never compared across devices. "
        "Images per second are computed from round times (median unless stated); *round noise* is the "
        "interquartile range of the round times over their median.",
        "",
    ]
    gpu_seen = False
    for data in runs:
        benches = data["benchmarks"]
        if not benches:
            continue
        by_group: dict[str, list] = {}
        for b in benches:
            by_group.setdefault(b["group"], []).append(b)
        e0 = benches[0]["extra_info"]
        gpu = e0["device_type"] == "cuda"
        gpu_seen |= gpu
        peak = _peak(e0["device"]) if gpu else None
        out += [
            f"## {e0['device']}",
            "",
            f"`reports/bench/{data['_path'].name}` | "
            f"run {data['datetime'][:16].replace('T', ' ')} UTC | torch {e0['torch']} | timm {e0['timm']}"
            + (f" | CUDA {e0['cuda']}" if gpu else f" | {e0['threads']} CPU thread(s)")
            + (f" | bf16 peak {peak:g} TFLOP/s" if peak else ""),
            "",
        ]
        if "train-step" in by_group:
            out += [
                "### Training step: the engine (`rbdc.training.engine.train_step`) vs a bare PyTorch loop",
                "",
                "Same model weights, batch, dtype, optimizer (AdamW) and flags on both sides. Ratio = harness "
                "time / bare time (above 1: the engine is slower). Main figure: every harness round ran right "
                "after a bare round, and the median of those per-pair ratios (with a 95% bootstrap interval) "
                "cancels slow changes of the machine's load; the ratio of the two separate runs' fastest rounds "
                f"is a second estimate. Target: overhead within {100 * OVERHEAD_TARGET:.0f}% (on the main "
                "figure).",
                "",
            ]
            out += _train_step(by_group["train-step"], gpu, peak) + [""]
            if gpu:
                deit_b = [
                    b
                    for b in by_group["train-step"]
                    if b["extra_info"]["impl"] == "harness" and b["extra_info"]["model"].startswith("deit_base")
                ]
                for b in deit_b:
                    tf = _ips(b) * b["extra_info"]["train_flops_per_image"] / 1e12
                    out.append(
                        f"- DeiT-B train step (compile={b['extra_info']['compile']}): {tf:.0f} model TFLOP/s; "
                        f"target >= {DEIT_B_TARGET_TFLOPS:.0f} "
                        f"({'met' if tf >= DEIT_B_TARGET_TFLOPS else 'not met'})."
                    )
                out.append("")
        if "train-paths" in by_group:
            sizes = ", ".join(sorted({str(b["extra_info"]["gemm_n"]) for b in by_group["train-paths"]}))
            out += [
                "### Training paths: the studies' step, as model FLOP/s and as a fraction of the GEMM rate",
                "",
                (
                    "The engine's `train_step` with the study recipe's loss, clipping and drop-path on a fixed batch "
                    "(data loading excluded: see the data pipeline). The first row of each model is the path its "
                    "study runs; each other row changes one thing. Before every timed round every process measures "
                    f"a same-precision square GEMM (n = {sizes}); *fraction of GEMM* is the median over rounds of "
                    f"model FLOP/s / GEMM FLOP/s (processes "
                    "added up), so it holds on a machine whose load changes. Model FLOPs: 3 x the analytic forward "
                    "(`rbdc.flops`)."
                ),
                "",
            ]
            out += _train_paths(by_group["train-paths"], gpu, peak) + [""]
            if not gpu:
                vit = [
                    b
                    for b in by_group["train-paths"]
                    if b["extra_info"].get("study") and b["extra_info"]["model"] == "rbdc_vit_nano_patch4_32"
                ]
                for b in vit:
                    f = gemm_fraction(b)
                    out += [
                        (
                            f"- ViT proxy (rbdc_vit_nano_patch4_32) on its study path: {100 * f:.0f}% of the "
                            f"{b['extra_info'].get('amp', 'fp32')} GEMM rate (its precision); target >= "
                            f"{100 * GEMM_FRACTION_TARGET:.0f}% "
                            f"({'met' if f >= GEMM_FRACTION_TARGET else 'not met'})."
                        ),
                        "",
                    ]
        if "forward" in by_group:
            out += ["### Forward throughput (eval, no autograd)", ""] + _forward(by_group["forward"]) + [""]
        if "coupling" in by_group:
            out += ["### Coupling (`rbdc.couple`, CPU, includes building the wide model)", ""]
            out += _coupling(by_group["coupling"]) + [""]
        if "data" in by_group:
            out += ["### Data pipeline (training batches out of `rbdc.data.build_loader`)", ""]
            out += _data(by_group["data"]) + [""]
            if any(b["extra_info"].get("posterize_shim") for b in by_group["data"]):
                out += [
                    "*Posterize shim*: with this Pillow, timm's RandAugment (`rand-m9-mstd0.5-inc1`) asks "
                    "`ImageOps.posterize` for 0 bits at magnitude 10 and Pillow >= 13 raises: about 1 image in 650 "
                    "(measured: 31 of 20,000) crashes the streaming DeiT transform, so no ImageNet epoch ends. The "
                    "benchmark maps 0 bits to a black image, as older Pillow did; rbdc.data needs the same fix.",
                    "",
                ]
        if {"time-split", "levers"} & set(by_group):  # where the time goes, the cost model, the levers
            from benchmarks import perf_time

            out += perf_time.sections(by_group, data["_path"], figure_dir)
    for data in memory:
        out += _memory(data)
    if not gpu_seen:
        out += [
            "## GPU",
            "",
            "GPU figures (DeiT-S, DeiT-B and ResNet-50 train-step img/s and MFU, the Imagenette study's wall "
            "time) were not measured: no GPU was available to this session. `tox -e bench` on a CUDA machine "
            "adds them (reports/bench/<gpu>.json).",
            "",
        ]
    return "\n".join(out)


def merge(output: Path, parts: list[Path]) -> int:
    """One device's JSON from the JSONs of several pytest runs on it (the device script's steps): their benchmarks
    in order, the first one's run metadata. Missing parts (a step that ran out of time) are skipped."""
    datas = [json.loads(p.read_text()) for p in parts if p.is_file()]
    if not datas:
        print(f"perf_report: none of {', '.join(map(str, parts))} exists; nothing to merge", file=sys.stderr)
        return 2
    merged = dict(datas[0], benchmarks=[b for d in datas for b in d["benchmarks"]])
    atomic_write_bytes(output, json.dumps(merged, indent=1).encode())
    print(
        f"perf_report: wrote {output} ({len(merged['benchmarks'])} benchmarks from {len(datas)} of {len(parts)} parts)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:
        return run(argv[1:])
    if argv[:1] == ["merge"]:
        if len(argv) < 3:
            print(
                "usage: python -m benchmarks.perf_report merge OUTPUT.json PART.json [PART.json ...]", file=sys.stderr
            )
            return 2
        return merge(Path(argv[1]), [Path(a) for a in argv[2:]])
    parser = argparse.ArgumentParser(prog="python -m benchmarks.perf_report", description=__doc__.split("\n")[0])
    parser.add_argument("--bench-dir", type=Path, default=BENCH_DIR, help="folder of pytest-benchmark JSON files")
    parser.add_argument("-o", "--output", type=Path, default=REPORT, help="the Markdown report to write")
    args = parser.parse_args(argv)
    runs, memory = load(args.bench_dir), load_memory(args.bench_dir)
    if not runs and not memory:
        print(
            f"perf_report: no benchmark JSON in {args.bench_dir}; run `python -m benchmarks.perf_report run` first",
            file=sys.stderr,
        )
        return 2
    atomic_write_bytes(args.output, render(runs, memory, args.output.parent).encode("utf-8"))
    print(f"perf_report: wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
