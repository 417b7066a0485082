"""The report of a study (``rbdc study STUDY.yaml --report``): the paper's Fig. 2 and Fig. 3 analogues, the FLOPs
saving against scratch at every budget with a test-inversion interval over seeds, the cost in FLOPs and wall-clock,
head-to-head comparisons at equal FLOPs, the coupled models before further training, and a verdict in plain words.

What it shows is declared in the study file's ``report:`` section::

    report:
      title: ...
      panels:        # Fig. 2, one panel per target: the scratch point (the curve to match) and the other series
        - {title: ViT-nano, baseline: vit-scratch, series: [vit-rbdc-d1, vit-rbdc-d2, vit-net2net]}
      ratio: {key: rbdc.ratio, budget: 16, points: [vit-rbdc-d1-ratio1, vit-rbdc-d1, vit-rbdc-d1-ratio3]}
      compare:       # each point against a reference point at one budget
        - {title: Ablations, reference: vit-rbdc-d1, budget: 16, points: [vit-rbdc-d1-continue]}

Every number comes from the run directories' ``results.json`` / ``summary.csv`` / ``recipe.yaml`` /
``manifest.json`` and nothing draws random numbers, so the report regenerates byte for byte from the committed light
files. This module reads the study definitions (:mod:`rbdc.studies.study`); the study module never imports its report.
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from rbdc.runs import rundir
from rbdc.errors import UserError
from rbdc.recipe import load_yaml
from rbdc.runs.rundir import atomic_write_bytes
from rbdc.studies.spec import Study

from .fmt import budget as _budget
from .fmt import rel
from .fmt import signed_pct
from .load import discover_run_dirs, load_run
from .saving import MIN_SEEDS, curve_spread, enough_seeds, over_budgets, p_value_saving, pair_over_budgets
from .saving import saving_interval
from .stats import matched_flops, t_half_width

PAPER_SAVING = 0.30


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
    def shown(self) -> bool:
        """Whether the report counts this point yet: once it has :data:`.saving.MIN_SEEDS` finished seeds (the
        fewest whose intervals' coverage is tested), or all of them where the study asks fewer. A point still
        running below that is only listed as unfinished, so it can neither move scratch's curve nor take away the
        intervals of the points compared against it."""
        return self.n > 0 and self.n >= min(MIN_SEEDS, self.expected_seeds)

    @property
    def half_width(self) -> float | None:
        """Half width of the 95% t-interval of the mean over seeds (None with one seed)."""
        return t_half_width(self.top1)

    @property
    def flops_mean(self) -> float:
        return statistics.mean(self.flops)

    def label(self) -> str:
        """Epochs per level, as the paper writes on its points (e.g. ``21.3+10.7`` for two levels); a level's stages
        (its parts) train the same epochs, and the levels come from the run's manifest."""
        run = self.runs[0]
        levels = run.levels()
        epochs: dict[int, float] = {}
        for s in run.results.get("stages") or []:
            epochs.setdefault(levels.get(s["stage"], len(epochs)), s["epochs"])
        return "+".join(f"{e:.3g}" for _, e in sorted(epochs.items()))


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
            print(
                f"left out {r.name} seed {r.seed}: its recipe differs from the study file's (rbdc study --list)",
                file=sys.stderr,
            )
            continue
        p.protocol = run.protocol
        p.top1.append(float(run.results["eval_top1"]))
        p.flops.append(float(run.results["total_train_flops"]))
        p.seeds.append(int(run.results["seed"]))
        p.runs.append(run)
    return points


def series(points: dict, point: str) -> list[Point]:
    """The budgets of one study point that the report counts (:attr:`Point.shown`), by FLOPs."""
    return sorted((p for (name, _), p in points.items() if name == point and p.shown), key=lambda p: p.flops_mean)


def saving_with_interval(scratch: list[Point], p: Point, flops: float | None = None) -> dict:
    """Saving 1 - F / F_matched of ``p`` on scratch's curve, its test-inversion 95% interval
    (:func:`rbdc.report.saving.saving_interval`: Welch t, coverage tested at 3 to 5 seeds) and the p-value of the
    paper's 30%, plus the point estimate under two other scratch curves (``spread``: PCHIP and a power law, the
    curve model's systematic error, :func:`rbdc.report.saving.curve_spread`). ``flops``: the FLOPs to count
    (default: the point's whole pipeline). An open end of the interval (it reaches the edge of scratch's range) is
    -inf / +inf here; a point outside scratch's range has a bound (the range's edge) as its saving."""
    flops = p.flops_mean if flops is None else flops
    curve = [(s.flops_mean, s.mean) for s in scratch]
    m = matched_flops(curve, p.mean)
    est, status = 1.0 - flops / m.flops, m.status
    if not enough_seeds(p.top1, *(s.top1 for s in scratch)):
        return {
            "saving": est,
            "status": status,
            "lo": -math.inf,
            "hi": math.inf,
            "text": f"– (under {MIN_SEEDS} seeds)",
            "p30": None,
            "spread": {},
        }
    runs = [(s.flops_mean, s.top1) for s in scratch]
    iv = saving_interval(runs, p.top1, flops)
    return {
        "saving": est,
        "status": status,
        "lo": -math.inf if iv.lo_open else iv.lo,
        "hi": math.inf if iv.hi_open else iv.hi,
        "text": iv.text(),
        "p30": p_value_saving(runs, p.top1, flops, PAPER_SAVING),
        "spread": curve_spread(runs, p.top1, flops),
    }


def series_over_budgets(scratch: list[Point], pts: list[Point]) -> dict | None:
    """A series' points taken together against scratch's curve (:func:`rbdc.report.saving.over_budgets`, one test
    each, exact for points sharing that curve): ``gap``, the mean top-1 gap at equal FLOPs with its 95% interval,
    and ``p30``, the p-value of the paper's 30% at every budget. None with a one-seed group or no point in range."""
    if not pts or not enough_seeds(*(x.top1 for x in [*scratch, *pts])):
        return None
    runs, pairs = [(s.flops_mean, s.top1) for s in scratch], [(p.top1, p.flops_mean) for p in pts]
    gap, p30 = over_budgets(runs, pairs, 0.0), over_budgets(runs, pairs, PAPER_SAVING)
    return None if gap is None and p30 is None else {"gap": gap, "p30": p30, "points": pts}


def matched_pairs(points: dict, a_name: str, b_name: str) -> list[tuple[Point, Point]]:
    """The budgets both series ran, at equal FLOPs (within 2%): ``[(a's point, b's point), ...]`` by FLOPs."""
    return [
        (a, b)
        for a in series(points, a_name)
        for b in series(points, b_name)
        if a.budget == b.budget and abs(a.flops_mean / b.flops_mean - 1) <= 0.02
    ]


def pair_contrast(a_name: str, b_name: str, pairs: list[tuple[Point, Point]]) -> dict | None:
    """Two series head to head over ``pairs`` (:func:`matched_pairs`) as one Welch contrast
    (:func:`rbdc.report.saving.pair_over_budgets`): ``gap`` (top-1 a − b, mean over the budgets, at equal FLOPs),
    ``pairs``. None below two shared budgets (the per-budget row says it all) or with a one-seed group."""
    both = pair_over_budgets([(a.top1, b.top1) for a, b in pairs]) if len(pairs) > 1 else None
    return None if both is None else {"a": a_name, "b": b_name, "gap": both, "pairs": pairs}


def panel_pairs(points: dict, panel: dict) -> list[dict]:
    """A panel's head-to-head contrasts over shared budgets (:func:`pair_contrast`), each with its ``question``: the
    pairs its ``asks`` names (an ablation separating two causes asks one question per pair), else its first series
    against each other one (the paper's "wins over growth methods at equal FLOPs"; ``question`` None)."""
    if not panel["series"]:
        return []
    first, *others = panel["series"]
    asks = panel.get("asks") or [{"a": first, "b": b, "question": None} for b in others]
    return [
        o | {"question": q["question"]}
        for q in asks
        if (o := pair_contrast(q["a"], q["b"], matched_pairs(points, q["a"], q["b"])))
    ]


BOUND = {"above_range": "≥ ", "below_range": "≤ "}
OUTSIDE = {"above_range": ", above scratch's whole curve", "below_range": ", below scratch's whole curve"}


def estimate_text(s: dict) -> str:
    """A saving's estimate, e.g. ``+11.8%``; ``≥ `` / ``≤ `` before it where the point lies outside scratch's range
    (the estimate is then a bound)."""
    return f"{BOUND.get(s['status'], '')}{signed_pct(s['saving'])}"


def verdict_word(lo: float, hi: float) -> str:
    if lo > 0:
        return "saves FLOPs"
    if hi < 0:
        return "needs more FLOPs than scratch"
    return "no saving distinguishable from zero"


def build(study: Study, root: Path, out: Path, project: Path | None = None) -> dict[str, Path]:
    """Write ``<out>.md`` and the figures ``<out>-fig2.png``, ``-fig3.png``, ``-saving.png``. The report names the
    study file relative to ``project`` (default: the current working directory, where ``rbdc study --report`` runs),
    so its command reads as one types it there; make_reports passes the checkout."""
    from . import cost, headline, study_figures, study_sections as sec, study_tuning  # a cycle: they import its types

    spec = read_report_spec(study)
    points = collect(study, root)
    out.parent.mkdir(parents=True, exist_ok=True)
    savings: dict[str, list[tuple[Point, dict]]] = {}
    panels: list[str] = []
    verdict: list[str] = []
    for panel in spec.get("panels", []):
        panels += sec.panel_section(points, panel, savings, verdict)
    costs = cost.costs(points, spec, savings)
    md = _opening(study, spec, points, root, out, Path.cwd() if project is None else project)
    choices = study_tuning.tuned_choices(study, root)  # read once: the headline's caveat and the settings line
    edges = {pid: chosen[1] for pid, chosen in choices.items() if chosen}
    md += headline.section(spec, points, savings, costs, out, edges)
    if study_figures.has_panel_runs(points, spec):
        md += [f"![Fig. 2: top-1 vs training FLOPs]({out.name}-fig2.png)", "", study_figures.FIG2_NOTE, ""]
    # after Fig. 2: the headline (copied into the README) ends at the figure
    md += study_tuning.tuned_settings(choices)
    md += panels
    md += cost.section(costs)
    md += study_tuning.tuning_section(study, root)
    md += sec.coupled_table(points, spec)
    if spec.get("ratio"):
        md += sec.ratio_section(points, spec["ratio"], out)
    for comp in spec.get("compare", []):
        md += sec.compare_section(points, comp)
    md += cost.measured_section(points, study)
    md += sec.hardware_section(points, study)
    if spec.get("panels"):  # a study of comparisons only (e.g. a lever's accuracy check) answers in its tables
        md += ["## Verdict", ""]
        md += in_short(savings, headline.subject(spec, savings)) + (
            verdict or ["Not enough finished runs for a verdict yet."]
        )
        md += [
            "",
            "Each verdict line is computed from the table above it: 'saves FLOPs' where the whole 95% "
            "interval of the saving is above zero. It says nothing about scales this study did not run (ImageNet, "
            "224 px, 300 epochs).",
            "",
        ]
    paths = {"md": out.with_name(out.name + ".md")}
    atomic_write_bytes(paths["md"], "\n".join(md).encode("utf-8"))
    paths.update(study_figures.figures(points, spec, savings, out))
    return paths


def _opening(study: Study, spec: dict, points: dict, root: Path, out: Path, project: Path) -> list[str]:
    """Title, description, where the numbers come from, and what has not finished yet."""
    done = sum(p.n for p in points.values())
    total = sum(p.expected_seeds for p in points.values())
    md = [f"# {spec.get('title') or study.name}", ""]
    if study.description:
        md += [study.description, ""]
    md += [
        f"Generated by `rbdc study {rel(study.path, project)} --report` from {done} of {total} runs "
        f"(`results.json` of each run directory under `{rel(root, out.parent)}`, relative to this file). "
        f"Intervals: 95% t-interval of the mean over "
        f"seeds (points, differences: Welch); savings: 95% interval by test inversion (every saving a Welch "
        f"t-test of the point against scratch's curve does not reject; it covered 94-97% of the true savings in "
        f"simulated studies at 3 to 5 seeds a group, where the percentile bootstrap covered 78% at 3: "
        f"tests/test_saving_interval.py). A point counts from {MIN_SEEDS} finished seeds (or all, where the study "
        f"asks fewer). An end written ≥ / ≤ reaches the edge of scratch's range: only the "
        f"other side is bounded. No number here depends on a random draw.",
        "",
    ]
    if done < total:
        missing = [
            f"{p.point} b{_budget(p.budget)} ({p.expected_seeds - p.n}"
            + (f"; its {p.n} finished not counted yet" if p.n and not p.shown else "")
            + ")"
            for p in points.values()
            if p.n < p.expected_seeds
        ]
        md += [f"**Incomplete**: {total - done} runs not finished yet: {', '.join(missing)}.", ""]
    return md


def in_short(savings: dict[str, list], subject: list) -> list[str]:
    """One plain paragraph over every series: where the paper's 30% falls among the method's own points
    (``subject``: :func:`rbdc.report.headline.subject`; a baseline's interval holding 30% says nothing of the
    paper's claim), and which points of any series save FLOPs."""
    rows = [(name, p, s) for name, pts in savings.items() for p, s in pts]
    if not rows:
        return []
    inside = [f"{n} b{_budget(p.budget)}" for n, p, s in subject if s["lo"] <= PAPER_SAVING <= s["hi"]]
    saves = [f"{n} b{_budget(p.budget)} ({100 * s['saving']:+.1f}%)" for n, p, s in rows if s["lo"] > 0]
    worse = [f"{n} b{_budget(p.budget)}" for n, p, s in rows if s["hi"] < 0]
    return [
        "**In short**: the paper's 30% saving lies inside "
        + (f"the 95% interval of {', '.join(inside)}" if inside else f"none of the method's {len(subject)} intervals")
        + ". Saving FLOPs beyond seed noise: "
        + (", ".join(saves) if saves else "no point")
        + ". Needing more FLOPs than scratch: "
        + (", ".join(worse) if worse else "no point")
        + ". Every other point's saving is not distinguishable from zero with its seeds.",
        "",
    ]


def recipe_value(p: Point, key: str, default=None):
    """A dotted key (e.g. ``rbdc.ratio``) of the point's first run's resolved recipe."""
    node = load_yaml((p.runs[0].path / rundir.RECIPE).read_text())
    for k in key.split("."):
        if not isinstance(node, dict) or k not in node:
            return default
        node = node[k]
    return node


def read_report_spec(study: Study) -> dict:
    data = load_yaml(study.path.read_text()) or {}
    spec = data.get("report") or {}
    known = set(study.points)
    names = [n for p in spec.get("panels", []) for n in (p["baseline"], *p["series"])]
    names += list(spec.get("ratio", {}).get("points", []))
    names += [n for c in spec.get("compare", []) for n in (c["reference"], *c["points"])]
    bad = [n for n in names if n not in known]
    if bad:
        raise UserError(
            f"{study.path}: report names point(s) {bad} that the study does not define "
            f"(points: {', '.join(study.points)})"
        )
    for i, panel in enumerate(spec.get("panels", [])):
        _check_asks(study.path, f"report.panels[{i}]", panel)
    return spec


def _check_asks(path: Path, where: str, panel: dict) -> None:
    """A panel's ``asks``: each a pair of two of its series and the question the pair answers, in words."""
    for j, q in enumerate(panel.get("asks") or []):
        field = f"{where}.asks[{j}]"
        if not isinstance(q, dict) or set(q) != {"a", "b", "question"}:
            raise UserError(f"{path}: {field} must be {{a: SERIES, b: SERIES, question: WORDS}}, got {q!r}")
        for k in ("a", "b"):
            if q[k] not in panel["series"]:
                raise UserError(f"{path}: {field}.{k}: {q[k]!r} is not one of the panel's series {panel['series']}")
        if q["a"] == q["b"] or not isinstance(q["question"], str) or not q["question"].strip():
            raise UserError(f"{path}: {field}: a and b must differ and question must say in words what they ask")
