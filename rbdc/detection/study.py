"""``rbdc det-study STUDY.yaml``: fine-tune one detection config on the backbones of a classification study.

A detection study file (``configs/studies/balloon32.yaml``; read and checked by :mod:`rbdc.detection.study_spec`)
names the classification study whose runs provide the backbones (points, one budget, seeds), one MMDetection config,
the image scale, the epochs and the fine-tuning seeds. Each (backbone point, pretraining seed, fine-tuning seed) is
one ``rbdc det-train`` in ``OUTPUT/<name>/<label>/seed<s>/ft<f>``, run through the same local pool as ``rbdc study``
and resumable (MMEngine's auto-resume from the latest epoch checkpoint); ``--report`` copies the light files of the
finished runs to ``reports/runs/<name>/`` and writes the report (:mod:`rbdc.report.detection`) from those copies.

``backbones.random_init: {label: random-init, model: resnet18}`` adds the control issue 34 requires: per pretraining
seed S the study writes timm's initialisation of that model under seed S to
``OUTPUT/<name>/<label>/seed<S>/backbone/final.safetensors`` (:mod:`rbdc.detection.random_init`) before the
fine-tunings run, and fine-tunes it exactly as the pretrained backbones (same config, options and fine-tuning seed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from rbdc.studies import pool
from rbdc.runs import rundir
from rbdc.errors import UserError
from rbdc.units import human_time
from rbdc.studies.spec import group_name
from rbdc.detection.random_init import RECORD, ensure_random_init
from rbdc.detection.study_spec import BACKBONES, DetRun, DetStudy, load_study

__all__ = ["DetRun", "DetStudy", "load_study", "sync", "backbone_copy", "write_controls", "add_cli"]

LIGHT = ("launch.json", "metrics.json", "curve.json")  # what reports/runs keeps of a fine-tuning run


def status(work_dir: Path, study: DetStudy) -> str:
    """done (trained to the end, wall time recorded, and validated at the study's last epoch or iteration), started,
    pending."""
    launch, metrics = work_dir / "launch.json", work_dir / "metrics.json"
    if not launch.is_file():
        return "pending"
    val = json.loads(metrics.read_text()).get("val") if metrics.is_file() else None
    if json.loads(launch.read_text()).get("wall_s") is None or not val:
        return "started"
    last = val[-1]
    at_end = last["epoch"] == study.epochs if study.epochs else last["iter"] == study.iters
    return "done" if at_end else "started"


def training_curve(work_dir: Path) -> list[dict]:
    """The logged training losses and lr by iteration, from MMEngine's ``*/vis_data/scalars.json`` (every resumed
    segment; a step logged twice keeps its last value)."""
    rows: dict[int, dict] = {}
    for f in sorted(work_dir.glob("*/vis_data/scalars.json")):
        for line in f.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # the last line of a segment killed mid-write
                continue
            if "loss" in rec and "step" in rec:
                rows[int(rec["step"])] = {
                    "iter": int(rec["step"]),
                    "epoch": rec.get("epoch"),
                    "loss": rec["loss"],
                    "lr": rec.get("lr"),
                }
    return [rows[k] for k in sorted(rows)]


def _outcome(work_dir: Path, study: DetStudy):
    def read() -> tuple[bool, str]:
        if status(work_dir, study) != "done":
            return False, ""
        rundir.write_json(work_dir / "curve.json", training_curve(work_dir))
        last = json.loads((work_dir / "metrics.json").read_text())["val"][-1]["metrics"]
        return True, (
            f"box AP {100 * last.get('coco/bbox_mAP', float('nan')):.1f}, "
            f"mask AP {100 * last.get('coco/segm_mAP', float('nan')):.1f}"
        )

    return read


def run(study: DetStudy, output: Path, backbones: Path, jobs: int, threads: int, log=print) -> list:
    state = {r: status(r.work_dir(output, study), study) for r in study.runs}
    todo = [r for r in study.runs if state[r] != "done"]
    # a finished run has recorded its own backbone; the random-init control's is written below
    missing = [r for r in todo if not r.generated and not r.backbone(backbones, study).is_file()]
    if missing:
        only = " ".join(
            f"--only {g}" for g in dict.fromkeys(group_name(study.source, r.point, study.budget) for r in missing)
        )
        raise UserError(
            f"{len(missing)} backbone(s) missing, e.g. {missing[0].backbone(backbones, study)}: train "
            f"them with the {study.source} study first (rbdc study configs/studies/{study.source}.yaml "
            f"-o {backbones} {only}) or pass --backbones DIR"
        )
    write_controls(study, [r for r in todo if r.generated], output, log)
    cost = float(study.epochs or study.iters)
    log(
        f"detection study {study.name}: {len(study.runs)} runs, {len(study.runs) - len(todo)} done, {len(todo)} to "
        f"run ({study.length_args()[1]} {study.length_args()[0][2:]} each at {study.scale[0]}x{study.scale[1]}) "
        f"as {jobs} x {threads} thread(s) -> {output / study.name}"
    )
    scale = f"{study.scale[0]},{study.scale[1]}"
    jobs_ = [
        pool.Job(
            key=r,
            label=f"{study.name}/{r.label} seed {r.seed} ft {r.ft_seed}",
            argv=study.argv(r, output, backbones),
            log=r.work_dir(output, study) / rundir.LOG,
            cost=cost,
            outcome=_outcome(r.work_dir(output, study), study),
            title=f"rbdc det-study {study.name}:",
            env=(("BALLOON_SCALE", scale),),
        )
        for r in todo
    ]
    return [
        j.key
        for j in pool.run(
            jobs_, jobs=jobs, threads=threads, total=len(study.runs), done_before=len(study.runs) - len(todo), log=log
        )
    ]


def write_controls(study: DetStudy, runs: list[DetRun], output: Path, log=print) -> None:
    """Write (or keep, when intact) the random-init backbone of each pretraining seed of ``runs``."""
    spec = study.random_init
    for seed in sorted({r.seed for r in runs}):
        folder = next(r for r in runs if r.seed == seed).generated_dir(output, study)
        rec = ensure_random_init(folder, spec["model"], seed, spec["num_classes"])
        log(f"random-init control seed {seed}: {folder / rundir.FINAL} (sha256 {rec['sha256'][:12]})")


def backbone_copy(run: DetRun, root: Path, study: DetStudy) -> Path:
    """Where ``reports/runs`` (``root``) keeps the light files of a run's backbone: ``<name>/backbones/<its run>``,
    or for the random-init control ``<name>/<label>/seed<S>/backbone`` (the layout the study wrote it in)."""
    if run.generated:
        return run.generated_dir(root, study)
    return run.backbone(Path(root) / study.name / BACKBONES, study).parent


def sync(study: DetStudy, output: Path, dest_root: Path, backbones: Path | None = None) -> list[Path]:
    """Copy the light files of the finished runs to ``dest_root/<name>/...`` (reports/runs), and with ``backbones``
    those of their backbone runs (recipe, command with its commit, summary, manifest with the sha256 the report checks
    against, and ``final.safetensors`` where the study keeps backbone weights) to ``dest_root/<name>/backbones/...``;
    returns the copies of the fine-tuning runs."""
    copied = []
    for r in study.runs:
        wd = r.work_dir(output, study)
        if status(wd, study) != "done":
            continue
        if not (wd / "curve.json").is_file():
            rundir.write_json(wd / "curve.json", training_curve(wd))
        dest = r.work_dir(dest_root, study)
        for name in LIGHT:
            rundir.atomic_write_bytes(dest / name, (wd / name).read_bytes())
        copied.append(dest)
        if backbones is None:
            continue
        weights = (rundir.FINAL,) if study.keep_backbone_weights else ()
        if r.generated:
            rundir.copy_light(r.generated_dir(output, study), backbone_copy(r, dest_root, study), (RECORD, *weights))
            continue
        names = rundir.LIGHT + weights
        rundir.copy_light(r.backbone(backbones, study).parent, backbone_copy(r, dest_root, study), names)
    return copied


def cmd_det_study(args) -> int:
    study = load_study(args.study)
    output = Path(args.output or os.environ.get("RBDC_OUT", "runs")).resolve()
    backbones = Path(args.backbones).resolve() if args.backbones else output
    if args.list:
        for r in study.runs:
            made = " (random init, written by the study)" if r.generated else ""
            print(
                f"{status(r.work_dir(output, study), study):8s} {study.name}/{r.label} seed {r.seed} ft {r.ft_seed}  "
                f"backbone {r.backbone(backbones, study, output)}{made}"
            )
        return 0
    t0 = time.time()
    failed = run(study, output, backbones, args.jobs or study.jobs, args.threads or study.threads)
    print(
        f"detection study {study.name} after {human_time(time.time() - t0)}; report: rbdc det-study {args.study} "
        f"-o {output} --report"
    )
    if failed:
        print(
            f"{len(failed)} run(s) failed: "
            + ", ".join(f"{r.label} seed {r.seed} ft {r.ft_seed}" for r in failed)
            + "; their train.log says why; rerun the same command to resume them",
            file=sys.stderr,
        )
        return 1
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser(
        "det-study",
        help="fine-tune a detection config on the backbones of a classification study",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  rbdc det-study configs/studies/balloon32.yaml -o runs           # resumable\n"
        "  rbdc det-study configs/studies/balloon32.yaml -o runs --list\n"
        "  rbdc det-study configs/studies/balloon32.yaml -o runs --report  # md, json, png\n",
    )
    p.add_argument("study", help="detection study YAML (configs/studies/...)")
    p.add_argument("--output", "-o", default=None, help="runs root (default: $RBDC_OUT or runs)")
    p.add_argument(
        "--backbones",
        default=None,
        metavar="DIR",
        help="runs root of the classification study (default: the same as --output)",
    )
    p.add_argument("--jobs", type=int, default=None, help="runs at once (default: the study's `jobs`)")
    p.add_argument("--threads", type=int, default=None, help="threads per run (default: the study's `threads`)")
    p.add_argument("--list", action="store_true", help="list the runs, their status and backbones")
    p.add_argument(
        "--report",
        action="store_true",
        help="copy the finished runs' light files to reports/runs and write the report from them, then exit",
    )
    p.add_argument("--from-committed", action="store_true", help="with --report: use reports/runs as it is")
    p.add_argument("--report-to", default=None, metavar="PREFIX", help="report path without suffix")
    p.set_defaults(func=cmd_det_study)
