"""Regenerate the committed reports under ``reports/`` from the committed run summaries in ``reports/runs/``.

    python -m benchmarks.make_reports                 # regenerate every report (byte-for-byte, a test checks it)
    python -m benchmarks.make_reports --sync runs     # first copy the light files of finished runs from runs/

It also writes the README's headline (between its headline markers) from the ``## Headline`` section of the study
report named in :data:`HEADLINE`, so the README's numbers are the report's.

Only the light files of a run directory are committed (recipe, summary, results, ledger, manifest, command); the
weights stay in the run directory they came from (its path is in command.txt / manifest.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rbdc.runs import rundir
from rbdc.report import headline

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "reports" / "runs"
# report name -> (experiment folders under reports/runs, title)
REPORTS = {
    "imagenette-vit-mini": (
        ["imagenette-vit-mini"],
        "Imagenette 64 px, ViT-mini (width 192, depth 6): "
        "RBDC vs scratch and the baselines at equal training FLOPs "
        "(anneal_to_end: false, the cosine of each stage stopped "
        "warm-up steps short of min_lr)",
    ),
    "imagenette-vit-mini-annealed": (
        ["imagenette-vit-mini-annealed"],
        "Imagenette 64 px, ViT-mini: RBDC vs scratch at equal training FLOPs, every stage annealed to min_lr",
    ),
}
# study reports: study name -> study file (its runs' light files under reports/runs/<name>/)
STUDIES = {
    "imagenette32": REPO / "configs" / "studies" / "imagenette32.yaml",
    "imagenette32-fair": REPO / "configs" / "studies" / "imagenette32-fair.yaml",
    "compile-check32": REPO / "configs" / "studies" / "compile-check32.yaml",
    "width-ladder32": REPO / "configs" / "studies" / "width-ladder32.yaml",
}
# detection studies: name -> study file (light files under reports/runs/<name>/, report under reports/detection/)
DET_STUDIES = {
    "balloon32": REPO / "configs" / "studies" / "balloon32.yaml",
    "balloon-r18": REPO / "configs" / "studies" / "balloon-r18.yaml",  # issue 34: a report once its runs are committed
}
# the README's headline: the study report it comes from, and what the README says about that choice
HEADLINE = (
    "imagenette32-fair",
    "Source: the study with equal tuning for every protocol and 5 seeds "
    "([imagenette32-fair](reports/imagenette32-fair.md)); the earlier 3-seed study, where only scratch was tuned: "
    "[imagenette32](reports/imagenette32.md).",
)
README = REPO / "README.md"


def sync(src_root: Path) -> list[Path]:
    copied = []
    for results in sorted(src_root.rglob(rundir.RESULTS)):
        run_dir = results.parent
        rel = run_dir.relative_to(src_root)
        if rel.parts[0] not in {f for folders, _ in REPORTS.values() for f in folders} | set(STUDIES):
            continue
        copied.append(rundir.copy_light(run_dir, RUNS / rel))
    return copied


def make(out_dir: Path = REPO / "reports", runs: Path = RUNS) -> dict[str, dict]:
    from rbdc.report import generate_report

    written = {}
    for name, (folders, title) in REPORTS.items():
        dirs = [runs / f for f in folders if (runs / f).is_dir()]
        if dirs:
            written[name] = generate_report(dirs, out_dir / name, title=title)
    from rbdc.report.study import build
    from rbdc.studies.spec import load_study

    for name, study_file in STUDIES.items():
        if (runs / name).is_dir():
            # with the runs root, a tuned point takes the trial its committed trial runs chose
            written[name] = build(load_study(study_file, runs), runs / name, out_dir / name, project=REPO)
    from rbdc.report import ladder

    if (runs / ladder.NAME).is_dir():  # the trend over widths (issue 36), once the ladder's own runs are committed
        written[ladder.REPORT] = ladder.build(
            ladder.rungs(ladder.studies_at(runs, STUDIES)), out_dir / ladder.REPORT, "python -m benchmarks.make_reports"
        )
    from rbdc.detection.study import load_study as load_detection_study, status
    from rbdc.report.detection import build as build_detection

    for name, study_file in DET_STUDIES.items():
        study = load_detection_study(study_file)
        # a report once a fine-tuning has finished (reports/runs/<name>/ may hold only its backbones' light files)
        if any(status(r.work_dir(runs, study), study) == "done" for r in study.runs):
            written[name] = build_detection(study, runs, out_dir / "detection" / name, project=REPO)
    return written


def readme_headline(reports: Path = REPO / "reports") -> str:
    """The README's headline block, from the committed report of the study :data:`HEADLINE` names."""
    name, note = HEADLINE
    lines = headline.extract((reports / f"{name}.md").read_text(encoding="utf-8"))
    return headline.readme_block(lines, "reports/", f"reports/{name}.md", note)


def write_readme(readme: Path = README, reports: Path = REPO / "reports") -> bool:
    """Fill the README's headline block; True when it changed."""
    text = readme.read_text(encoding="utf-8")
    new = headline.fill(text, readme_headline(reports))
    if new != text:
        rundir.atomic_write_bytes(readme, new.encode("utf-8"))
    return new != text


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sync", type=Path, default=None, help="copy finished runs' light files from this runs root")
    a = p.parse_args()
    if a.sync:
        for d in sync(a.sync):
            print("synced", d.relative_to(REPO))
    for name, files in make().items():
        print(name, "->", ", ".join(str(f.relative_to(REPO)) for f in files.values()))
    print("README.md headline", "updated" if write_readme() else "unchanged", f"(from reports/{HEADLINE[0]}.md)")
