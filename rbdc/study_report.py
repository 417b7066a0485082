"""The report of a study (``rbdc study STUDY.yaml --report``): the paper's Fig. 2 and Fig. 3 analogues, the FLOPs
saving against scratch at every budget with a test-inversion interval over seeds, head-to-head comparisons at equal
FLOPs, the coupled models before further training, and a verdict in plain words.

What it shows is declared in the study file's ``report:`` section::

    report:
      title: ...
      panels:        # Fig. 2, one panel per target: the scratch point (the curve to match) and the other series
        - {title: ViT-nano, baseline: vit-scratch, series: [vit-rbdc-d1, vit-rbdc-d2, vit-net2net]}
      ratio: {key: rbdc.ratio, budget: 16, points: [vit-rbdc-d1-ratio1, vit-rbdc-d1, vit-rbdc-d1-ratio3]}
      compare:       # each point against a reference point at one budget
        - {title: Ablations, reference: vit-rbdc-d1, budget: 16, points: [vit-rbdc-d1-continue]}

Every number comes from the run directories' ``results.json`` / ``recipe.yaml`` and nothing draws random numbers, so
the report regenerates byte for byte from the committed light files.
"""
from __future__ import annotations

import math
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from . import protocols, rundir, tuning
from .errors import UserError
from .recipe import load_yaml
from .report import discover_run_dirs, load_run, matched_flops
from .report.figure import save_png
from .report.saving import p_value_saving, saving_interval
from .report.stats import t_half_width, welch
from .rundir import atomic_write_bytes
from .study import REPO, Study, trial_dir
from .units import human_flops

