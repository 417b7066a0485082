"""The report as Markdown, LaTeX and CSV, with the quoted (published) numbers beside the measured rows."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from rbdc import protocols
from rbdc.runs import rundir

from .fmt import DASH, pm
from .stats import NOISE_FACTOR, GroupRow, _baselines, matched_flops, seed_noise, top1_at_flops


@dataclass(frozen=True)
class Quoted:
    """A published number shown beside the measured rows, never mixed into them.

    Attributes:
        label: How the row is marked in the table, e.g. ``quoted (paper)``.
        protocol: Protocol the number belongs to.
        dataset: Dataset it was measured on.
        model: timm model name of the target model.
        top1: Quoted ImageNet top-1 in percent, or None when the claim is relative.
        flops_rel: Quoted training FLOPs relative to standard training, or None.
        epochs: Training epochs behind the number, when quoted.
        claim: The claim in words.
        source: Where it is quoted from.
    """

    label: str
    protocol: str
    dataset: str
    model: str
    top1: float | None
    flops_rel: float | None
    epochs: int | None
    claim: str
    source: str


QUOTED: tuple[Quoted, ...] = (
    Quoted(
        "quoted (paper)",
        "rbdc",
        "imagenet-1k",
        "deit_base_patch16_224",
        None,
        0.70,
        None,
        "RBDC: 30% fewer training FLOPs than standard training at matched ImageNet accuracy (DeiT-B)",
        "arXiv 2605.23656 (abstract)",
    ),
    Quoted(
        "quoted (DeiT)",
        "scratch",
        "imagenet-1k",
        "deit_tiny_patch16_224",
        72.2,
        None,
        300,
        "DeiT-Ti, standard training, 300 epochs",
        "facebookresearch/deit README_deit.md",
    ),
    Quoted(
        "quoted (DeiT)",
        "scratch",
        "imagenet-1k",
        "deit_small_patch16_224",
        79.9,
        None,
        300,
        "DeiT-S, standard training, 300 epochs",
        "facebookresearch/deit README_deit.md",
    ),
    Quoted(
        "quoted (DeiT)",
        "scratch",
        "imagenet-1k",
        "deit_base_patch16_224",
        81.8,
        None,
        300,
        "DeiT-B, standard training, 300 epochs",
        "facebookresearch/deit README_deit.md",
    ),
)


def _flops_unit(rows: Sequence[GroupRow]) -> tuple[float, str]:
    largest = max((g.flops_mean for g in rows), default=0.0)
    for scale, name in ((1e18, "EFLOPs"), (1e15, "PFLOPs"), (1e12, "TFLOPs")):
        if largest >= scale:
            return scale, name
    return 1e9, "GFLOPs"


def _wall_unit(rows: Sequence[GroupRow]) -> tuple[float, str]:
    largest = max((g.wall_s_mean or 0.0 for g in rows), default=0.0)
    if largest >= 7200:
        return 3600.0, "h"
    if largest >= 120:
        return 60.0, "min"
    return 1.0, "s"


def _opt(value: float | None, fmt: str, scale: float = 1.0) -> str:
    return DASH if value is None else format(value / scale, fmt)


def _rel_paths(row: GroupRow, out_dir: Path) -> list[str]:
    # relative to the report so that moving runs and report together leaves the report unchanged; a run resumed
    # under another commit, torch or bf16 path (--allow-mixed) says so beside its path
    return [
        Path(os.path.relpath(r.path.resolve(), out_dir.resolve())).as_posix() + _mixed_mark(r.path) for r in row.runs
    ]


def _mixed_mark(run_dir: Path) -> str:
    mixes = [env["mixed"] for env in rundir.recorded_envs(run_dir) if env.get("mixed")]
    return "".join(f" (resumed mixed: {a} -> {b})" for a, b in mixes)


@dataclass(frozen=True)
class _Cells:
    """Display strings of one table row, shared by the Markdown and LaTeX writers."""

    group: str
    source: str
    protocol: str
    dataset: str
    model: str
    seeds: str
    top1: str
    top5: str
    flops: str
    rel: str
    mem: str
    wall: str
    device: str
    runs: list[str]

    def columns(self) -> list[str]:
        """The columns both tables print, in their order (the Markdown table adds the runs as its last column)."""
        return [getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "runs"]


def _cells(rows: Sequence[GroupRow], out_dir: Path) -> list[_Cells]:
    fscale, _ = _flops_unit(rows)
    wscale, _ = _wall_unit(rows)
    cells = []
    for g in rows:
        cells.append(
            _Cells(
                group=g.group,
                source="measured",
                protocol=g.protocol,
                dataset=g.dataset,
                model=g.model,
                seeds=str(g.n),
                top1=pm(g.top1_mean, g.top1_std, missing=DASH),
                top5=pm(g.top5_mean, g.top5_std, missing=DASH),
                flops=f"{g.flops_mean / fscale:.2f}",
                rel=DASH if g.flops_rel is None else f"{g.flops_rel:.2f}x",
                mem=_opt(g.peak_mem_mb_mean, ".0f"),
                wall=_opt(g.wall_s_mean, ".1f", wscale),
                device="; ".join(g.devices) or DASH,
                runs=_rel_paths(g, out_dir),
            )
        )
    for q in QUOTED:
        cells.append(
            _Cells(
                group=DASH,
                source=q.label,
                protocol=q.protocol,
                dataset=q.dataset,
                model=q.model,
                seeds=DASH,
                top1="matched" if q.top1 is None else f"{q.top1:.1f}",
                top5=DASH,
                flops=DASH,
                rel=DASH if q.flops_rel is None else f"{q.flops_rel:.2f}x",
                mem=DASH,
                wall=DASH,
                device=DASH,
                runs=[q.source],
            )
        )
    return cells


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _render_markdown(
    rows: Sequence[GroupRow],
    out_dir: Path,
    png_name: str,
    title: str,
    baseline_protocol: str,
    n_runs: int,
    skipped: Sequence[tuple[Path, str]] = (),
) -> str:
    _, funit = _flops_unit(rows)
    _, wunit = _wall_unit(rows)
    header = [
        "Group",
        "Source",
        "Protocol",
        "Dataset",
        "Model",
        "Seeds",
        "Top-1 (%)",
        "Top-5 (%)",
        f"Train {funit}",
        f"FLOPs vs {baseline_protocol}",
        "Peak mem (MB)",
        f"Wall ({wunit})",
        "Device",
        "Runs",
    ]
    out = io.StringIO()
    w = out.write
    w(f"# {title}\n\n")
    w(
        f"Generated by `rbdc report` from {n_runs} run(s) in {len(rows)} group(s); regenerate it with the same command "
        "rather than editing it.\n\n"
    )
    w("## Results\n\n")
    w("| " + " | ".join(header) + " |\n")
    w("|" + "|".join("---" for _ in header) + "|\n")
    for c in _cells(rows, out_dir):
        values = [*c.columns(), "<br>".join(c.runs)]
        w("| " + " | ".join(_md_cell(v) for v in values) + " |\n")
    w("\n")
    w("- Top-1/Top-5: final eval accuracy, mean ± sample std (ddof=1) over seeds; std – with one seed.\n")
    w(
        f"- Train {funit}: total training FLOPs of the run (every model trained in it, every narrow model of every "
        "RBDC level included), mean over seeds.\n"
    )
    w(
        f"- FLOPs vs {baseline_protocol}: ratio to the {baseline_protocol} group of the same dataset and model "
        "with the largest budget (1.00x).\n"
    )
    w("- Runs: run directories, relative to this file.\n")
    for q in QUOTED:
        w(f"- {q.label}: {q.claim}; {q.dataset}; source: {q.source}. Not measured here.\n")
    w("\n")
    if skipped:
        w("## Skipped run directories\n\nNot in any table or figure:\n\n")
        for d, why in skipped:
            w(f"- `{os.path.relpath(d, out_dir.resolve())}`: {why}\n")
        w("\n")
    w(_render_savings(rows, baseline_protocol))
    w(_render_vs_rbdc(rows, baseline_protocol))
    w("\n## Figure\n\n")
    w(f"![Eval top-1 vs cumulative training FLOPs]({png_name})\n\n")
    w(
        "Eval top-1 per epoch vs cumulative training FLOPs (log scale), one line per run, coloured by protocol; "
        "the narrow parts of one level (dotted), trained independently, are drawn side by side over the level's "
        "FLOPs, each ending where the coupled model starts; diamonds mark the first evaluation of each coupled or "
        "grown model; squares with error bars are the mean final top-1 (± std "
        "over seeds) of each group.\n"
    )
    return out.getvalue()


def _render_savings(rows: Sequence[GroupRow], baseline_protocol: str) -> str:
    fscale, funit = _flops_unit(rows)
    out = io.StringIO()
    w = out.write
    w("## FLOPs saving at matched accuracy\n\n")
    w(
        f"Each non-{baseline_protocol} group is compared with the {baseline_protocol} groups of the same dataset and "
        f"model. With several {baseline_protocol} budgets, the FLOPs {baseline_protocol} needs to reach the group's "
        f"mean top-1 are read off {baseline_protocol}'s final top-1 vs total training FLOPs (made monotone by a "
        "running maximum, piecewise linear in log FLOPs); saving = 1 - F_group / F_matched. Nothing is extrapolated "
        "outside the budgets. The reference is the largest budget.\n\n"
    )
    w(
        f"Seed-noise rule: a difference in mean top-1 counts as larger than seed noise when |diff| > "
        f"{NOISE_FACTOR:g} x s_pooled, s_pooled = sqrt(((n1-1) s1^2 + (n2-1) s2^2) / (n1+n2-2)) over seeds; with one "
        "seed on both sides the noise is unknown.\n\n"
    )
    others = [g for g in rows if g.protocol != baseline_protocol]
    if not others:
        w(f"No non-{baseline_protocol} group in this report.\n")
    for g in others:
        bases = _baselines(rows, g, baseline_protocol)
        w(
            f"- **{g.group}** ({g.protocol}, {g.n} seed(s)): top-1 {pm(g.top1_mean, g.top1_std)} with "
            f"{g.flops_mean / fscale:.2f} {funit}.\n"
        )
        if not bases:
            w(f"  - No {baseline_protocol} group for {g.model} on {g.dataset}: saving not measurable.\n")
            continue
        ref = max(bases, key=lambda b: (b.flops_mean, b.group))
        diff = g.top1_mean - ref.top1_mean
        pooled, beyond = seed_noise(g, ref)
        if beyond is None:
            noise = "seed noise unknown (one seed each)"
        else:
            noise = f"{'larger than' if beyond else 'within'} seed noise (s_pooled {pooled:.2f})"
        w(
            f"  - vs {ref.group} ({ref.n} seed(s), top-1 {pm(ref.top1_mean, ref.top1_std)}, "
            f"{ref.flops_mean / fscale:.2f} {funit}): {diff:+.2f} top-1 at {g.flops_rel:.2f}x its FLOPs; {noise}.\n"
        )
        _render_match(w, g, bases, diff, baseline_protocol, fscale, funit)
    claims = [q for q in QUOTED if q.flops_rel is not None]
    for q in claims:
        w(f"- {q.label}: {q.claim} (saving {100 * (1 - q.flops_rel):.0f}%; {q.source}).\n")
    return out.getvalue()


def _render_match(
    w, g: GroupRow, bases: Sequence[GroupRow], diff: float, baseline_protocol: str, fscale: float, funit: str
) -> None:
    """The saving of ``g`` at matched accuracy on the baseline's curve, and its top-1 at equal FLOPs."""
    points = [(b.flops_mean, b.top1_mean) for b in bases]
    match = matched_flops(points, g.top1_mean)
    ratio = g.flops_mean / match.flops
    if match.status == "one_budget":
        w(
            f"  - Saving not measurable from one {baseline_protocol} budget: at {g.flops_rel:.2f}x the FLOPs "
            f"{g.protocol} is {diff:+.2f} top-1.\n"
        )
        return
    if match.status == "matched":
        w(
            f"  - {baseline_protocol} reaches {g.top1_mean:.2f} top-1 with {match.flops / fscale:.2f} {funit} "
            f"(interpolated over {len(bases)} budgets): saving at matched accuracy {100 * (1 - ratio):.1f}%"
            f"{' (negative: more FLOPs than ' + baseline_protocol + ')' if ratio > 1 else ''}.\n"
        )
    elif match.status == "above_range":
        w(
            f"  - Above every {baseline_protocol} budget (best {max(a for _, a in points):.2f} top-1, largest "
            f"{match.flops / fscale:.2f} {funit}): saving at matched accuracy at least {100 * (1 - ratio):.1f}% "
            "(lower bound; not extrapolated).\n"
        )
    else:
        w(
            f"  - Below the smallest {baseline_protocol} budget ({min(points)[1]:.2f} top-1 with "
            f"{match.flops / fscale:.2f} {funit}): saving at matched accuracy at most {100 * (1 - ratio):.1f}% "
            "(upper bound; not extrapolated).\n"
        )
    at_equal = top1_at_flops(points, g.flops_mean)
    if at_equal is None:
        w(
            f"  - At equal FLOPs: {g.flops_mean / fscale:.2f} {funit} lies outside the {baseline_protocol} "
            "budgets, not measurable.\n"
        )
    else:
        w(
            f"  - At equal FLOPs {baseline_protocol} reaches {at_equal:.2f} top-1 (interpolated): "
            f"{g.top1_mean - at_equal:+.2f} top-1.\n"
        )


