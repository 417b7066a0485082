"""A study's headline: three lines on what it found at which scale, its figure and a link to the report.

The study report writes them (its ``## Headline`` section), computed from the same savings as its tables;
``benchmarks.make_reports`` copies them into the README between :data:`START` and :data:`END`, with the links made
relative to the README, so the README's numbers are the report's (a test checks that they agree).
"""

from __future__ import annotations

import re
import statistics

from rbdc import protocols
from rbdc.errors import UserError
from rbdc.studies.tuning import is_trial_point

from .fmt import budget as _budget
from .fmt import p_value, signed_pct
from .cost import saving_text
from .study import OUTSIDE, PAPER_SAVING, panel_pairs
from .study_sections import ahead

TITLE = "## Headline"
START = "<!-- headline: written by `python -m benchmarks.make_reports` from {source}; edits here are overwritten -->"
END = "<!-- /headline -->"


def subject(spec: dict, savings: dict) -> list[tuple[str, object, dict]]:
    """``(series, point, saving)`` of the method under study (the registry's subject protocol), once each, from the
    model panels only (:func:`_model_panels`): an ablation shown in a later panel on the same scratch (e.g. the
    copies ablation, protocol rbdc) is not one of the method's points."""
    names = {n for pn in _model_panels(spec, savings) for n in pn["series"]}
    return [
        (n, p, s) for n, rows in savings.items() if n in names for p, s in rows if protocols.get(p.protocol).subject
    ]


def _scale(spec: dict, points: dict, savings: dict) -> str:
    """Dataset, image size, models, budgets, seeds and runs of the study, from its runs; the tuning trials' runs
    are counted apart (their seeds and budgets are not the reported points')."""
    trials = sum(p.n for p in points.values() if is_trial_point(p.point))
    done = [p for p in points.values() if p.shown and not is_trial_point(p.point)]
    first = done[0].runs[0].results
    size = f" at {first['img_size']} px" if first.get("img_size") else ""
    models = " and ".join(_models(spec, savings))
    budgets = sorted(p.budget for p in done if p.budget is not None)
    seeds = sorted({p.n for p in done})
    return (
        f"{first['dataset'].capitalize()}{size}, {models}, budgets of {_budget(budgets[0])} to "
        f"{_budget(budgets[-1])} target epochs, {'-'.join(map(str, seeds))} seeds a point, "
        f"{sum(p.n for p in done)} runs on CPUs" + (f" after {trials} tuning runs" if trials else "")
    )


def _model_panels(spec: dict, savings: dict) -> list[dict]:
    """Each panel with a saving that compares against a scratch no earlier such panel used: one per model (a later
    panel on the same scratch, e.g. an ablation, is not another model)."""
    panels, seen = [], set()
    for pn in spec.get("panels", []):
        if any(n in savings for n in pn["series"]) and pn["baseline"] not in seen:
            seen.add(pn["baseline"])
            panels.append(pn)
    return panels


def _models(spec: dict, savings: dict) -> list[str]:
    """The title of each model panel (:func:`_model_panels`)."""
    return [pn["title"] for pn in _model_panels(spec, savings)]


def _ablations(spec: dict, points: dict, savings: dict) -> list[tuple[dict, str]]:
    """Each panel beyond the model panels (an ablation or anchor on a scratch already shown) with its head-to-head
    pairs in the headline's words (:func:`_pairs_text`)."""
    models = [pn["title"] for pn in _model_panels(spec, savings)]
    found = [(pn, panel_pairs(points, pn)) for pn in spec.get("panels", []) if pn["title"] not in models]
    return [(pn, _pairs_text(pairs)) for pn, pairs in found if pairs]


def _budgets(o: dict) -> str:
    return f"over budgets {', '.join(_budget(a.budget) for a, _ in o['pairs'])}"


def _pairs_text(pairs: list[dict]) -> str:
    """The headline's short form of a panel's pairs (the verdict keeps the long form,
    :func:`.study_sections.pair_text`): who is ahead and by how much, or "not distinguishable" with the difference;
    the budgets said once where every pair shares them. E.g. ``top-1 at equal FLOPs over budgets 8, 16, 32: RBDC or
    HyperCloning: vit-hypercloning ahead by 0.69 ± 0.49, p = 0.009; ...``."""
    shared = len({_budgets(o) for o in pairs}) == 1
    said = []
    for o in pairs:
        g, p, who = o["gap"].gap, p_value(o["gap"].p, stated=True), ahead(o)
        half = f"{g.hi - g.gap:.2f}"
        words = (
            f"{who} ahead by {abs(g.gap):.2f} ± {half}, {p}"
            if who
            else f"not distinguishable ({o['a']} − {o['b']}: {g.gap:+.2f} ± {half}, {p})"
        )
        question = f"{o['question']}: " if o.get("question") else ""
        said.append(question + words + ("" if shared else f" {_budgets(o)}"))
    return f"top-1 at equal FLOPs{' ' + _budgets(pairs[0]) if shared else ''}: {'; '.join(said)}"


def _span(values: list[float]) -> str:
    return f"{signed_pct(min(values))} to {signed_pct(max(values))}"