PAPER_SAVING = 0.30
COLORS = ("#d62728", "#9e1b1b", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


@dataclass
class Point:
    """The runs of one study point at one budget (one ``<study>/<point>/b<budget>`` group)."""

    point: str
    budget: float | None
    protocol: str
    top1: list[float]
    flops: list[float]
    seeds: list[int]
    runs: list
    expected_seeds: int

    @property
    def n(self) -> int:
        return len(self.top1)

    @property
    def mean(self) -> float:
        return statistics.mean(self.top1)

    @property
    def half_width(self) -> float | None:
        """Half width of the 95% t-interval of the mean over seeds (None with one seed)."""
        return t_half_width(self.top1)

    @property
    def flops_mean(self) -> float:
        return statistics.mean(self.flops)

    def label(self) -> str:
        """Epochs per level, as the paper writes on its points (e.g. ``21.3+10.7`` for two levels)."""
        stages = self.runs[0].results.get("stages") or []
        levels: dict[str, float] = {}
        for s in stages:
            level = s["stage"].split(".")[0]
            levels.setdefault(level, s["epochs"])
        return "+".join(f"{e:.3g}" for e in levels.values())


def collect(study: Study, root: Path) -> dict[tuple[str, float | None], Point]:
    """The finished runs of ``study`` under ``root`` (its output folder, or a copy of the light files)."""
    found = {}
    if root.is_dir() and any(root.rglob(rundir.RESULTS)):
        for d in discover_run_dirs([root]):
            if (d / rundir.FAILED).is_file():
                continue
            run = load_run(d)
            found[(run.group, run.results["seed"])] = run
    points: dict[tuple[str, float | None], Point] = {}
    for r in study.runs:
        key = (r.point, r.budget_epochs)
        run = found.get((r.name, r.seed))
        p = points.setdefault(key, Point(r.point, r.budget_epochs, "", [], [], [], [], 0))
        p.expected_seeds += 1
        if run is None:
            continue
        if r.waiting or r.changed(root.parent):  # made with other settings than the study now asks: never counted
            print(f"left out {r.name} seed {r.seed}: its recipe differs from the study file's (rbdc study --list)",
                  file=sys.stderr)
            continue
        p.protocol = run.protocol
        p.top1.append(float(run.results["eval_top1"]))
        p.flops.append(float(run.results["total_train_flops"]))
        p.seeds.append(int(run.results["seed"]))
        p.runs.append(run)
    return points


def _series(points: dict, point: str) -> list[Point]:
    return sorted((p for (name, _), p in points.items() if name == point and p.n), key=lambda p: p.flops_mean)


def _saving(curve: list[tuple[float, float]], top1: float, flops: float) -> tuple[float, str]:
    m = matched_flops(curve, top1)
    return 1.0 - flops / m.flops, m.status


def saving_with_interval(scratch: list[Point], p: Point) -> dict:
    """Saving 1 - F / F_matched of ``p`` on scratch's curve, its test-inversion 95% interval
    (:func:`rbdc.report.saving.saving_interval`: Welch t, coverage tested at 3 and 5 seeds) and the p-value of the
    paper's 30%. An open end of the interval (it reaches the edge of scratch's range) is -inf / +inf here; a point
    outside scratch's range has a bound (the range's edge) as its saving."""
    curve = [(s.flops_mean, s.mean) for s in scratch]
    est, status = _saving(curve, p.mean, p.flops_mean)
    if p.n < 2 or min(s.n for s in scratch) < 2:
        return {"saving": est, "status": status, "lo": -math.inf, "hi": math.inf, "text": "– (one seed)", "p30": None}
    runs = [(s.flops_mean, s.top1) for s in scratch]
    iv = saving_interval(runs, p.top1, p.flops_mean)
    return {"saving": est, "status": status, "lo": -math.inf if iv.lo_open else iv.lo,
            "hi": math.inf if iv.hi_open else iv.hi, "text": iv.text(),
            "p30": p_value_saving(runs, p.top1, p.flops_mean, PAPER_SAVING)}


def _tuning_section(study: Study, root: Path) -> list[str]:
    """Each tuned point's trials, their held-out top-1 per budget and score, and the trial its runs use."""
    tune = study.tuning
    if tune is None:
        return []
    split = ", ".join(f"{k}={v}" for k, v in tune.split.items())
    budgets = [_budget(b) for b in tune.budgets]
    md = ["## Tuning on a held-out split", "",
          f"Every tuned point had {len(next(iter(tune.trials.values())))} trials, each at budgets "
          f"{', '.join(budgets)} with seeds {', '.join(map(str, tune.seeds))}, trained on train minus the held-out "
          f"part ({split}) and scored on that part, never on val (where every number above is measured). Score: the "
          f"held-out top-1 averaged over seeds, then over budgets (a diverged run scores 0); the best score wins, "
          f"ties go to the earlier trial.", "",
          "| point | trial | settings | " + " | ".join(f"held-out top-1 b{b}" for b in budgets) + " | score | used |",
          "|---|---|---|" + "---|" * len(budgets) + "---|---|"]
    for pid in tune.trials:
        rows = tuning.scores(tune, pid, trial_dir(study.name, root.parent))
        best = tuning.best_row(rows)
        done = all(r["score"] is not None for r in rows)
        for r in rows:
            cells = [_opt_pct(r["per_budget"][b]) for b in tune.budgets]
            used = "**yes**" if done and r is best else ""
            settings = ", ".join(f"{k}={v}" for k, v in r["overrides"].items())
            md.append(f"| {pid} | {r['trial']} | {settings} | {' | '.join(cells)} | {_opt_pct(r['score'])} | {used} |")
    return md + [""]


def _opt_pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def _p(p: float | None) -> str:
    return "–" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _diff(a: Point, b: Point) -> tuple[float, float | None]:
    """Mean top-1 difference a - b and the half width of its Welch 95% interval (None without two seeds each)."""
    return welch(a.top1, b.top1)


def _pm(mean: float, hw: float | None) -> str:
    return f"{mean:.2f}" if hw is None else f"{mean:.2f} ± {hw:.2f}"


def _seeds(p: Point) -> str:
    return f"{p.n}" if p.n == p.expected_seeds else f"{p.n} of {p.expected_seeds}"


_BOUND = {"above_range": "≥ ", "below_range": "≤ "}
_OUTSIDE = {"above_range": ", above scratch's whole curve", "below_range": ", below scratch's whole curve"}


def _in_short(savings: dict[str, list]) -> list[str]:
    """One plain paragraph over every series: where the paper's 30% falls, and which points save FLOPs."""
    rows = [(name, p, s) for name, pts in savings.items() for p, s in pts]
    if not rows:
        return []
    inside = [f"{n} b{_budget(p.budget)}" for n, p, s in rows if s["lo"] <= PAPER_SAVING <= s["hi"]]
    saves = [f"{n} b{_budget(p.budget)} ({100 * s['saving']:+.1f}%)" for n, p, s in rows if s["lo"] > 0]
    worse = [f"{n} b{_budget(p.budget)}" for n, p, s in rows if s["hi"] < 0]
    return ["**In short**: the paper's 30% saving lies inside "
            + (f"the 95% interval of {', '.join(inside)}" if inside else f"none of the {len(rows)} intervals")
            + ". Saving FLOPs beyond seed noise: " + (", ".join(saves) if saves else "no point")
            + ". Needing more FLOPs than scratch: " + (", ".join(worse) if worse else "no point")
            + ". Every other point's saving is not distinguishable from zero with its seeds.", ""]


def _verdict_word(lo: float, hi: float) -> str:
    if lo > 0:
        return "saves FLOPs"
    if hi < 0:
        return "needs more FLOPs than scratch"
    return "no saving distinguishable from zero"


def _budget(b) -> str:
    return "-" if b is None else f"{b:g}"


def build(study: Study, root: Path, out: Path) -> dict[str, Path]:
    """Write ``<out>.md`` and the figures ``<out>-fig2.png``, ``-fig3.png``, ``-saving.png``."""
    spec = _read_report_spec(study)
    points = collect(study, root)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = sum(p.n for p in points.values())
    total = sum(p.expected_seeds for p in points.values())
    md = [f"# {spec.get('title') or study.name}", ""]
    if study.description:
        md += [study.description, ""]
    md += [f"Generated by `rbdc study {_rel(study.path, REPO)} --report` from {done} of {total} runs "
           f"(`results.json` of each run directory under `{_rel(root, out.parent)}`, relative to this file). "
           f"Intervals: 95% t-interval of the mean over "
           f"seeds (points, differences: Welch); savings: 95% interval by test inversion (every saving a Welch "
           f"t-test of the point against scratch's curve does not reject; it covered 95-96% of the true savings in "
           f"simulated studies at 3 and 5 seeds, where the percentile bootstrap covered 78%: "
           f"tests/test_saving_interval.py). An end written ≥ / ≤ reaches the edge of scratch's range: only the "
           f"other side is bounded. No number here depends on a random draw.", ""]
    if done < total:
        missing = [f"{p.point} b{_budget(p.budget)} ({p.expected_seeds - p.n})" for p in points.values()
                   if p.n < p.expected_seeds]
        md += [f"**Incomplete**: {total - done} runs not finished yet: {', '.join(missing)}.", ""]

    savings: dict[str, list[tuple[Point, dict]]] = {}
    verdict: list[str] = []
    if _has_panel_runs(points, spec):
        md += [f"![Fig. 2: top-1 vs training FLOPs]({out.name}-fig2.png)", ""]
    for panel in spec.get("panels", []):
        scratch = _series(points, panel["baseline"])
        md += [f"## {panel['title']}: top-1 vs training FLOPs (Fig. 2)", "",
               "| point | protocol | budget (target epochs) | seeds | train FLOPs | epochs per level "
               "| top-1 (95% CI) |",
               "|---|---|---|---|---|---|---|"]
        for name in [panel["baseline"], *panel["series"]]:
            for p in _series(points, name):
                md.append(f"| {p.point} | {p.protocol} | {_budget(p.budget)} | {_seeds(p)} | "
                          f"{human_flops(p.flops_mean)} | {p.label()} | {_pm(p.mean, p.half_width)} |")
        md.append("")
        if len(scratch) < 2:
            md += ["Scratch has fewer than two finished budgets: no curve to match savings on yet.", ""]
            continue
        md += [f"### FLOPs saving against {panel['baseline']} (matched top-1 on scratch's curve)", "",
               f"Saving = 1 − F / F_scratch(top-1): F_scratch is where scratch's monotone, log-linear curve of mean "
               f"top-1 over its {len(scratch)} budgets ({', '.join(_budget(s.budget) for s in scratch)} target "
               f"epochs) reaches the point's mean top-1. Positive: fewer FLOPs than scratch for the same accuracy. "
               f"'above' / 'below': the point lies outside scratch's range, so the saving is a bound (≥ / ≤).", "",
               "| point | budget | seeds | top-1 | matched scratch FLOPs | saving | 95% interval | p (saving = 30%) |",
               "|---|---|---|---|---|---|---|---|"]
        for name in panel["series"]:
            for p in _series(points, name):
                s = saving_with_interval(scratch, p)
                savings.setdefault(name, []).append((p, s))
                bound = {"matched": "", "above_range": "≥ ", "below_range": "≤ "}.get(s["status"], "")
                md.append(f"| {p.point} | {_budget(p.budget)} | {_seeds(p)} | {_pm(p.mean, p.half_width)} | "
                          f"{human_flops(p.flops_mean / (1 - s['saving']))} | {bound}{100 * s['saving']:.1f}% | "
                          f"{s['text']} | {_p(s['p30'])} |")
        md.append("")
        md += _head_to_head(points, panel)
        for name in panel["series"]:
            rows = savings.get(name, [])
            if not rows:
                continue
            words = "; ".join(f"b{_budget(p.budget)}: {_BOUND.get(s['status'], '')}{100 * s['saving']:+.1f}% "
                              f"{s['text']} ({_verdict_word(s['lo'], s['hi'])}"
                              f"{_OUTSIDE.get(s['status'], '')})" for p, s in rows)
            pays = [p for p, s in rows if s["lo"] > 0]
            paper = [p for p, s in rows if s["lo"] <= PAPER_SAVING <= s["hi"]]
            verdict.append(f"- **{name}** ({panel['title']}): {words}. "
                           + (f"Its saving is above zero at budget(s) {', '.join(_budget(p.budget) for p in pays)} "
                              f"of {', '.join(_budget(p.budget) for p, _ in rows)} target epochs. " if pays else
                              "At no budget is its saving distinguishable from zero or better. ")
                           + (f"The paper's 30% lies inside the interval at budget(s) "
                              f"{', '.join(_budget(p.budget) for p in paper)}." if paper else
                              "The paper's 30% lies outside every interval."))
    md += _tuning_section(study, root)
    md += _coupled_table(points, spec)
    if spec.get("ratio"):
        md += _ratio_section(points, spec["ratio"], out)
    for comp in spec.get("compare", []):
        md += _compare_section(points, comp)
    md += _cost_section(points, study)
    md += _hardware_section(points, study)
    md += ["## Verdict", ""]
    md += _in_short(savings) + (verdict or ["Not enough finished runs for a verdict yet."])
    md += ["", "Each verdict line is computed from the table above it: 'saves FLOPs' where the whole 95% "
           "interval of the saving is above zero. It says nothing about scales this study did not run (ImageNet, "
           "224 px, 300 epochs).", ""]
    paths = {"md": out.with_name(out.name + ".md")}
    atomic_write_bytes(paths["md"], "\n".join(md).encode("utf-8"))
    paths.update(_figures(points, spec, savings, out))
    return paths


def _cost_section(points: dict, study: Study) -> list[str]:
    """Measured wall time per point and in all, and CPU-hours (each run's wall x the threads it recorded)."""
    rows, total, cpu, unknown = [], 0.0, 0.0, 0
    for p in points.values():
        walls = [(r.results["wall_s"], rundir.recorded_threads(r.path)) for r in p.runs if r.results.get("wall_s")]
        if walls:
            total += sum(w for w, _ in walls)
            cpu += sum(w * t for w, t in walls if t)
            unknown += sum(1 for _, t in walls if not t)
            rows.append(f"| {p.point} | {_budget(p.budget)} | {len(walls)} | "
                        f"{statistics.mean(w for w, _ in walls) / 60:.1f} | {sum(w for w, _ in walls) / 3600:.2f} |")
    if not rows:
        return []
    return ["## Cost (measured)", "",
            "Wall time of each finished run (`results.json`) on the machine its `command.txt` names, with the threads "
            "it recorded there. Runs often shared the cores with other work, so a run's wall is an upper bound on "
            "its cost alone.", "",
            "| point | budget | runs | wall per run (min) | run-hours |", "|---|---|---|---|---|", *rows, "",
            f"In all: {total / 3600:.1f} run-hours, {cpu / 3600:.1f} CPU-hours (wall x threads"
            + (f"; {unknown} run(s) recorded no thread count and are left out" if unknown else "")
            + f"); at the study's {study.jobs} runs at a time, about {total / study.jobs / 3600:.1f} hours elapsed.",
            ""]


def _cpu_path(env: dict, amp: str) -> tuple[str, str] | None:
    cpu = env.get("cpu")
    if not cpu:
        return None
    if amp != "bf16":
        return cpu["capability"], "- (fp32 run)"
    return cpu["capability"], cpu.get("bf16_matmul") or ("onednn" if cpu.get("bf16_fast") else "torch fallback")


def _hardware_section(points: dict, study: Study) -> list[str]:
    """Which CPU (and, for bf16 runs, which matmul path) each finished run recorded, with the speed it logged."""
    groups: dict[tuple[str, str], list] = {}
    for p in points.values():
        for r in p.runs:
            amp = load_yaml((r.path / rundir.RECIPE).read_text()).get("amp")
            paths = sorted({c for c in (_cpu_path(e, amp) for e in rundir.recorded_envs(r.path)) if c})
            key = (" + ".join(sorted({c for c, _ in paths})), " + ".join(sorted({m for _, m in paths}))) \
                if paths else ("not recorded", "")
            groups.setdefault(key, []).append(r)
    if list(groups) == [("not recorded", "")]:
        return []
    lines = ["## Where the runs ran", "",
             "The CPU each run's `command.txt` records: torch's capability and, for bf16 runs, how autocast's "
             "matmuls ran: `onednn` kernels, or `fp32-rounded` (rbdc/bf16.py: fp32 GEMMs of bf16-rounded operands, "
             "rounded to bf16, equal to oneDNN's up to the fp32 summation order; what CPUs without bf16 kernels "
             f"run). img/s: median over the epochs of each run's final model (summary.csv), at the threads it "
             f"recorded, {study.jobs} run(s) at a time.", "",
             "| CPU | bf16 matmuls | runs | median img/s (final model) |", "|---|---|---|---|"]
    for (cpu, path), runs in sorted(groups.items()):
        speeds = [float(row["img_per_s"]) for r in runs
                  for row in rundir.read_summary(r.path / rundir.SUMMARY)[1]
                  if row.get("img_per_s") and row.get("model") == r.results.get("model")]
        lines.append(f"| {cpu} | {path} | {len(runs)} | {f'{statistics.median(speeds):,.0f}' if speeds else '-'} |")
    return lines + [""]


def _head_to_head(points: dict, panel: dict) -> list[str]:
    """Every pair of series of the panel at the same budget (equal FLOPs within 2%), RBDC first."""
    series = panel["series"]
    lines = [f"### Head to head at equal FLOPs ({panel['title']})", "",
             "| A | B | budget | FLOPs A / B | top-1 A − B (95% Welch CI) | beyond seed noise |",
             "|---|---|---|---|---|---|"]
    n = 0
    for i, a_name in enumerate(series):
        for b_name in series[i + 1:]:
            for a in _series(points, a_name):
                for b in _series(points, b_name):
                    if a.budget != b.budget or abs(a.flops_mean / b.flops_mean - 1) > 0.02:
                        continue
                    d, hw = _diff(a, b)
                    beyond = "?" if hw is None else ("yes" if abs(d) > hw else "no")
                    lines.append(f"| {a.point} | {b.point} | {_budget(a.budget)} | {a.flops_mean / b.flops_mean:.3f} |"
                                 f" {_pm(d, hw)} | {beyond} |")
                    n += 1
    return lines + [""] if n else []


def _coupled_table(points: dict, spec: dict) -> list[str]:
    """The coupled (grown) model's top-1 before further training, against its parts' final top-1."""
    lines = ["## The coupled model before further training", "",
             "Top-1 of the model right after coupling (or growing), before its first step, and the mean final top-1 "
             "of the parts it was built from: how much plain-LayerNorm coupling loses (grouped LN is exact).", "",
             "| point | budget | stage | seeds | parts' final top-1 | coupled top-1 before training |",
             "|---|---|---|---|---|---|"]
    n = 0
    names = [n_ for panel in spec.get("panels", []) for n_ in panel["series"]]
    names += [p for c in spec.get("compare", []) for p in c["points"]]
    for name in dict.fromkeys(names):
        for p in _series(points, name):
            before: dict[str, list[float]] = {}
            parts: dict[str, list[float]] = {}
            for run in p.runs:
                ran = run.results.get("coupled_top1_before_training") or {}
                finals = {}
                for stage, _, top1 in run.curve:
                    if math.isfinite(top1):
                        finals[stage] = top1
                for stage, top1 in ran.items():
                    before.setdefault(stage, []).append(float(top1))
                    parents = [s for s in finals if _is_parent(s, stage)]
                    if parents:
                        parts.setdefault(stage, []).append(statistics.mean(finals[s] for s in parents))
            for stage in sorted(before):
                part = f"{statistics.mean(parts[stage]):.2f}" if parts.get(stage) else "–"
                lines.append(f"| {p.point} | {_budget(p.budget)} | {stage} | {len(before[stage])} | {part} | "
                             f"{statistics.mean(before[stage]):.2f} |")
                n += 1
    return lines + [""] if n else []


def _is_parent(candidate: str, stage: str) -> bool:
    """L0.x are the parents of L1.y when L1 is the next level (the level index precedes the dot)."""
    try:
        lc, ls = int(candidate.split(".")[0].lstrip("LG")), int(stage.split(".")[0].lstrip("LG"))
    except ValueError:
        return False
    return lc == ls - 1


def _ratio_value(p: Point, key: str):
    rec = load_yaml((p.runs[0].path / rundir.RECIPE).read_text())
    node = rec
    for k in key.split("."):
        node = node[k]
    return node


def _ratio_section(points: dict, spec: dict, out: Path) -> list[str]:
    rows = [p for name in spec["points"] for p in _series(points, name) if p.budget == spec["budget"]]
    lines = [f"## Top-1 vs training ratio at budget {spec['budget']:g} (Fig. 3)", "",
             f"![Fig. 3]({out.name}-fig3.png)", "",
             f"| point | {spec['key']} | seeds | epochs per level | train FLOPs | top-1 (95% CI) |",
             "|---|---|---|---|---|---|"]
    for p in sorted(rows, key=lambda p: _ratio_value(p, spec["key"])):
        lines.append(f"| {p.point} | {_ratio_value(p, spec['key']):g} | {_seeds(p)} | {p.label()} | "
                     f"{human_flops(p.flops_mean)} | {_pm(p.mean, p.half_width)} |")
    return lines + [""]


def _compare_section(points: dict, spec: dict) -> list[str]:
    ref = [p for p in _series(points, spec["reference"]) if p.budget == spec["budget"]]
    lines = [f"## {spec['title']}", "", f"Each point against {spec['reference']} at budget {spec['budget']:g}.", "",
             "| point | seeds | top-1 (95% CI) | − reference (95% Welch CI) | beyond seed noise |",
             "|---|---|---|---|---|"]
    if not ref:
        return lines + [f"| (reference {spec['reference']} not finished) | | | | |", ""]
    lines.append(f"| {spec['reference']} (reference) | {_seeds(ref[0])} | {_pm(ref[0].mean, ref[0].half_width)} | | |")
    for name in spec["points"]:
        for p in _series(points, name):
            if p.budget != spec["budget"]:
                continue
            d, hw = _diff(p, ref[0])
            beyond = "?" if hw is None else ("yes" if abs(d) > hw else "no")
            lines.append(f"| {p.point} | {_seeds(p)} | {_pm(p.mean, p.half_width)} | {_pm(d, hw)} | {beyond} |")
    return lines + [""]


def _flops_ticks(ax) -> None:
    """Log x axis ticked at the plotted FLOPs, labelled in human units (decade labels alone say little here)."""
    from matplotlib.ticker import FixedLocator, NullLocator
    ax.set_xscale("log")
    plotted = {float(x) for line in ax.get_lines() for x in line.get_xdata() if x > 1}  # not axhline's 0..1
    by_label = {human_flops(x, ""): x for x in sorted(plotted)}
    xs = sorted(by_label.values())  # points within rounding of each other share one tick
    if xs:
        ax.xaxis.set_major_locator(FixedLocator(xs))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([human_flops(x, "") for x in xs], fontsize=7, rotation=30)


SAVING_LIM = (-45.0, 60.0)  # shows +-40% and the paper's 30%; an interval beyond it ends in an arrow


def _saving_figure(spec: dict, savings: dict, path: Path) -> Path:
    """The saving vs budget, one panel per model (the report's panels), each series dodged sideways; a series whose
    every saving lies off the axis is named under the panel instead of drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    panels = [(pn["title"], [n for n in pn["series"] if n in savings]) for pn in spec.get("panels", [])]
    panels = [(t, names) for t, names in panels if names]
    fig = Figure(figsize=(4.2 * len(panels), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    for k, (title, names) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        off = []
        for j, name in enumerate(names):
            rows = savings[name]
            if all(not SAVING_LIM[0] <= 100 * s["saving"] <= SAVING_LIM[1] for _, s in rows):
                values = ", ".join(_BOUND.get(s["status"], "") + f"{100 * s['saving']:+.0f}%" for _, s in rows)
                off.append(f"{name} ({values})")
                continue
            _saving_series(ax, rows, COLORS[j % len(COLORS)], name, SAVING_LIM,
                           dodge=2 ** (0.12 * (j - (len(names) - 1) / 2)))
        budgets = sorted({p.budget for n in names for p, _ in savings[n] if p.budget is not None})
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [_budget(b) for b in budgets])
        ax.set_xlim(min(budgets) / 1.5, max(budgets) * 1.5)
        ax.set_ylim(*SAVING_LIM)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.axhline(100 * PAPER_SAVING, color="gray", linestyle="--", linewidth=0.8, label="paper: 30%")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("budget (target epochs)" + ("\noff the axis: " + "; ".join(off) if off else ""), fontsize=8)
        ax.set_ylabel("saving vs scratch at equal top-1 (%)\n95% interval; hollow: a bound" if k == 0 else "")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save_png(fig, path)
    return path


def _saving_series(ax, rows, color, name: str, lim: tuple[float, float], dodge: float) -> None:
    """One series of the saving figure: estimates (hollow: a bound, the point is outside scratch's range) with their
    intervals clipped to ``lim``; an end that is open or beyond ``lim`` is an arrow."""
    for i, (p, s) in enumerate(rows):
        x, y = p.budget * dodge, 100 * s["saving"]
        lo, hi = (max(min(100 * v, lim[1]), lim[0]) for v in (s["lo"], s["hi"]))
        ax.plot([x, x], [lo, hi], color=color, linewidth=1.2)
        for end, edge, marker in ((lo, lim[0], "v"), (hi, lim[1], "^")):
            ax.plot([x], [end], color=color, marker=marker if end == edge else "_", markersize=7)
        ax.plot([x], [min(max(y, lim[0]), lim[1])], color=color, marker="o",
                markerfacecolor="white" if s["status"] != "matched" else color, label=name if i == 0 else None)


def _has_panel_runs(points: dict, spec: dict) -> bool:
    return any(_series(points, n) for pn in spec.get("panels", []) for n in (pn["baseline"], *pn["series"]))


def _figures(points: dict, spec: dict, savings: dict, out: Path) -> dict[str, Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    paths = {}
    panels = spec.get("panels", [])
    if _has_panel_runs(points, spec):  # no empty axes while only tuning trials have finished
        fig = Figure(figsize=(6.0 * len(panels), 4.6), dpi=110)
        FigureCanvasAgg(fig)
        for i, panel in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            for j, name in enumerate([panel["baseline"], *panel["series"]]):
                ps = _series(points, name)
                if not ps:
                    continue
                color = "#4d4d4d" if j == 0 else COLORS[(j - 1) % len(COLORS)]
                ax.errorbar([p.flops_mean for p in ps], [p.mean for p in ps], yerr=[p.half_width or 0 for p in ps],
                            color=color, marker="o", markersize=4, capsize=3, label=name,
                            linewidth=2.0 if j == 0 else 1.2)
                if protocols.get(ps[0].protocol).subject:  # the method's points carry epochs per level (paper)
                    for p in ps:
                        ax.annotate(p.label(), (p.flops_mean, p.mean), textcoords="offset points",
                                    xytext=(4, -10 - 9 * (j - 1)), fontsize=6, color=color)  # one row per series
            _flops_ticks(ax)
            ax.set_xlabel("total training FLOPs")
            ax.set_ylabel("final top-1 (%), mean ± 95% CI over seeds")
            ax.set_title(panel["title"], fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        paths["fig2"] = out.with_name(out.name + "-fig2.png")
        save_png(fig, paths["fig2"])
    if spec.get("ratio"):
        r = spec["ratio"]
        rows = sorted((p for name in r["points"] for p in _series(points, name) if p.budget == r["budget"]),
                      key=lambda p: _ratio_value(p, r["key"]))
        fig = Figure(figsize=(5.5, 4.0), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.errorbar([_ratio_value(p, r["key"]) for p in rows], [p.mean for p in rows],
                    yerr=[p.half_width or 0 for p in rows], color=COLORS[0], marker="o", capsize=3)
        ax.set_xlabel(f"training ratio ({r['key']})")
        ax.set_ylabel("final top-1 (%), mean ± 95% CI")
        ax.set_title(f"RBDC at budget {r['budget']:g} target epochs", fontsize=10)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        paths["fig3"] = out.with_name(out.name + "-fig3.png")
        save_png(fig, paths["fig3"])
    if savings:
        paths["saving"] = _saving_figure(spec, savings, out.with_name(out.name + "-saving.png"))
    return paths


def _read_report_spec(study: Study) -> dict:
    data = load_yaml(study.path.read_text()) or {}
    spec = data.get("report") or {}
    known = set(study.points)
    names = [n for p in spec.get("panels", []) for n in (p["baseline"], *p["series"])]
    names += list(spec.get("ratio", {}).get("points", []))
    names += [n for c in spec.get("compare", []) for n in (c["reference"], *c["points"])]
    bad = [n for n in names if n not in known]
    if bad:
        raise UserError(f"{study.path}: report names point(s) {bad} that the study does not define "
                        f"(points: {', '.join(study.points)})")
    return spec


def _rel(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` (the report's folder), so the report does not depend on where it was made."""
    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()
