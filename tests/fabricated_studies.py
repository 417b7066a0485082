"""Complete fabricated runs of the fair-verdict study (issue 31) and the width ladder (issue 36), to look at their
reports before the real runs finish: every trial and every point x budget x seed of the real study files, each run
a committed trial run of the same point (reports/runs/<study>/tune/<point>/t1/b8/seed0) with its FLOPs and walls
scaled to the run's budget (and, at width 384, which has no committed run, to its parameters and the measured
GFLOP/s of issue 36), its top-1 moved to a chosen mean plus seed noise. Means: ViT scratch 40/50/58/63/66/68 at
budgets 4-128; the other protocols within ~2 points of it, RBDC d1 b64 and ResNet d1 b16 above scratch's whole curve
(bounds); wider models a little better. Fixed RNG: the same runs every time.

    python -m tests.fabricated_studies OUT    # OUT/runs/{imagenette32-fair,width-ladder32} and OUT/reports/
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "reports" / "runs"
FILES = {n: REPO / "configs" / "studies" / f"{n}.yaml" for n in ("imagenette32-fair", "width-ladder32")}
MEANS = {  # point -> {budget (target epochs): mean top-1 on val}
    "vit-scratch": {4: 40, 8: 50, 16: 58, 32: 63, 64: 66, 128: 68},
    "vit-rbdc-d1": {8: 51.6, 16: 58.9, 32: 63.4, 64: 68.7},
    "vit-rbdc-d2": {8: 50.4, 16: 57.6, 32: 62.2},
    "vit-hypercloning": {8: 49.3, 16: 57.9, 32: 63.8},
    "vit-rbdc-d1-copies": {8: 50.9, 16: 58.2, 32: 62.7},
    "resnet18-scratch": {4: 45, 8: 55, 16: 63, 32: 68},
    "resnet18-rbdc-d1": {8: 55.8, 16: 68.6},
    "w128-scratch": {4: 43, 8: 53, 16: 61, 32: 66},
    "w128-rbdc-d1": {8: 54.6, 16: 61.6},
    "w192-scratch": {4: 44, 8: 54, 16: 62, 32: 67},
    "w192-rbdc-d1": {8: 55.3, 16: 62.5},
    "w384-scratch": {4: 45, 8: 55, 16: 63},
    "w384-rbdc-d1": {4: 47.5, 8: 56.5},
    "w384-rbdc-d2": {8: 55.8},
}


def _template(point: str) -> tuple[Path, float, float, tuple]:
    """``(run dir, FLOPs factor, wall factor, model renames)`` of the committed run a point's runs are made from."""
    if not point.startswith("w384-"):
        study = "width-ladder32" if point.startswith("w") else "imagenette32-fair"
        return TEMPLATES / study / "tune" / point / "t1" / "b8" / "seed0", 1.0, 1.0, ()
    from rbdc.report import ladder

    small = ladder.shape("rbdc_vit_small_patch4_32")[1]
    if point == "w384-rbdc-d2":  # 4 x 96 -> 2 x 192 -> 384: ViT-nano's d2 run, scaled (274 vs 74 GFLOP/s)
        f = small / ladder.shape("rbdc_vit_nano_patch4_32")[1]
        return _template("vit-rbdc-d2")[0], f, f * 74 / 274, (("nano", "small"),)
    f = small / ladder.shape("rbdc_vit_tiny_patch4_32")[1]  # width 192's run, scaled (274 vs 192 GFLOP/s)
    return _template("w192" + point[4:])[0], f, f * 192 / 274, (("tiny", "small"),)


