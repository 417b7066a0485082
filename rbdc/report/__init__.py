"""Every report, regenerated from run directories alone: ``rbdc report`` (this module: result tables and the
accuracy-vs-training-FLOPs figure of any runs), a study's report (:mod:`.study`) and a detection study's
(:mod:`.detection`). They share loading (:mod:`.load`), statistics (:mod:`.stats`, :mod:`.saving`), formatting
(:mod:`.fmt`: one ``±`` formatter), one colour table read from the protocol registry (:mod:`.colors`) and
figure writing (:mod:`.figure`).

Every number in a report comes from the ``results.json`` and ``summary.csv`` of the run directories given on the
command line, and every table row names the run directories it comes from (relative to the report), so a paper-style
table traces back to its runs. The paper's claims and the DeiT reference numbers sit beside the measured rows, marked
as quoted, in :data:`QUOTED`.

Output is deterministic: inputs are sorted, floats have fixed formats, nothing depends on the clock or on where the
run directories lie (paths are written relative to the output file), so ``rbdc report`` regenerates a committed
report byte for byte from the committed run summaries.

Example::

    rbdc report runs/imagenette-deit-tiny -o reports/imagenette-deit-tiny --title "Imagenette, DeiT-Ti"
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from rbdc.errors import UserError
from rbdc.runs.rundir import atomic_write_bytes

from .figure import _plot, protocol_colors
from .load import Run, discover_run_dirs, load_run, scan_run_dirs
from .quoted import QUOTED, Quoted
from .render import _render_csv, _render_markdown, _render_tex
from .stats import GroupRow, Match, matched_flops, seed_noise, summarize_groups, top1_at_flops

__all__ = [
    "QUOTED",
    "Quoted",
    "Run",
    "GroupRow",
    "Match",
    "discover_run_dirs",
    "load_run",
    "summarize_groups",
    "matched_flops",
    "top1_at_flops",
    "seed_noise",
    "protocol_colors",
    "generate_report",
    "add_cli",
]


_SUFFIXES = (".md", ".tex", ".csv", ".png")


def generate_report(
    run_dirs: Sequence[str | os.PathLike],
    out_prefix: str | os.PathLike,
    title: str | None = None,
    baseline_protocol: str = "scratch",
) -> dict[str, Path]:
    """Writes ``<out_prefix>.md``, ``.tex``, ``.csv`` and ``.png`` from run directories.

    Args:
        run_dirs: Run directories or folders above them (searched recursively).
        out_prefix: Output path without suffix, e.g. ``reports/imagenette-deit-tiny``; a ``.md``/``.tex``/``.csv``/
            ``.png`` suffix is dropped. Parent folders are created.
        title: Report title; defaults to the output name.
        baseline_protocol: Protocol that is the 1.00x FLOPs reference and the curve to match accuracy on.

    Returns:
        Written paths keyed by ``md``, ``tex``, ``csv`` and ``png``.

    Raises:
        UserError: A run directory is missing or invalid; the message names the path.
    """
    if not run_dirs:
        raise UserError("no run directories given: pass run directories or folders above them")
    out_prefix = Path(out_prefix)
    if out_prefix.suffix in _SUFFIXES:
        out_prefix = out_prefix.with_suffix("")
    name = out_prefix.name
    if not name:
        raise UserError(f"output prefix {out_prefix} has no file name: use e.g. -o reports/NAME")
    title = title or name
    finished, skipped = scan_run_dirs(run_dirs)
    for d, why in skipped:
        print(f"rbdc report: skipped {d}: {why}", file=sys.stderr)
    runs = [load_run(d) for d in finished]
    rows = summarize_groups(runs, baseline_protocol)
    out_dir = out_prefix.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_prefix.with_name(f"{name}.{ext}") for ext in ("md", "tex", "csv", "png")}
    texts = {
        "md": _render_markdown(rows, out_dir, paths["png"].name, title, baseline_protocol, len(runs), skipped),
        "tex": _render_tex(rows, out_dir, name, title, baseline_protocol),
        "csv": _render_csv(rows, out_dir),
    }
    for ext, text in texts.items():
        atomic_write_bytes(paths[ext], text.encode("utf-8"))
    _plot(rows, paths["png"], title, baseline_protocol)
    return paths


def _cmd_report(args: argparse.Namespace) -> int:
    paths = generate_report(args.run_dirs, args.output, title=args.title, baseline_protocol=args.baseline_protocol)
    for path in paths.values():
        print(path)
    return 0


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Adds the ``report`` subcommand to an argparse subparsers object.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers()``.

    Returns:
        The ``report`` parser.
    """
    p = subparsers.add_parser(
        "report",
        help="regenerate result tables and the top-1 vs FLOPs figure from run directories",
        description="Write OUT.md, OUT.tex, OUT.csv and OUT.png from run directories (folders holding results.json "
        "and summary.csv); folders above run directories are searched recursively.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  rbdc report runs/imagenette-vit-mini -o reports/imagenette-vit-mini\n"
        '  rbdc report runs/quickstart -o runs/quickstart-report --title "my quickstart"\n',
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories or folders above them")
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="output path without suffix, e.g. reports/NAME (required)"
    )
    p.add_argument("--title", default=None, metavar="T", help="report title (default: the output name)")
    p.add_argument(
        "--baseline-protocol",
        default="scratch",
        metavar="P",
        help="protocol that is the 1.00x FLOPs reference and the accuracy curve to match (default: scratch)",
    )
    p.set_defaults(func=_cmd_report)
    return p
