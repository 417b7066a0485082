"""``rbdc study STUDY --report`` and ``rbdc det-study STUDY --report``: the command line hands these to the report
package (:data:`REPORTS`), so the study modules, which define and run studies, never import their reports.

Their default destinations (``reports/<name>``, ``reports/runs``) are relative to the current working directory, the
project folder the command is run from, as every other relative path of the command line; the package does not look
for the checkout it came from."""

from __future__ import annotations

import os
from pathlib import Path

from rbdc.studies.spec import load_study


def _output(args) -> Path:
    return Path(args.output or os.environ.get("RBDC_OUT", "runs")).resolve()


def study_report(args) -> int:
    """The study's report from the finished runs under OUTPUT/<name> (default: reports/<name>)."""
    from .study import build  # defers scipy (the saving's intervals) to --report

    output = _output(args)
    study = load_study(args.study, output)
    dest = Path(args.report_to or Path("reports") / study.name).resolve()
    for path in build(study, output / study.name, dest).values():
        print(path)
    return 0


def det_study_report(args) -> int:
    """Copy the finished fine-tunings' light files to reports/runs (unless --from-committed), then write the
    detection study's report from them."""
    from rbdc.detection.study import load_study, sync  # defers mmdet/mmengine (the detection package loads them)
    from .detection import build  # defers mmdet/mmengine

    study = load_study(args.study)
    output = _output(args)
    runs_root = Path("reports", "runs").resolve()
    if not args.from_committed:
        sync(study, output, runs_root, Path(args.backbones).resolve() if args.backbones else output)
    dest = Path(args.report_to or study.report or f"reports/detection/{study.name}").resolve()
    for path in build(study, runs_root, dest).values():
        print(path)
    return 0


REPORTS = {"study": study_report, "det-study": det_study_report}