EQUAL_FLOPS = 0.02  # two groups count as "at equal FLOPs" when their mean training FLOPs differ by less than this


def _render_vs_rbdc(rows: Sequence[GroupRow], baseline_protocol: str) -> str:
    """The paper's second claim, head to head: each other method's group vs each RBDC group at equal FLOPs."""
    subjects = [name for name, p in protocols.registry().items() if p.subject]  # the methods under study
    rbdc = [g for g in rows if g.protocol in subjects]
    others = [g for g in rows if g.protocol not in (*subjects, baseline_protocol)]
    pairs = [
        (r, g)
        for g in others
        for r in rbdc
        if (r.dataset, r.model) == (g.dataset, g.model) and abs(r.flops_mean / g.flops_mean - 1) < EQUAL_FLOPS
    ]
    if not pairs:
        return ""
    out = io.StringIO()
    w = out.write
    w("\n## RBDC vs the other methods at equal FLOPs\n\n")
    w(
        f"Pairs of an RBDC group and another method's group on the same dataset and model whose training FLOPs differ "
        f"by less than {100 * EQUAL_FLOPS:g}%; the difference is RBDC minus the other method, same seed-noise rule.\n\n"
    )
    w("| RBDC group | vs group | Protocol | Top-1 difference | FLOPs ratio | Seed noise |\n|---|---|---|---|---|---|\n")
    for r, g in pairs:
        pooled, beyond = seed_noise(r, g)
        noise = (
            "unknown (one seed each)"
            if beyond is None
            else f"{'larger than' if beyond else 'within'} noise (s_pooled {pooled:.2f})"
        )
        w(
            f"| {r.group} ({r.n} seed(s)) | {g.group} ({g.n} seed(s)) | {g.protocol} | "
            f"{r.top1_mean - g.top1_mean:+.2f} | {r.flops_mean / g.flops_mean:.3f} | {noise} |\n"
        )
    return out.getvalue()


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    DASH: "--",
    "±": r"$\pm$",
}


