"""The cost model against the committed runs' own stage walls: ``python -m benchmarks.costmodel_check``.

For every stage of every run under a runs folder (default ``reports/runs/imagenette32-fair``: 30 runs on the
2-core Intel Xeon, model 207, AVX-512 + AMX, two 1-thread runs at once) it predicts the stage's wall as

    images x (the cost model's seconds per image of the stage's model, precision and batch
              + the in-memory loader's seconds per image at the stage's size)

and compares it with the run's ``wall_s`` for the stage (``summary.csv``: the training epochs only; evaluation and
coupling are outside it, the loader's work inside). It writes the comparison into the cost model's JSON
(``validation``) for ``reports/perf.md``.

How the conditions line up: the benchmark ran one 1-thread process on core 1 beside the study's 1-thread training
on core 0, as the runs ran two at once; the loader's cost is measured on its own and added; what the cost model
cannot know is other jobs on the runs' cores: runs are grouped by the code commit in their ``command.txt``, which
for these runs tells the periods apart (``61f9d7f``: 22 runs while other helpers worked on both cores; ``ba35830``:
8 runs on quiet cores), and the error is stated per group, on the whole stage and on its fastest epoch.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from rbdc.cost import costmodel
from rbdc.runs import rundir

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "reports" / "runs" / "imagenette32-fair"
CHECK = REPO / "reports" / "runs" / "costmodel-check"  # short runs made beside the benchmark, for this check


def stages(runs_root: Path) -> list[dict]:
    """Every trained stage of every run: model, precision, batch, images, wall and per-epoch img/s."""
    import yaml

    out = []
    for summary in sorted(runs_root.rglob("summary.csv")):
        run = summary.parent
        recipe = yaml.safe_load((run / "recipe.yaml").read_text())
        envs = rundir.recorded_envs(run)
        commit = (envs[-1].get("code") or {}).get("commit", "?")[:7] if envs else "?"
        rows = [r for r in csv.DictReader(summary.open()) if r["wall_s"] and int(r["epoch"]) >= 0]
        by_stage: dict[str, list[dict]] = {}
        for r in rows:
            by_stage.setdefault(r["stage"], []).append(r)
        for stage, rs in by_stage.items():
            prev, epochs = 0.0, []
            for r in rs:  # wall_s is cumulative over the stage's epochs
                epochs.append((float(r["wall_s"]) - prev, int(r["images_seen"])))
                prev = float(r["wall_s"])
            images = int(rs[-1]["images_seen"])
            seen = [b - a for a, b in zip([0] + [n for _, n in epochs], [n for _, n in epochs])]
            out.append(
                {
                    "run": str(run.relative_to(runs_root)),
                    "stage": stage,
                    "model": rs[0]["model"],
                    "amp": recipe["amp"],
                    "img_size": recipe["img_size"],
                    "batch": recipe["batch_size"],
                    "images": images,
                    "wall_s": float(rs[-1]["wall_s"]),
                    "commit": commit,
                    "capability": (envs[-1].get("cpu") or {}).get("capability") if envs else None,
                    "fastest_s_per_image": min(t / n for (t, _), n in zip(epochs, seen) if n),
                }
            )
    return out


def predict(model: costmodel.CostModel, stage: dict) -> float | None:
    """Seconds the cost model gives the stage (steps + loader), or None without a fit for its precision/family."""
    fam = costmodel.family(stage["model"])
    if not model.has(stage["amp"], fam):
        return None
    terms = costmodel.features(stage["model"], stage["img_size"], stage["batch"])
    data = model.data_s_per_image.get(str(stage["img_size"]), 0.0)
    return stage["images"] * (model.seconds_per_image(terms, stage["amp"], fam) + data)


def _name(root: Path) -> str:
    return str(root.relative_to(REPO)) if root.is_relative_to(REPO) else str(root)


def validate(model: costmodel.CostModel, roots: list[Path] = (RUNS,)) -> dict:
    """Per stage: predicted and measured wall, their ratio; per runs folder and code commit: the median and spread
    of the errors."""
    rows = []
    for root in roots:
        for s in stages(root):
            pred = predict(model, s)
            if pred is None:
                continue
            rows.append(
                {
                    **s,
                    "group": f"{_name(root)} @ {s['commit']}",
                    "predicted_s": pred,
                    "error": pred / s["wall_s"] - 1,
                    "fastest_error": pred / s["images"] / s["fastest_s_per_image"] - 1,
                }
            )
    groups = {}
    for group in dict.fromkeys(r["group"] for r in rows):
        mine = [r for r in rows if r["group"] == group]
        err = np.array([r["error"] for r in mine])
        fast = np.array([r["fastest_error"] for r in mine])
        total = sum(r["predicted_s"] for r in mine) / sum(r["wall_s"] for r in mine) - 1
        groups[group] = {
            "runs": len({r["run"] for r in mine}),
            "stages": len(mine),
            "median_error": float(np.median(err)),
            "median_abs_error": float(np.median(np.abs(err))),
            "min_error": float(err.min()),
            "max_error": float(err.max()),
            "total_error": float(total),
            "fastest_median_error": float(np.median(fast)),
            "fastest_median_abs_error": float(np.median(np.abs(fast))),
        }
    return {"runs_roots": [_name(r) for r in roots], "groups": groups, "stages": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.costmodel_check", description=__doc__.split("\n")[0])
    p.add_argument(
        "--runs",
        type=Path,
        nargs="+",
        default=[RUNS, CHECK],
        help="folders of run directories (their summary.csv); default: the fair study's and the check's",
    )
    p.add_argument("--model", type=Path, default=None, help="the cost model JSON (default: this CPU kind's)")
    args = p.parse_args(argv)
    path = args.model or costmodel.costmodel_path(costmodel.cpu_kind())
    if not path.is_file():
        print(
            f"no cost model at {path}: fit one with python -m rbdc.cost.costmodel reports/bench/<cpu json>",
            file=sys.stderr,
        )
        return 2
    data = json.loads(path.read_text())
    result = validate(costmodel.CostModel.from_dict(data), [r.resolve() for r in args.runs])
    for group, g in result["groups"].items():
        print(
            f"{group}: {g['runs']} runs, {g['stages']} stages: predicted/measured wall - 1: median "
            f"{100 * g['median_error']:+.1f}% (|median| {100 * g['median_abs_error']:.1f}%, range "
            f"{100 * g['min_error']:+.1f}..{100 * g['max_error']:+.1f}%), all stages' walls together "
            f"{100 * g['total_error']:+.1f}%; against each stage's fastest epoch "
            f"{100 * g['fastest_median_error']:+.1f}%"
        )
    data["validation"] = result
    from rbdc.runs.rundir import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(data, indent=1).encode())
    print(f"wrote the validation into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