def _write(run, out: Path, top1: float, scale: float, before: float | None) -> None:
    """``run``'s directory: its point's template with FLOPs and walls x ``scale`` and top-1 ``top1``."""
    from rbdc import recipe as recipes

    tpl, f, w, renames = _template(run.point.split("/")[1] if run.point.startswith("tune/") else run.point)
    rename = lambda m: m.replace(*renames[0]) if renames else m  # noqa: E731
    res = json.loads((tpl / "results.json").read_text())
    delta = top1 - res["eval_top1"]
    res.update(name=f"{run.name}/seed{run.seed}", group=run.name, seed=run.seed, model=rename(res["model"]))
    res.update(eval_top1=top1, total_train_flops=int(res["total_train_flops"] * scale * f))
    for s in res["stages"]:
        s.update(model=rename(s["model"]), train_flops=int(s["train_flops"] * scale * f), epochs=s["epochs"] * scale)
    if "coupled_top1_before_training" in res:
        res["coupled_top1_before_training"] = {
            k: v + delta if before is None else before for k, v in res["coupled_top1_before_training"].items()
        }
    with (tpl / "summary.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    walls = {}
    for r in rows:
        r["model"] = rename(r["model"])
        for k in ("train_flops", "cum_train_flops"):
            r[k] = repr(float(r[k]) * scale * f) if r[k] else r[k]
        r["wall_s"] = f"{float(r['wall_s']) * scale * w:.3f}" if r["wall_s"] else r["wall_s"]
        walls[r["stage"]] = float(r["wall_s"] or 0)
        r["eval_top1"] = f"{float(r['eval_top1']) + delta:.4f}" if r["eval_top1"] else r["eval_top1"]
    rows[-1]["eval_top1"] = f"{top1:.4f}"
    res["wall_s"] = sum(walls.values())
    d = run.run_dir(out)
    d.mkdir(parents=True, exist_ok=True)
    with (d / "summary.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (d / "results.json").write_text(json.dumps(res, indent=1, sort_keys=True))
    for name in ("manifest.json", "command.txt"):
        shutil.copy(tpl / name, d / name)
    (d / "recipe.yaml").write_text(
        recipes.dump(recipes.resolve(run.recipe, list(run.overrides), seed=run.seed, name=run.name))
    )


def fabricate(out: Path) -> dict:
    """Every run of both studies under ``out``; returns ``{name: (Study, out / name)}`` read with the trials'
    choices (trial 3 wins at the fair study's ViT points, trial 2 elsewhere, up to noise)."""
    from rbdc.studies.spec import load_study

    rng = np.random.default_rng(7)
    for name, path in FILES.items():
        for phase in ("tune", "points"):  # the points' settings depend on the finished trials
            for r in load_study(path, out).runs:
                if r.point.startswith("tune/") != (phase == "tune"):
                    continue
                pid = r.point.split("/")[1] if phase == "tune" else r.point
                b, means = r.budget_epochs, MEANS[pid]
                mean = float(np.interp(np.log2(b), np.log2(list(means)), list(means.values())))
                if phase == "tune":  # the held-out tenth: a point lower, and 0.7 per trial away from the best
                    best = 3 if name == "imagenette32-fair" and pid.startswith("vit") else 2
                    mean -= 1.0 + 0.7 * abs(int(r.point.rsplit("/t", 1)[1]) - best)
                top1 = mean + rng.normal(0, 0.5)
                width = int(pid[1:4]) if name == "width-ladder32" else None  # coupling loses less as width grows
                before = top1 - 14.5 - 640 / width + rng.normal(0, 0.3) if width else None
                _write(r, out, top1, b / 8 / (1.0 if phase == "tune" else 0.9), before)  # points: all of train
    return {n: (load_study(p, out), out / n) for n, p in FILES.items()}


def reports(out: Path) -> dict[str, dict[str, Path]]:
    """Both study reports and the ladder's trend report, from :func:`fabricate` (runs under ``out/runs``), under
    ``out/reports``."""
    from rbdc.report import ladder
    from rbdc.report.study import build

    studies, dest = fabricate(out / "runs"), out / "reports"
    written = {n: build(s, root, dest / n, project=REPO) for n, (s, root) in studies.items()}
    written[ladder.REPORT] = ladder.build(ladder.rungs(studies), dest / ladder.REPORT, "fabricated")
    return written


if __name__ == "__main__":
    for name, paths in reports(Path(sys.argv[1])).items():
        print(name, *paths.values())
