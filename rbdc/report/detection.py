"""The report of a detection study (``rbdc det-study S.yaml --report``): box and mask AP per backbone with 95%
intervals over pretraining seeds, the difference of every other backbone to the first one (Welch 95%), every row
traced to its run and its backbone checkpoint (sha256), training-loss and validation-AP curves, and a verdict.

Built from the light files under ``reports/runs/<name>/`` (``launch.json``, ``metrics.json``, ``curve.json``), so it
regenerates byte for byte from a checkout. The statistical unit is the pretraining seed: with several fine-tuning
seeds, a backbone seed's AP is their mean.

A study with a random-init control (``backbones.random_init``) also gets every pretrained backbone's difference to
the control, and a verdict in two steps (issue 34, :mod:`rbdc.report.detection_verdict`): first whether backbones are
being measured at all (the reference side's mean box AP50 reaches 20 and its Welch interval against the control
excludes 0), and only then whether each other backbone beats, matches or loses to the reference. The JSON keeps one
record per fine-tuning, its run and backbone copy as paths in the repository (``reports/runs/...``).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from rbdc.detection.random_init import RECORD
from rbdc.detection.study import DetStudy, backbone_copy, status
from rbdc.runs.rundir import MANIFEST, RESULTS, atomic_write_bytes

from .colors import series_colors
from .figure import save_png
from .fmt import DASH, pm
from .detection_verdict import LEARNED_AP50, MEASURED_AP50, diff_text, per_seed, pretrained, verdict
from .stats import t_half_width

__all__ = ["METRICS", "collect", "build"]

METRICS = [
    ("bbox_mAP", "box AP"),
    ("bbox_mAP_50", "box AP50"),
    ("bbox_mAP_75", "box AP75"),
    ("segm_mAP", "mask AP"),
    ("segm_mAP_50", "mask AP50"),
    ("segm_mAP_75", "mask AP75"),
]
RUNS = "reports/runs"  # where the report's runs are kept in the repository: the JSON's paths start with it


# the figure's AP panels, after the loss: the verdict's threshold metric first (rbdc.report.detection_verdict)
FIGURE_METRICS = ("bbox_mAP_50", "bbox_mAP", "segm_mAP")


def _ap(entry: dict, key: str) -> float | None:
    v = entry["metrics"].get(f"coco/{key}")
    return None if v is None or v < 0 else 100 * v


def collect(study: DetStudy, root: Path) -> list[dict]:
    """One row per finished run under ``root`` (a runs root holding ``<name>/<label>/seed<s>/ft<f>``)."""
    rows = []
    for r in study.runs:
        wd = r.work_dir(root, study)
        if status(wd, study) != "done":
            continue
        launch = json.loads((wd / "launch.json").read_text())
        val = json.loads((wd / "metrics.json").read_text())["val"]
        curve = json.loads((wd / "curve.json").read_text()) if (wd / "curve.json").is_file() else []
        rows.append(
            {
                "label": r.label,
                "point": r.point,
                "seed": r.seed,
                "ft_seed": r.ft_seed,
                "run": str(wd.relative_to(root)),
                "commit": (launch.get("code") or {}).get("commit"),
                "backbone": launch.get("backbone"),
                "backbone_sha256": launch.get("backbone_sha256"),
                **_backbone_run(r, root, study, launch),
                "wall_s": launch.get("wall_s"),
                "device": launch.get("device"),
                "img_scale": launch.get("img_scale"),
                **{k: _ap(val[-1], k) for k, _ in METRICS},
                "val_curve": [
                    {"epoch": e["epoch"], "iter": e["iter"], **{k: _ap(e, k) for k, _ in METRICS}} for e in val
                ],
                "loss_curve": [(c["iter"], c["loss"]) for c in curve],
            }
        )
    return rows


def _backbone_run(run, root: Path, study: DetStudy, launch: dict) -> dict:
    """The committed copy of the run's backbone run: where it is, its Imagenette top-1, and whether the checkpoint
    the fine-tuning loaded (its sha256) is that run's final model (its manifest's last stage); None where no copy is
    committed. For the random-init control: the copy of the file the study wrote, checked against its record."""
    where = backbone_copy(run, root, study)
    if run.generated:
        record = json.loads((where / RECORD).read_text()) if (where / RECORD).is_file() else None
        return {
            "backbone_run": str(where.relative_to(root)) if record else None,
            "backbone_top1": None,
            "backbone_matches": None if record is None else launch.get("backbone_sha256") == record.get("sha256"),
        }
    manifest, results = where / MANIFEST, where / RESULTS
    if not manifest.is_file():
        return {"backbone_run": None, "backbone_top1": None, "backbone_matches": None}
    stages = json.loads(manifest.read_text())["stages"]
    parents = {p["stage"] for s in stages.values() for p in s.get("parents", [])}
    finals = {s["sha256"] for name, s in stages.items() if name not in parents}
    top1 = json.loads(results.read_text()).get("eval_top1") if results.is_file() else None
    return {
        "backbone_run": str(where.relative_to(root)),
        "backbone_top1": top1,
        "backbone_matches": launch.get("backbone_sha256") in finals,
    }


def _pm(values: list[float]) -> str:
    return pm(statistics.mean(values), t_half_width(values), 1) if values else DASH


def _json_rows(rows: list[dict]) -> list[dict]:
    """The rows as the JSON keeps them: the run and its backbone copy as paths in the repository."""
    return [
        {
            **r,
            "run": f"{RUNS}/{r['run']}",
            "backbone_run": r["backbone_run"] and f"{RUNS}/{r['backbone_run']}",
        }
        for r in rows
    ]


def build(study: DetStudy, root: Path, out: Path, project: Path | None = None) -> dict[str, Path]:
    """Write ``out.md``, ``out.json`` (the rows) and ``out.png`` (curves); returns the paths. The study and config
    files are named relative to ``project`` (default: the current working directory, where ``rbdc det-study
    --report`` runs); make_reports passes the checkout."""
    project = Path.cwd() if project is None else project
    rows = collect(study, root)
    paths = {ext: out.with_name(f"{out.name}.{ext}") for ext in ("md", "json", "png")}
    missing = [r for r in study.runs if status(r.work_dir(root, study), study) != "done"]
    ref, *others = pretrained(study)
    md = _header(study, rows, project) + _ap_table(study, rows)
    md += _diff_table(rows, f"Difference to {ref}", [(label, ref) for label in others], ref)
    if study.random_init is not None:
        control = study.random_init["label"]
        md += _diff_table(rows, f"Difference to {control}", [(label, control) for label in [ref, *others]], control)
    md += _verdict_and_runs(study, rows, paths["png"].name)
    walls = [r["wall_s"] for r in rows if r["wall_s"]]
    if walls:
        md += [
            "",
            f"Cost: {len(walls)} fine-tuning runs, {sum(walls) / 3600:.1f} run-hours in all (the longest "
            f"{max(walls) / 60:.0f} min), {study.jobs} at a time x {study.threads} thread(s) each.",
        ]
    if missing:
        md += [
            "",
            f"Not finished ({len(missing)}): "
            + ", ".join(f"{r.label} seed {r.seed} ft {r.ft_seed}" for r in missing)
            + ".",
        ]
    atomic_write_bytes(paths["md"], ("\n".join(md) + "\n").encode())
    atomic_write_bytes(paths["json"], (json.dumps(_json_rows(rows), indent=1) + "\n").encode())
    _figure(study, rows, paths["png"])
    return paths


def _header(study: DetStudy, rows: list[dict], project: Path) -> list[str]:
    length = (
        f"{study.epochs} epochs, validated on the val split every epoch"
        if study.epochs
        else f"{study.iters} iteration(s), validated on the val split at the end"
    )
    control = study.random_init
    return [
        f"# {study.name}: Mask R-CNN on balloon, backbones from the {study.source} study",
        "",
        f"Generated by `rbdc det-study {_rel(study.path, project)} --report` from {len(rows)} run(s) under "
        f"`reports/runs/{study.name}/`; regenerate it rather than editing it.",
        "",
        study.description,
        "",
        f"Fine-tuning: `{_rel(study.config, project)}` at {study.scale[0]}x{study.scale[1]}, {length}"
        + (f", with `--cfg-options {' '.join(study.cfg_options)}`" if study.cfg_options else "")
        + f" (COCO AP in %, pycocotools). Backbones: the {study.source} study's runs at budget "
        f"{study.budget:g}, pretraining seeds {sorted({r.seed for r in study.runs})}, fine-tuning seeds "
        f"{sorted({r.ft_seed for r in study.runs})}"
        + (
            f"; the control `{control['label']}`: timm's `{control['model']}` ({control['num_classes']} classes) "
            f"initialised under each pretraining seed, written by the study, fine-tuned the same way."
            if control
            else "."
        ),
        "",
    ]


def _ap_table(study: DetStudy, rows: list[dict]) -> list[str]:
    md = [
        "## AP per backbone",
        "",
        "Mean ± 95% t-interval over pretraining seeds (final validation).",
        "",
        "| backbone | point | seeds | pretrained top-1 | "
        + " | ".join(n for _, n in METRICS)
        + " | wall per run (min) |",
        "|" + "---|" * (len(METRICS) + 5),
    ]
    for label in study.labels:
        mine = [r for r in rows if r["label"] == label]
        walls = [r["wall_s"] for r in mine if r["wall_s"]]
        wall = f"{statistics.mean(walls) / 60:.0f}" if walls else "–"
        run = next((r for r in study.runs if r.label == label), None)
        point = "" if run is None else f"{run.point} (random init)" if run.generated else run.point
        top1 = _pm(list({r["seed"]: r["backbone_top1"] for r in mine if r["backbone_top1"] is not None}.values()))
        md.append(
            f"| {label} | {point} | {len({r['seed'] for r in mine})} | {top1} | "
            + " | ".join(_pm(per_seed(rows, label, k)) for k, _ in METRICS)
            + f" | {wall} |"
        )
    return md


def _diff_table(rows: list[dict], title: str, pairs: list[tuple[str, str]], ref: str) -> list[str]:
    md = [
        "",
        f"## {title}",
        "",
        f"Mean difference (other − {ref}) with its Welch 95% interval.",
        "",
        "| backbone | " + " | ".join(n for _, n in METRICS) + " |",
        "|" + "---|" * (len(METRICS) + 1),
    ]
    for a, b in pairs:
        md.append(
            f"| {a} − {b} | "
            + " | ".join(diff_text(per_seed(rows, a, k), per_seed(rows, b, k))[0] for k, _ in METRICS)
            + " |"
        )
    return md


def _verdict_and_runs(study: DetStudy, rows: list[dict], png: str) -> list[str]:
    """The verdict, the figure and one row per run traced to its commit and backbone."""
    differ = [r["run"] for r in rows if r["backbone_matches"] is False]
    md = [
        "",
        "## Verdict",
        "",
        *verdict(study, rows),
        *(
            [
                f"- **{len(differ)} run(s) loaded a backbone that is not their backbone run's final model** "
                f"(sha256 against its manifest): {', '.join(differ)}; retrain them before reading the numbers."
            ]
            if differ
            else []
        ),
        "",
        f"![training loss and validation AP]({png})",
        "",
        "## Runs",
        "",
        "Backbone: the committed copy of its run under `reports/runs/` where there is one (its recipe, command and "
        "commit), else the path the run loaded; sha256: of the checkpoint the fine-tuning loaded, and whether it is "
        "the final model in that run's manifest."
        + (
            f" For `{study.random_init['label']}`: the folder of the file the study wrote for that seed "
            f"(`{RECORD}`: model, seed, versions, sha256), and whether the run loaded that file."
            if study.random_init
            else ""
        ),
        "",
        "| run | " + " | ".join(n for _, n in METRICS) + " | wall (min) | device | commit | backbone | sha256 |",
        "|" + "---|" * (len(METRICS) + 6),
    ]
    mark = {True: " (matches)", False: " (**differs from its manifest**)", None: ""}
    for r in rows:
        fmt = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
        wall = "–" if r["wall_s"] is None else f"{r['wall_s'] / 60:.0f}"
        md.append(
            f"| `{r['run']}` | "
            + " | ".join(fmt(r[k]) for k, _ in METRICS)
            + f" | {wall} | {r['device']} | `{str(r['commit'])[:7]}` | `{r['backbone_run'] or r['backbone']}` "
            f"| `{str(r['backbone_sha256'])[:16]}`{mark[r['backbone_matches']]} |"
        )
    return md


def _figure(study: DetStudy, rows: list[dict], path: Path) -> None:
    save_png(draw(study, rows), path)


def draw(study: DetStudy, rows: list[dict]):
    """The figure: training loss, then box AP50 (with the verdict's threshold), box AP and mask AP per epoch."""
    # Figure + FigureCanvasAgg instead of pyplot: no global backend switch, no figure manager to leak
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(16, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    # a label names its backbones' protocol (scratch, rbdc): the protocol's colour, others spare ones
    colors = series_colors([(label, label) for label in study.labels])
    for label in study.labels:
        color = colors[label][0]
        for n, r in enumerate(x for x in rows if x["label"] == label):
            tag = label if n == 0 else None
            if r["loss_curve"]:
                it, loss = zip(*r["loss_curve"])
                axes[0].plot(it, loss, color=color, alpha=0.6, lw=1, label=tag)
            ep = [c["epoch"] for c in r["val_curve"]]
            for ax, key in zip(axes[1:], FIGURE_METRICS):
                ax.plot(ep, [c[key] for c in r["val_curve"]], color=color, alpha=0.6, marker=".", label=tag)
    # the box AP50 threshold the verdict reads, where the reader looks for it: with a control, the gate on the
    # reference's final mean; without one, the line under which every run "barely learned"
    ref = study.labels[0]
    level, what = (
        (MEASURED_AP50, f"gate: {ref}'s mean ≥ {MEASURED_AP50:g}")
        if study.random_init is not None
        else (LEARNED_AP50, f"learned: some run ≥ {LEARNED_AP50:g}")
    )
    axes[1].axhline(level, color="0.4", ls="--", lw=1, label=what)
    titles = ("training loss", "val box AP50 (%), the verdict's threshold", "val box AP (%)", "val mask AP (%)")
    for ax, title, xlabel in zip(axes, titles, ("iteration", "epoch", "epoch", "epoch")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:  # runs without logged losses draw no line there
        axes[0].legend()
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{study.name}: one line per run", fontsize=10)
    fig.tight_layout()
    return fig


def _rel(path, project: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(project).resolve()))
    except (ValueError, TypeError):
        return str(path)