def _tex(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def _render_tex(rows: Sequence[GroupRow], out_dir: Path, name: str, title: str, baseline_protocol: str) -> str:
    _, funit = _flops_unit(rows)
    _, wunit = _wall_unit(rows)
    header = [
        "Group",
        "Source",
        "Protocol",
        "Dataset",
        "Model",
        "Seeds",
        "Top-1 (\\%)",
        "Top-5 (\\%)",
        f"Train {funit}",
        f"FLOPs vs {_tex(baseline_protocol)}",
        "Peak mem (MB)",
        f"Wall ({wunit})",
        "Device",
    ]
    out = io.StringIO()
    w = out.write
    w("% Generated by `rbdc report`; regenerate it rather than editing it. Needs \\usepackage{booktabs}.\n")
    w('% The "% runs:" comment under each row lists its run directories, relative to this file.\n')
    w("\\begin{table}[t]\n\\centering\n\\small\n")
    label = re.sub(r"[^A-Za-z0-9_.:-]", "-", name)
    w(f"\\caption{{{_tex(title)}}}\n\\label{{tab:{label}}}\n")
    w("\\begin{tabular}{lllll" + "r" * 6 + "l}\n\\toprule\n")
    w(" & ".join(header) + " \\\\\n\\midrule\n")
    quoted_started = False
    for c in _cells(rows, out_dir):
        if c.source != "measured" and not quoted_started:
            w("\\midrule\n")
            quoted_started = True
        w(" & ".join(_tex(v) for v in c.columns()) + " \\\\\n")
        w(("% runs: " if c.source == "measured" else "% source: ") + ", ".join(c.runs) + "\n")
    w("\\bottomrule\n\\end{tabular}\n\\end{table}\n")
    return out.getvalue()


def _render_csv(rows: Sequence[GroupRow], out_dir: Path) -> str:
    fields = [
        "group",
        "source",
        "protocol",
        "dataset",
        "model",
        "n_seeds",
        "seeds",
        "top1_mean",
        "top1_std",
        "top5_mean",
        "top5_std",
        "total_train_flops_mean",
        "flops_rel_baseline",
        "baseline_group",
        "peak_mem_mb_mean",
        "wall_s_mean",
        "devices",
        "stages",
        "run_dirs",
        "note",
    ]

    def f(value: float | None, fmt: str) -> str:
        return "" if value is None else format(value, fmt)

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(fields)
    for g in rows:
        writer.writerow(
            [
                g.group,
                "measured",
                g.protocol,
                g.dataset,
                g.model,
                g.n,
                ";".join(map(str, g.seeds)),
                f(g.top1_mean, ".4f"),
                f(g.top1_std, ".4f"),
                f(g.top5_mean, ".4f"),
                f(g.top5_std, ".4f"),
                f(g.flops_mean, ".6e"),
                f(g.flops_rel, ".4f"),
                g.baseline or "",
                f(g.peak_mem_mb_mean, ".1f"),
                f(g.wall_s_mean, ".1f"),
                ";".join(g.devices),
                g.stages,
                ";".join(_rel_paths(g, out_dir)),
                "",
            ]
        )
    for q in QUOTED:
        writer.writerow(
            [
                "",
                q.label,
                q.protocol,
                q.dataset,
                q.model,
                "",
                "",
                f(q.top1, ".1f"),
                "",
                "",
                "",
                "",
                f(q.flops_rel, ".4f"),
                "",
                "",
                "",
                "",
                f"{q.protocol}:{q.model}:{q.epochs}ep" if q.epochs else "",
                q.source,
                q.claim,
            ]
        )
    return out.getvalue()
