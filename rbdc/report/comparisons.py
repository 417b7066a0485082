"""The comparisons of an ``rbdc report``'s Markdown after its table: each group's FLOPs saving at matched accuracy on
the baseline's curve, and RBDC vs the other methods at equal FLOPs."""

from __future__ import annotations

import io
from typing import Sequence

from rbdc import protocols

from .fmt import pm
from .quoted import QUOTED
from .stats import NOISE_FACTOR, GroupRow, _baselines, matched_flops, seed_noise, top1_at_flops


def savings_section(rows: Sequence[GroupRow], baseline_protocol: str, fscale: float, funit: str) -> str:
    """The section "FLOPs saving at matched accuracy", FLOPs shown in ``funit`` (``fscale`` FLOPs each)."""
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


def vs_rbdc_section(rows: Sequence[GroupRow], baseline_protocol: str) -> str:
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