def _tuning_caveat(panels: list[dict], edges: dict[str, list[str]]) -> str:
    """A sentence naming the points of ``panels`` (series and baselines) tuned at the edge of their grid."""
    by_edge: dict[str, list[str]] = {}
    for name in dict.fromkeys(n for pn in panels for n in (pn["baseline"], *pn["series"])):
        for edge in edges.get(name, ()):
            by_edge.setdefault(edge, []).append(name)
    if not by_edge:
        return ""
    said = [f"{', '.join(ns[:-1])} and {ns[-1]}" if len(ns) > 1 else ns[0] for ns in by_edge.values()]
    parts = [f"{who} ran at the {edge}" for who, edge in zip(said, by_edge)]
    return f" Tuning caveat: {'; '.join(parts)}; a value past the grid may do better."


def lines(
    spec: dict, points: dict, savings: dict, costs: list, out_name: str, edges: dict[str, list[str]] | None = None
) -> list[str]:
    """The three lines (Markdown; links relative to the report's folder); empty without a saving of the method.
    ``edges``: per tuned point, where its chosen setting sits at its grid's edge (named in a caveat)."""
    rows = subject(spec, savings)
    if not rows:
        return []
    n = len(rows)
    above = sum(s["lo"] > 0 for _, _, s in rows)
    below = sum(s["hi"] < 0 for _, _, s in rows)
    paper = sum(s["lo"] <= PAPER_SAVING <= s["hi"] for _, _, s in rows)
    name, p, s = max(rows, key=lambda r: r[2]["lo"])
    ablations = _ablations(spec, points, savings)  # their pairs' tests, computed once for the text and the caveat
    its = f"its {n} point" + ("s" if n != 1 else "")
    found = (
        f"above zero at {above} and below zero at {below} of {its}"
        if above or below
        else f"not distinguishable from zero at any of {its}"
    )
    first = (
        f"**What the suite found** ({_scale(spec, points, savings)}): RBDC's FLOPs saving against scratch at "
        f"equal top-1, whole pipeline counted, is {found} (95% intervals by test inversion); the closest to a "
        f"demonstrated saving is {name} at budget {_budget(p.budget)}: {saving_text(s)}"
        f"{OUTSIDE.get(s['status'], '')}. The paper's 30% lies outside {n - paper} of the "
        f"{n} interval" + ("s" if n != 1 else "") + "."
    ) + "".join(f" Head to head ({pn['title']}): {text}." for pn, text in ablations)
    panels = _model_panels(spec, savings) + [pn for pn, _ in ablations]
    first += _tuning_caveat(panels, edges or {})
    names = {name for name, _, _ in rows}
    mine = [c for _, c in costs if c.point.point in names]  # the subject's points of the model panels, as above
    target = [c.target["saving"] for c in mine]
    walls = [c.wall_own["saving"] for c in mine if c.wall_own]
    speeds = [c.speed for c in mine if c.speed is not None]
    second = (
        f"**Cost in both currencies**: counting the target stage only (as most growth papers do), the same "
        f"points save {_span(target)} of the FLOPs"
        + (
            f"; in wall-clock, at the full model's speed inside the same runs, the saving is {_span(walls)}: "
            f"the narrow models ran at a median {statistics.median(speeds):.2f}× the full model's FLOP/s"
            if walls and speeds
            else ""
        )
        + "."
    )
    third = f"![saving vs budget]({out_name}-saving.png) Tables, intervals and method: [{out_name}.md]({out_name}.md)."
    return [first, second, third]


def section(spec: dict, points: dict, savings: dict, costs: list, out, edges: dict | None = None) -> list[str]:
    found = lines(spec, points, savings, costs, out.name, edges)
    return [TITLE, "", *(x for line in found for x in (line, ""))] if found else []


def extract(md: str) -> list[str]:
    """The headline lines of a study report's Markdown."""
    m = re.search(rf"^{TITLE}\n\n(.*?)(?=\n## |\n!\[Fig)", md, re.S | re.M)
    if not m:
        raise UserError(f"the report has no '{TITLE}' section: regenerate it (python -m benchmarks.make_reports)")
    return [line for line in m.group(1).split("\n") if line]


def readme_block(found: list[str], prefix: str, source: str, note: str = "") -> str:
    """The README's block: the report's lines with relative links prefixed by ``prefix`` (the report's folder
    seen from the README), and ``note`` (which study is the source, and why)."""
    linked = [re.sub(r"\]\((?!https?:|/|#)([^)]+)\)", lambda m: f"]({prefix}{m.group(1)})", line) for line in found]
    body = "\n\n".join(linked[:-1] + ([f"{linked[-1]} {note}".rstrip()] if linked else []))
    return f"{START.format(source=source)}\n{body}\n{END}"


def fill(readme: str, block: str) -> str:
    """``readme`` with the text between the headline markers replaced by ``block``."""
    start = re.escape(START.split("{source}")[0])
    pattern = re.compile(rf"{start}.*?{re.escape(END)}", re.S)
    if not pattern.search(readme):
        raise UserError(f"README.md has no headline markers ('{START.split('{source}')[0]}...' and '{END}')")
    return pattern.sub(lambda _: block, readme, count=1)
