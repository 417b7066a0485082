"""The tables of a study report: each Fig. 2 panel with its savings and head-to-head pairs, the coupled models
before training, Fig. 3's ratio, the comparisons against a reference point, and where the runs ran (the tuning parts:
:mod:`.study_tuning`)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from rbdc.runs import rundir
from rbdc.recipe import load_yaml
from rbdc.studies.spec import Study
from rbdc.units import human_flops

from .cost import cpu_name
from .fmt import budget as _budget
from .fmt import p_value, pm
from .saving import enough_seeds
from .stats import welch
from .study import (
    BOUND,
    OUTSIDE,
    PAPER_SAVING,
    Point,
    estimate_text,
    matched_pairs,
    pair_contrast,
    panel_pairs,
    recipe_value,
    saving_with_interval,
    series,
    series_over_budgets,
    verdict_word,
)


def ahead(o: dict) -> str | None:
    """The side of a head-to-head pair ``o`` ahead beyond seed noise (its top-1 gap's interval excludes 0), or None.
    The one place that decides it: the verdict's long form and the README's short form both say it."""
    g = o["gap"].gap
    return o["a"] if g.lo > 0 else o["b"] if g.hi < 0 else None


def pair_text(o: dict) -> str:
    """``vit-rbdc-d1 − vit-hypercloning over budgets 8, 16, 32: top-1 -0.80 ± 0.62 at equal FLOPs, p = 0.012
    (vit-hypercloning ahead beyond seed noise)``, after ``question: `` where the pair answers one."""
    g, who = o["gap"].gap, ahead(o)
    words = f"{who} ahead beyond seed noise" if who else "not distinguishable"
    return (
        (f"{o['question']}: " if o.get("question") else "")
        + f"{o['a']} − {o['b']} over budgets {', '.join(_budget(a.budget) for a, _ in o['pairs'])}: top-1 "
        f"{g.gap:+.2f} ± {g.hi - g.gap:.2f} at equal FLOPs, {p_value(o['gap'].p, stated=True)} ({words})"
    )


def over_budgets_text(o: dict) -> str:
    """``over budgets 8, 16, 32, top-1 +0.93 [+0.52, +1.34] against scratch at equal FLOPs; the paper's 30% at every
    budget (8, 16): p = 0.004 (the saving measured is smaller)`` (each part only where it was tested)."""

    def where(res) -> str:
        return ", ".join(_budget(o["points"][i].budget) for i in res.used)

    parts = []
    if o["gap"] is not None:
        g = o["gap"].gap
        parts.append(
            f"over budgets {where(o['gap'])}, top-1 {g.gap:+.2f} [{g.lo:+.2f}, {g.hi:+.2f}] against scratch at "
            "equal FLOPs"
        )
    if o["p30"] is not None:
        p, side = p_value(o["p30"].p, stated=True), "smaller" if o["p30"].gap.gap < 0 else "larger"
        parts.append(f"the paper's 30% at every budget ({where(o['p30'])}): {p} (the saving measured is {side})")
    return "; ".join(parts)


OVER_BUDGETS_NOTE = (
    "**Over each series' budgets**, one test each (the points share scratch's curve, so their separate tests are "
    "correlated and Fisher's combination of their p-values would overstate the evidence): the mean over budgets of "
    "(point − scratch's curve) is one fixed combination of independent group means, tested with Welch's t; at the "
    "point's own FLOPs it is the top-1 gap at equal FLOPs, at F / 0.7 the test of the paper's 30% at every budget "
    "(coverage tested at 3 to 5 seeds a group: tests/test_saving_interval.py)."
)


def _seeds(p: Point) -> str:
    return f"{p.n}" if p.n == p.expected_seeds else f"{p.n} of {p.expected_seeds}"


def _top1(p: Point) -> str:
    return pm(p.mean, p.half_width)


def panel_section(points: dict, panel: dict, savings: dict, verdict: list[str]) -> list[str]:
    """One Fig. 2 panel: its points, the saving of each series against the panel's scratch (added to ``savings``),
    head-to-head pairs and the verdict line of each series (added to ``verdict``)."""
    scratch = series(points, panel["baseline"])
    md = [
        f"## {panel['title']}: top-1 vs training FLOPs (Fig. 2)",
        "",
        "| point | protocol | budget (target epochs) | seeds | train FLOPs | epochs per level | top-1 (95% CI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in [panel["baseline"], *panel["series"]]:
        for p in series(points, name):
            md.append(
                f"| {p.point} | {p.protocol} | {_budget(p.budget)} | {_seeds(p)} | "
                f"{human_flops(p.flops_mean)} | {p.label()} | {_top1(p)} |"
            )
    md.append("")
    if len(scratch) < 2:
        return md + ["Scratch has fewer than two finished budgets: no curve to match savings on yet.", ""]
    md += [
        f"### FLOPs saving against {panel['baseline']} (matched top-1 on scratch's curve)",
        "",
        f"Saving = 1 − F / F_scratch(top-1): F_scratch is where scratch's monotone, log-linear curve of mean "
        f"top-1 over its {len(scratch)} budgets ({', '.join(_budget(s.budget) for s in scratch)} target "
        f"epochs) reaches the point's mean top-1. Positive: fewer FLOPs than scratch for the same accuracy. "
        f"'above' / 'below': the point lies outside scratch's range, so the saving is a bound (≥ / ≤). "
        f"Other curves: the same saving on a monotone cubic (PCHIP) through scratch's means and on a power law "
        f"(top-1 = a − b·F^−c) fitted to them, the curve model's systematic error beside the interval's "
        f"statistical one ('–': the point's mean lies outside that curve over scratch's range, or the power law "
        f"has fewer than 3 budgets or does not fit).",
        "",
        "| point | budget | seeds | top-1 | matched scratch FLOPs | saving | 95% interval | other curves: PCHIP / "
        "power | p (saving = 30%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    fresh = [n for n in panel["series"] if n not in savings]  # a series in two panels: counted once, in its first
    for name in panel["series"]:
        for p in series(points, name):
            s = saving_with_interval(scratch, p)
            if name in fresh:
                savings.setdefault(name, []).append((p, s))
            md.append(
                f"| {p.point} | {_budget(p.budget)} | {_seeds(p)} | {_top1(p)} | "
                f"{human_flops(p.flops_mean / (1 - s['saving']))} | {estimate_text(s)} | "
                f"{s['text']} | {_spread(s['spread'])} | {p_value(s['p30'])} |"
            )
    md.append("")
    together = {n: series_over_budgets(scratch, series(points, n)) for n in panel["series"]}
    if any(together.values()):
        md += [OVER_BUDGETS_NOTE, ""]
        md += [f"- {n}: {over_budgets_text(o)}." for n, o in together.items() if o]
        md.append("")
    md += _head_to_head(points, panel)
    verdict += [_verdict_line(name, panel, savings[name], together[name]) for name in fresh if savings.get(name)]
    verdict += pair_verdicts(points, panel)
    return md


def _spread(spread: dict) -> str:
    """``PCHIP / power`` savings of :func:`rbdc.report.saving.curve_spread` ('–' where a curve gives none)."""
    return " / ".join("–" if spread.get(k) is None else f"{100 * spread[k]:+.1f}%" for k in ("pchip", "power"))


def _estimate_and_interval(s: dict) -> str:
    """``+11.8% [-6.9%, +23.9%]``; for a point outside scratch's range the estimate is a bound and its interval
    one-sided: ``≤ -299.9%, interval ≤ -247.7%``, written once where the two coincide (``≤ -100.0%``)."""
    estimate = estimate_text(s)
    if s["status"] not in BOUND:
        return f"{estimate} {s['text']}"
    return estimate if s["text"] == estimate else f"{estimate}, interval {s['text']}"


def _verdict_line(name: str, panel: dict, rows: list, together: dict | None = None) -> str:
    words = "; ".join(
        f"b{_budget(p.budget)}: {_estimate_and_interval(s)} ({verdict_word(s['lo'], s['hi'])}"
        f"{OUTSIDE.get(s['status'], '')})"
        for p, s in rows
    )
    pays = [p for p, s in rows if s["lo"] > 0]
    paper = [p for p, s in rows if s["lo"] <= PAPER_SAVING <= s["hi"]]
    return (
        f"- **{name}** ({panel['title']}): {words}. "
        + (
            f"Its saving is above zero at budget(s) {', '.join(_budget(p.budget) for p in pays)} "
            f"of {', '.join(_budget(p.budget) for p, _ in rows)} target epochs. "
            if pays
            else "At no budget is its saving distinguishable from zero or better. "
        )
        + (
            f"The paper's 30% lies inside the interval at budget(s) {', '.join(_budget(p.budget) for p in paper)}."
            if paper
            else "The paper's 30% lies outside every interval."
        )
        + (f" Taken together, {over_budgets_text(together)}." if together else "")
    )


def _diff_cells(a: Point, b: Point) -> str:
    """``difference (95% Welch CI) | beyond seed noise`` of the mean top-1 a - b; the interval only where both have
    the seeds whose coverage is tested (:data:`.saving.MIN_SEEDS`)."""
    d, hw = welch(a.top1, b.top1) if enough_seeds(a.top1, b.top1) else (a.mean - b.mean, None)
    return f"{pm(d, hw)} | {'?' if hw is None else ('yes' if abs(d) > hw else 'no')}"


def _head_to_head(points: dict, panel: dict) -> list[str]:
    """Every pair of series of the panel at the same budget (equal FLOPs within 2%), RBDC first; a pair matched at
    two or more budgets also over those budgets, as one Welch contrast (:func:`.study.pair_contrast`)."""
    names = panel["series"]
    lines = [
        f"### Head to head at equal FLOPs ({panel['title']})",
        "",
        "| A | B | budget | FLOPs A / B | top-1 A − B (95% Welch CI) | beyond seed noise |",
        "|---|---|---|---|---|---|",
    ]
    n = 0
    for i, a_name in enumerate(names):
        for b_name in names[i + 1 :]:
            matched = matched_pairs(points, a_name, b_name)
            for a, b in matched:
                lines.append(
                    f"| {a.point} | {b.point} | {_budget(a.budget)} | {a.flops_mean / b.flops_mean:.3f} |"
                    f" {_diff_cells(a, b)} |"
                )
            n += len(matched)
            if both := pair_contrast(a_name, b_name, matched):
                g = both["gap"].gap
                lines.append(
                    f"| {a_name} | {b_name} | mean over {', '.join(_budget(a.budget) for a, _ in matched)} | "
                    f"{statistics.mean(a.flops_mean / b.flops_mean for a, b in matched):.3f} | "
                    f"{pm(g.gap, g.hi - g.gap)}, {p_value(both['gap'].p, stated=True)} | "
                    f"{'yes' if g.lo > 0 or g.hi < 0 else 'no'} |"
                )
    return lines + [""] if n else []


def pair_verdicts(points: dict, panel: dict) -> list[str]:
    """The verdict's head-to-head line of a panel (:func:`.study.panel_pairs`)."""
    found = panel_pairs(points, panel)
    return [f"- **Head to head** ({panel['title']}): {'; '.join(pair_text(o) for o in found)}."] if found else []


def coupled_table(points: dict, spec: dict) -> list[str]:
    """The coupled (grown) model's top-1 before further training, against its parts' final top-1 (the parts: the
    stage's parents in the run's manifest)."""
    lines = [
        "## The coupled model before further training",
        "",
        "Top-1 of the model right after coupling (or growing), before its first step, and the mean final top-1 "
        "of the parts it was built from (its parents in the run's manifest): how much plain-LayerNorm coupling "
        "loses (grouped LN is exact).",
        "",
        "| point | budget | stage | seeds | parts' final top-1 | coupled top-1 before training |",
        "|---|---|---|---|---|---|",
    ]
    n = 0
    names = [n_ for panel in spec.get("panels", []) for n_ in panel["series"]]
    names += [p for c in spec.get("compare", []) for p in (c["reference"], *c["points"])]
    for name in dict.fromkeys(names):
        for p in series(points, name):
            before, parts = _before_and_parts(p)
            for stage in sorted(before):
                part = f"{statistics.mean(parts[stage]):.2f}" if parts.get(stage) else "–"
                lines.append(
                    f"| {p.point} | {_budget(p.budget)} | {stage} | {len(before[stage])} | {part} | "
                    f"{statistics.mean(before[stage]):.2f} |"
                )
                n += 1
    return lines + [""] if n else []


def _before_and_parts(p: Point) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per coupled stage: its top-1 before training in each run, and the mean final top-1 of its parents."""
    before: dict[str, list[float]] = {}
    parts: dict[str, list[float]] = {}
    for run in p.runs:
        finals = {stage: top1 for stage, _, top1 in run.curve if math.isfinite(top1)}  # each stage's last eval
        parents = run.parents()
        for stage, top1 in (run.results.get("coupled_top1_before_training") or {}).items():
            before.setdefault(stage, []).append(float(top1))
            mine = [s for s in parents.get(stage, ()) if s in finals]
            if mine:
                parts.setdefault(stage, []).append(statistics.mean(finals[s] for s in mine))
    return before, parts


RATIO_MEANING = {
    "epochs": "each narrow model trains r × the epochs of the model it is coupled into",
    "flops": "level l spends r × the FLOPs of level l + 1",
}


def ratio_meaning(p: Point, key: str) -> str:
    """What the ratio ``key`` means for the point's recipe (its ``<key>_type``)."""
    kind = recipe_value(p, key + "_type")
    return RATIO_MEANING.get(kind, f"{key} ({key}_type {kind})")


def ratio_section(points: dict, spec: dict, out: Path) -> list[str]:
    rows = [p for name in spec["points"] for p in series(points, name) if p.budget == spec["budget"]]
    rows = sorted(rows, key=lambda p: recipe_value(p, spec["key"]))
    meaning = f" The ratio r ({spec['key']}): {ratio_meaning(rows[0], spec['key'])}." if rows else ""
    lines = [
        f"## Top-1 vs training ratio at budget {spec['budget']:g} (Fig. 3)",
        "",
        f"![Fig. 3]({out.name}-fig3.png)",
        "",
        f"Every point at the same training FLOPs; the band in the figure is scratch at the same budget.{meaning}",
        "",
        f"| point | {spec['key']} | seeds | epochs per level | train FLOPs | top-1 (95% CI) |",
        "|---|---|---|---|---|---|",
    ]
    for p in rows:
        lines.append(
            f"| {p.point} | {recipe_value(p, spec['key']):g} | {_seeds(p)} | {p.label()} | "
            f"{human_flops(p.flops_mean)} | {_top1(p)} |"
        )
    return lines + [""]


def compare_section(points: dict, spec: dict) -> list[str]:
    ref = [p for p in series(points, spec["reference"]) if p.budget == spec["budget"]]
    lines = [
        f"## {spec['title']}",
        "",
        f"Each point against {spec['reference']} at budget {spec['budget']:g}.",
        "",
        "| point | seeds | top-1 (95% CI) | − reference (95% Welch CI) | beyond seed noise |",
        "|---|---|---|---|---|",
    ]
    if not ref:
        return lines + [f"| (reference {spec['reference']} not finished) | | | | |", ""]
    lines.append(f"| {spec['reference']} (reference) | {_seeds(ref[0])} | {_top1(ref[0])} | | |")
    for name in spec["points"]:
        for p in series(points, name):
            if p.budget == spec["budget"]:
                lines.append(f"| {p.point} | {_seeds(p)} | {_top1(p)} | {_diff_cells(p, ref[0])} |")
    return lines + [""]


def _cpu_path(env: dict, amp: str) -> tuple[str, str] | None:
    cpu = env.get("cpu")
    if not cpu:
        return None
    if amp != "bf16":
        return cpu_name(cpu), "- (fp32 run)"
    return cpu_name(cpu), cpu.get("bf16_matmul") or ("onednn" if cpu.get("bf16_fast") else "torch fallback")


def hardware_section(points: dict, study: Study) -> list[str]:
    """Which CPU (and, for bf16 runs, which matmul path) each finished run recorded, with the speed it logged."""
    groups: dict[tuple[str, str], list] = {}
    for p in points.values():
        for r in p.runs:
            amp = load_yaml((r.path / rundir.RECIPE).read_text()).get("amp")
            paths = sorted({c for c in (_cpu_path(e, amp) for e in rundir.recorded_envs(r.path)) if c})
            key = (
                (" + ".join(sorted({c for c, _ in paths})), " + ".join(sorted({m for _, m in paths})))
                if paths
                else ("not recorded", "")
            )
            groups.setdefault(key, []).append(r)
    if list(groups) == [("not recorded", "")]:
        return []
    lines = [
        "## Where the runs ran",
        "",
        "The CPU each run's `command.txt` records: its model (runs made since the model was recorded) and "
        "torch's capability, and, for bf16 runs, how autocast's "
        "matmuls ran: `onednn` kernels, or `fp32-rounded` (rbdc/training/bf16.py: fp32 GEMMs of bf16-rounded "
        "operands, "
        "rounded to bf16, equal to oneDNN's up to the fp32 summation order; what CPUs without bf16 kernels "
        f"run). img/s: median over the epochs of each run's final model (summary.csv), at the threads it "
        f"recorded, {study.jobs} run(s) at a time.",
        "",
        "| CPU | bf16 matmuls | runs | median img/s (final model) |",
        "|---|---|---|---|",
    ]
    for (cpu, path), runs in sorted(groups.items()):
        speeds = [
            float(row["img_per_s"])
            for r in runs
            for row in rundir.read_summary(r.path / rundir.SUMMARY)[1]
            if row.get("img_per_s") and row.get("model") == r.results.get("model")
        ]
        lines.append(f"| {cpu} | {path} | {len(runs)} | {f'{statistics.median(speeds):,.0f}' if speeds else '-'} |")
    return lines + [""]
