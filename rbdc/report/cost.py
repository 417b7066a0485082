"""A study's cost in both currencies: the FLOPs saving counted over the whole pipeline (every model trained, narrow
ones included: the headline) and over the target stage only (how most growth papers count), and the saving in
wall-clock on the CPU that ran the runs, from the runs' own per-stage walls; plus the measured cost of the study.

Wall-clock at equal top-1: scratch's wall to reach the point's top-1 is the matched FLOPs at a measured speed of the
full model, two ways: the speed the run's own target stage reached (same run, same load on the cores), or the speed
of scratch's runs on the same CPU model (all their FLOPs over all their walls; runs that recorded only the CPU's
capability, before the model was recorded, are not compared: AVX512 alone spans machines up to 3x apart). The wall
saving is then ``1 - (1 - s) * rho`` for the FLOPs saving ``s``, ``rho`` = the point's seconds per FLOP over the
reference's; its interval is the FLOPs saving's test-inversion interval carried through that map at the mean ``rho``
(the map is monotone), and ``rho``'s range over the point's runs is shown beside it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from rbdc.runs import rundir
from rbdc.studies.spec import Study

from .fmt import DASH, signed_pct
from .fmt import budget as _budget
from .study import Point, estimate_text, saving_with_interval, series


def cpu_name(cpu: dict) -> str:
    """A recorded CPU (a run's ``command.txt``): its model and capability, or the capability alone where the run
    predates recording the model."""
    return f"{cpu['model']} {cpu['capability']}" if cpu.get("model") else cpu["capability"]


def _cpu_record(run) -> tuple[str, bool]:
    """What the run's ``command.txt`` records of its CPU, read once: :func:`cpu_kind`'s text, and whether every start
    recorded the CPU's model (only then do two runs' walls compare: one capability, e.g. AVX512, spans machines up
    to 3x apart in speed)."""
    cpus = [e.get("cpu") for e in rundir.recorded_envs(run.path)]
    names = sorted({cpu_name(c) for c in cpus if c})
    return (" + ".join(names) if names else "not recorded"), bool(cpus) and all(c and c.get("model") for c in cpus)


def cpu_kind(run) -> str:
    """The CPU the run's ``command.txt`` records: its model and capability, e.g. ``AMD EPYC (26-2) AVX512``, or the
    capability alone where the run predates recording the model (several when it was resumed elsewhere)."""
    return _cpu_record(run)[0]


def target_flops(run) -> float:
    """Training FLOPs of the stages that train the target model itself (the run's model), narrow ones left out."""
    return float(
        sum(s["train_flops"] for s in run.results.get("stages") or [] if s.get("model") == run.results["model"])
    )


def stage_walls(run) -> dict[str, float]:
    """Training seconds of each stage (``summary.csv``'s wall_s is cumulative within a stage)."""
    walls: dict[str, float] = {}
    for row in rundir.read_summary(run.path / rundir.SUMMARY)[1]:
        if row.get("wall_s"):
            walls[row["stage"]] = max(walls.get(row["stage"], 0.0), float(row["wall_s"]))
    return walls


def _split(runs) -> dict[bool, list[float]]:
    """FLOPs and walls of the runs' stages, summed apart for the target stages (True) and the narrower ones."""
    f, w = {True: 0.0, False: 0.0}, {True: 0.0, False: 0.0}
    for run in runs:
        walls, target = stage_walls(run), run.results["model"]
        for s in run.results.get("stages") or []:
            if s["stage"] in walls:
                f[s.get("model") == target] += s["train_flops"]
                w[s.get("model") == target] += walls[s["stage"]]
    return {k: [f[k], w[k]] for k in f}


def narrow_speed(run) -> float | None:
    """FLOP/s of the stages below the target's width over the target stages' FLOP/s (None without both)."""
    (ft, wt), (fn, wn) = _split([run])[True], _split([run])[False]
    return (fn / wn) / (ft / wt) if wt > 0 and wn > 0 and ft > 0 else None


def _rate(runs) -> float:
    """FLOP/s of whole runs: their FLOPs over their training walls."""
    return sum(float(r.results["total_train_flops"]) for r in runs) / sum(float(r.results["wall_s"]) for r in runs)


def _own_rho(runs) -> float | None:
    """Seconds per FLOP of whole runs over those of their own target stages (None without a timed target stage)."""
    ft, wt = _split(runs)[True]
    return (ft / wt) / _rate(runs) if ft > 0 and wt > 0 else None


@dataclass
class Cost:
    """One point's cost against its panel's scratch. rho: the point's seconds per FLOP over the reference's (the
    full model's speed inside the same runs, or scratch's own runs on the same CPU model); a wall saving is a dict
    like a FLOPs saving (saving, lo, hi, status), None where not comparable (``why``)."""

    point: Point
    whole: dict  # the FLOPs saving, whole pipeline (saving_with_interval)
    target: dict  # the FLOPs saving, target stage only
    target_share: float  # target stage's FLOPs / the whole pipeline's
    kind: str  # CPU kind of the runs compared with scratch's runs
    walls: list[float]  # wall of each timed run of the point
    speed: float | None  # median narrow stages' FLOP/s over the target's
    rho_own: list[float]  # per run, against its own target stages
    wall_own: dict | None
    rho_runs: list[float]  # per run, against scratch's runs on the same CPU model
    wall_runs: dict | None
    why: str = ""


def _wall_saving(s: dict, rho: float) -> dict:
    f = lambda v: 1 - (1 - v) * rho if math.isfinite(v) else v  # noqa: E731  (monotone: open ends stay open)
    return {"saving": f(s["saving"]), "lo": f(s["lo"]), "hi": f(s["hi"]), "status": s["status"]}


def _by_count(kinds: list[str]) -> list[str]:
    """The distinct CPU kinds of ``kinds``, the most common first."""
    return sorted(set(kinds), key=lambda k: (-kinds.count(k), k))


def point_cost(scratch: list[Point], p: Point, whole: dict) -> Cost:
    share = statistics.mean(target_flops(r) / float(r.results["total_train_flops"]) for r in p.runs)
    target = saving_with_interval(scratch, p, statistics.mean(target_flops(r) for r in p.runs))
    speeds = [v for v in (narrow_speed(r) for r in p.runs) if v is not None]
    timed = [r for r in p.runs if r.results.get("wall_s")]
    ref_runs = [r for s in scratch for r in s.runs if r.results.get("wall_s")]
    cpu = {r.path: _cpu_record(r) for r in timed + ref_runs}  # (kind, model recorded) of each run

    def kind_of(r) -> str:
        return cpu[r.path][0]

    # only runs that named their CPU model compare with scratch's runs, and only with scratch's runs on that model
    named = [r for r in timed if cpu[r.path][1]]
    refs = [r for r in ref_runs if cpu[r.path][1]]
    kinds, ref_kinds = _by_count([kind_of(r) for r in named]), {kind_of(r) for r in refs}
    kind = next((k for k in kinds if k in ref_kinds), None)
    own = [v for v in (_own_rho([r]) for r in timed) if v is not None]
    rho = _own_rho(timed) if own else None
    c = Cost(
        p,
        whole,
        target,
        share,
        kind or next(iter(kinds or _by_count([kind_of(r) for r in timed])), "not recorded"),
        [float(r.results["wall_s"]) for r in timed],
        statistics.median(speeds) if speeds else None,
        own,
        None if rho is None else _wall_saving(whole, rho),
        [],
        None,
    )
    if not timed:
        c.why = "no wall recorded"
    elif not named:
        c.why = "CPU model not recorded, so scratch's runs may have run on another machine"
    elif kind is None:
        c.why = f"no scratch run on {c.kind}"
    else:
        mine = [r for r in named if kind_of(r) == kind]
        if len(mine) < len(timed):  # the others ran on another CPU or did not name it
            c.kind = f"{kind} ({len(mine)} of {len(timed)} runs)"
        rate = _rate([r for r in refs if kind_of(r) == kind])
        c.rho_runs = [rate / _rate([r]) for r in mine]
        c.wall_runs = _wall_saving(whole, rate / _rate(mine))
    return c


def costs(points: dict, spec: dict, savings: dict) -> list[tuple[str, Cost]]:
    """``(baseline, cost)`` of every series point of every panel with a saving (each pair once)."""
    out, seen = [], set()
    for panel in spec.get("panels", []):
        scratch = series(points, panel["baseline"])
        for name in panel["series"]:
            for p, s in savings.get(name, []):
                if (panel["baseline"], name, p.budget) not in seen and len(scratch) >= 2:
                    seen.add((panel["baseline"], name, p.budget))
                    out.append((panel["baseline"], point_cost(scratch, p, s)))
    return out


def interval_text(s: dict) -> str:
    """``[lo, hi]`` of a saving dict, ``(≥ lo)`` / ``(≤ hi)`` where an end is open, empty without an interval."""
    lo, hi = s["lo"], s["hi"]
    if not math.isfinite(lo) and not math.isfinite(hi):
        return ""
    if not math.isfinite(hi):
        return f"(≥ {signed_pct(lo)})"
    if not math.isfinite(lo):
        return f"(≤ {signed_pct(hi)})"
    return f"[{signed_pct(lo)}, {signed_pct(hi)}]"


def saving_text(s: dict | None, why: str = "") -> str:
    """A saving and its interval, e.g. ``+11.8% [-6.9%, +23.9%]``; a bound is marked ≥ / ≤."""
    if s is None:
        return f"{DASH} ({why})" if why else DASH
    return f"{estimate_text(s)} {interval_text(s)}".rstrip()


def _spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ({min(values):.2f}–{max(values):.2f})" if values else DASH


def section(rows: list[tuple[str, Cost]]) -> list[str]:
    """The FLOPs saving counted two ways, and the saving in wall-clock measured two ways."""
    if not rows:
        return []
    md = [
        "## Cost in both currencies",
        "",
        "**FLOPs, counted two ways** against the same matched scratch FLOPs: over the **whole pipeline** (every "
        "model the method trained, its narrow models included: the headline everywhere in this report) and over "
        "the **target stage only** (only the stages that train the target-size model: how most growth papers "
        "count, leaving out the smaller models they start from).",
        "",
        "| point | vs | budget | whole pipeline (95%) | target stage only (95%) | target stage's share of the FLOPs |",
        "|---|---|---|---|---|---|",
    ]
    for base, c in rows:
        md.append(
            f"| {c.point.point} | {base} | {_budget(c.point.budget)} | {saving_text(c.whole)} | "
            f"{saving_text(c.target)} | {100 * c.target_share:.0f}% |"
        )
    md += [
        "",
        "**Wall-clock** on the CPU that ran the runs (training time in `results.json` and per stage in "
        "`summary.csv`; evaluation and coupling left out), at equal top-1, two ways. *Own speed*: scratch would "
        "train the target model at the FLOP/s the run's own target stage reached (same run, same load). *Scratch's "
        "runs*: at the FLOP/s of scratch's runs on the same CPU model (all their FLOPs over all their walls); a run "
        "that recorded only its CPU's capability (before runs recorded the model) is not compared, since one "
        "capability (AVX512) spans machines up to 3x apart in speed. "
        "Saving = 1 − (1 − s) ρ for the FLOPs saving s, ρ = the point's seconds per FLOP over the reference's "
        "(mean, and range over its runs); the interval carries the FLOPs interval at the mean ρ. Narrow ÷ target: "
        "the FLOP/s of the stages below the target's width over the target stage's (median over runs). The runs "
        "shared 2 cores, 2 at a time, so walls carry that load's noise, the comparison across runs more than the "
        "one inside a run.",
        "",
        "| point | vs | budget | CPU | wall per run, min (range) | narrow ÷ target FLOP/s | ρ own speed | "
        "saving at own speed (95%) | ρ scratch's runs | saving vs scratch's runs (95%) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for base, c in rows:
        walls = (
            f"{statistics.mean(c.walls) / 60:.1f} ({min(c.walls) / 60:.1f}–{max(c.walls) / 60:.1f})"
            if c.walls
            else DASH
        )
        speed = DASH if c.speed is None else f"{c.speed:.2f}"
        md.append(
            f"| {c.point.point} | {base} | {_budget(c.point.budget)} | {c.kind} | {walls} | {speed} | "
            f"{_spread(c.rho_own)} | {saving_text(c.wall_own)} | {_spread(c.rho_runs)} | "
            f"{saving_text(c.wall_runs, c.why)} |"
        )
    return md + [""]


def measured_section(points: dict, study: Study) -> list[str]:
    """Measured wall time per point and in all, and CPU-hours (each run's wall x the threads it recorded)."""
    rows, total, cpu, unknown = [], 0.0, 0.0, 0
    for p in points.values():
        walls = [(r.results["wall_s"], rundir.recorded_threads(r.path)) for r in p.runs if r.results.get("wall_s")]
        if walls:
            total += sum(w for w, _ in walls)
            cpu += sum(w * t for w, t in walls if t)
            unknown += sum(1 for _, t in walls if not t)
            rows.append(
                f"| {p.point} | {_budget(p.budget)} | {len(walls)} | "
                f"{statistics.mean(w for w, _ in walls) / 60:.1f} | {sum(w for w, _ in walls) / 3600:.2f} |"
            )
    if not rows:
        return []
    return [
        "## Cost (measured)",
        "",
        "Wall time of each finished run (`results.json`) on the machine its `command.txt` names, with the threads "
        "it recorded there. Runs often shared the cores with other work, so a run's wall is an upper bound on "
        "its cost alone.",
        "",
        "| point | budget | runs | wall per run (min) | run-hours |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"In all: {total / 3600:.1f} run-hours, {cpu / 3600:.1f} CPU-hours (wall x threads"
        + (f"; {unknown} run(s) recorded no thread count and are left out" if unknown else "")
        + f"); at the study's {study.jobs} runs at a time, about {total / study.jobs / 3600:.1f} hours elapsed.",
        "",
    ]
