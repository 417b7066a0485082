"""The cost model against the committed runs' own stage walls: ``python -m benchmarks.costmodel_check``.

For every stage of every run under the runs folders (default ``reports/runs/imagenette32-fair``,
``reports/runs/costmodel-check`` and ``reports/runs/balloon-r18/backbones``: runs on the 2-core Intel Xeon, model
207, AVX-512 + AMX, two 1-thread runs at once) it builds the stage's work from the run's recipe
(:func:`rbdc.cost.work.recipe_work`, the function the estimate of ``rbdc train --dry-run --estimate`` prices: images
trained, evaluation passes and the images they read) and prices it (:func:`rbdc.cost.work.predict_stage`):

    training: images x (the cost model's seconds per image of the stage's model, precision and batch
                        + the in-memory loader's seconds per image at the stage's size)
    evaluation: evaluation images x the cost model's seconds per forward image

The run's ``wall_s`` for the stage (``summary.csv``, cumulative over its epochs) times the training steps only,
the loader's batches inside; evaluation, checkpoint writes and the GEMM probe are outside it
(:class:`rbdc.training.engine._StageLoop`). So the error compares the training part with ``wall_s``; the
evaluation's predicted share is stated beside it (nothing in a committed run measures it). A stage whose recorded
images or evaluations differ from its work is flagged (``work_matches``): the work would be mis-built.

Runs made since ``a47e1ca`` record the machine's GEMM rate after every epoch (``gemm_gflops``). Where a group's
epochs have it, they are split at the widest gap of their rates (:func:`rbdc.cost.bench.fast_state`, per
precision) into fast- and slow-state epochs: the error on the fast-state epochs (the state the model is fitted on)
and the slow-state factor (median over stages of slow over fast seconds per image), which is written into the cost
model's JSON (``slow_state_factor``) for the estimate's range.

The shared-machine factor: ``python -m benchmarks.engine_gap`` times the engine's step against the benchmark's (the
same within a few percent) beside two other training runs, and its benchmark step's CPU seconds per image over the
benchmark row the model is fitted on (same code, same step: only the machine's load differs) is how much slower
the same work runs on the busy clock on a loaded machine (:func:`shared_factors`, per precision and family). Where
that JSON is present, each stage is also priced at it (``shared_error``): a stage whose wall lies between the two
predictions ran between the quiet floor and the loaded machine.

How the conditions line up: the benchmark ran one 1-thread process on core 1 beside the study's 1-thread training
on core 0, as the runs ran two at once; what the cost model cannot know is other jobs on the runs' cores: runs are
grouped by the code commit in their ``command.txt``, which for these runs tells the periods apart (``61f9d7f``:
runs while other helpers worked on both cores; ``ba35830``: on quieter cores), and the error is stated per group,
on the whole stage and on its fastest epoch. The comparison is written into the cost model's JSON (``validation``)
for ``reports/perf.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

from rbdc import recipe as recipes
from rbdc.cost import bench, costmodel, machine
from rbdc.cost.work import predict_stage, recipe_work
from rbdc.data import plan_size
from rbdc.protocols import plan_stages
from rbdc.runs import rundir
from rbdc.runs.rundir import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "reports" / "runs" / "imagenette32-fair"
CHECK = REPO / "reports" / "runs" / "costmodel-check"  # short runs made beside the benchmark, for this check
# the detection study's ResNet-18 backbones (imagenette32 b8): the first committed runs with cpu_s and gemm_gflops
BACKBONES = REPO / "reports" / "runs" / "balloon-r18" / "backbones"


def epochs_of(rows: list[dict]) -> list[dict]:
    """A stage's trained epochs from its ``summary.csv`` rows: seconds and images of each (``wall_s`` and
    ``images_seen`` are cumulative over the stage) and the GEMM rate after it (None where not recorded)."""
    out, wall, seen = [], 0.0, 0
    for r in rows:
        if not r.get("wall_s") or int(r["epoch"]) < 0:
            continue
        rate = r.get("gemm_gflops") or None
        out.append(
            {
                "s": float(r["wall_s"]) - wall,
                "images": int(r["images_seen"]) - seen,
                "gemm_gflops": None if rate is None else float(rate),
                "cpu_s": float(r["cpu_s"]) if r.get("cpu_s") else None,  # per epoch, the steps' interval
            }
        )
        wall, seen = float(r["wall_s"]), int(r["images_seen"])
    return out


def run_stages(run: Path, model: costmodel.CostModel) -> list[dict]:
    """Every trained stage of one run: what it recorded (model, precision, batch, images, wall, epochs,
    evaluations) and what its work predicts (``predicted_s``: training; ``predicted_eval_s``: evaluation)."""
    rec = recipes.resolve(run / "recipe.yaml")
    size = plan_size(rec)
    work = {w.stage: w for w in recipe_work(rec, plan_stages(rec, size.train_size, size.num_classes), size.train_size)}
    envs = rundir.recorded_envs(run)
    commit = (envs[-1].get("code") or {}).get("commit", "?")[:7] if envs else "?"
    rows = list(csv.DictReader((run / "summary.csv").open()))
    out = []
    for stage in dict.fromkeys(r["stage"] for r in rows):
        mine = [r for r in rows if r["stage"] == stage]
        epochs = epochs_of(mine)
        if not epochs or stage not in work:
            continue
        w = work[stage]
        kwargs = {"num_classes": size.num_classes, **rec.model_kwargs}
        pred = predict_stage(model, w, rec.model, rec, **kwargs)
        evals = sum(1 for r in mine if r.get("eval_top1")) + sum(1 for r in mine if r.get("ema_top1"))
        images = sum(e["images"] for e in epochs)
        out.append(
            {
                "run": str(run),
                "stage": stage,
                "model": mine[0]["model"],
                "amp": rec.amp,
                "img_size": rec.img_size,
                "batch": rec.batch_size,
                "factor": str(Fraction(w.factor)),
                "family": costmodel.family(rec.model, w.factor, **kwargs),
                "images": images,
                "wall_s": sum(e["s"] for e in epochs),
                "cpu_s": sum(e["cpu_s"] for e in epochs) if all(e["cpu_s"] for e in epochs) else None,
                "epochs": epochs,
                "commit": commit,
                "capability": (envs[-1].get("cpu") or {}).get("capability") if envs else None,
                "fastest_s_per_image": min(e["s"] / e["images"] for e in epochs if e["images"]),
                "evaluations": evals,
                "work": {"train_images": w.train_images, "evaluations": w.evaluations, "eval_images": w.eval_images},
                "work_matches": w.train_images == images and w.evaluations == evals,
                "predicted_s": None if pred is None else pred["train_s"],
                "predicted_eval_s": None if pred is None else pred["eval_s"],
            }
        )
    return out


def stages(runs_root: Path, model: costmodel.CostModel) -> list[dict]:
    """:func:`run_stages` of every run under ``runs_root`` (run names relative to it)."""
    out = []
    for summary in sorted(runs_root.rglob("summary.csv")):
        for s in run_stages(summary.parent, model):
            out.append({**s, "run": str(summary.parent.relative_to(runs_root))})
    return out


def _name(root: Path) -> str:
    return str(root.relative_to(REPO)) if root.is_relative_to(REPO) else str(root)


def state_split(stages: list[dict]) -> dict:
    """Fast- and slow-state epochs of stages that recorded ``gemm_gflops`` after every epoch: per stage the
    seconds per image of each state (medians); the cut per precision at the widest gap of all their rates
    (:func:`rbdc.cost.bench.fast_state`); the slow-state factor (median over stages with both states of slow
    over fast seconds per image, None without such a stage)."""
    probed = [s for s in stages if s["epochs"] and all(e["gemm_gflops"] for e in s["epochs"])]
    floors = {
        amp: bench.fast_state([e["gemm_gflops"] for s in probed if s["amp"] == amp for e in s["epochs"]])
        for amp in {s["amp"] for s in probed}
    }
    per_stage, ratios = {}, []
    for s in probed:
        fast = [e["s"] / e["images"] for e in s["epochs"] if e["images"] and e["gemm_gflops"] >= floors[s["amp"]]]
        slow = [e["s"] / e["images"] for e in s["epochs"] if e["images"] and e["gemm_gflops"] < floors[s["amp"]]]
        per_stage[(s["run"], s["stage"])] = (
            float(np.median(fast)) if fast else None,
            float(np.median(slow)) if slow else None,
        )
        if fast and slow:
            ratios.append(float(np.median(slow) / np.median(fast)))
    return {
        "floors_gflops": floors,
        "per_stage": per_stage,
        "slow_state_factor": float(np.median(ratios)) if ratios else None,
        "stages_with_both": len(ratios),
    }


def shared_factors(gap: dict | None) -> dict[str, float]:
    """Per ``amp/family``: the median over ``python -m benchmarks.engine_gap``'s cases of their benchmark step's CPU
    seconds per image there (beside other training runs) over the benchmark row the model is fitted on (same step;
    only the machine's load differs). Cases without a fitted row are left out; no JSON, no factors."""
    by_key: dict[str, list[float]] = {}
    for c in (gap or {}).get("cases", []):
        fit = c.get("fit")
        if not fit:
            continue
        key = f"{c['amp']}/{c.get('family') or costmodel.family(c['model'])}"
        by_key.setdefault(key, []).append(1e-6 * c["us_per_image_busy"]["bench"] / fit["s_per_image"])
    return {k: float(np.median(v)) for k, v in by_key.items()}


def _errors(s: dict, split: dict, shared: dict[str, float]) -> dict:
    """The stage's errors: on its whole training wall, on its fastest epoch, on its fast-state epochs (None where
    not probed or none fast), priced at the shared-machine factor (None without one), and the predicted evaluation's
    share of its predicted training."""
    per_image = s["predicted_s"] / s["images"]
    fast = split["per_stage"].get((s["run"], s["stage"]), (None, None))[0]
    factor = shared.get(f"{s['amp']}/{s['family']}")
    return {
        "error": s["predicted_s"] / s["wall_s"] - 1,
        "shared_error": None if factor is None else factor * s["predicted_s"] / s["wall_s"] - 1,
        "fastest_error": per_image / s["fastest_s_per_image"] - 1,
        # on the process's CPU clock (runs since cpu_s; 1-thread runs): what is left once turns given to other jobs
        # on its core are out of the wall
        "cpu_error": None if not s.get("cpu_s") else s["predicted_s"] / s["cpu_s"] - 1,
        "core_share": None if not s.get("cpu_s") else s["cpu_s"] / s["wall_s"],
        "fast_state_error": None if fast is None else per_image / fast - 1,
        "eval_share": None if s["predicted_eval_s"] is None else s["predicted_eval_s"] / s["predicted_s"],
    }


def _group_summary(mine: list[dict]) -> dict:
    err = np.array([r["error"] for r in mine])
    fast = np.array([r["fastest_error"] for r in mine])
    state = [r["fast_state_error"] for r in mine if r["fast_state_error"] is not None]
    shares = [r["eval_share"] for r in mine if r["eval_share"] is not None]
    shared = [r["shared_error"] for r in mine if r["shared_error"] is not None]
    total = sum(r["predicted_s"] for r in mine) / sum(r["wall_s"] for r in mine) - 1
    return {
        "runs": len({r["run"] for r in mine}),
        "stages": len(mine),
        "median_error": float(np.median(err)),
        "median_abs_error": float(np.median(np.abs(err))),
        "min_error": float(err.min()),
        "max_error": float(err.max()),
        "total_error": float(total),
        "fastest_median_error": float(np.median(fast)),
        "fastest_median_abs_error": float(np.median(np.abs(fast))),
        "fast_state_stages": len(state),
        "fast_state_median_error": float(np.median(state)) if state else None,
        "eval_share_median": float(np.median(shares)) if shares else None,
        "shared_median_error": float(np.median(shared)) if shared else None,
        # measured between the quiet floor and the loaded machine's prediction
        "between": sum(1 for r in mine if r["shared_error"] is not None and r["error"] <= 0 <= r["shared_error"]),
        "work_mismatches": sum(1 for r in mine if not r["work_matches"]),
        **_cpu_summary(mine),
    }


def _cpu_summary(mine: list[dict]) -> dict:
    """The CPU-clock error and the core share (CPU seconds over wall) of the stages that recorded ``cpu_s``."""
    cpu = [r for r in mine if r.get("cpu_error") is not None]
    return {
        "cpu_stages": len(cpu),
        "cpu_median_error": float(np.median([r["cpu_error"] for r in cpu])) if cpu else None,
        "core_share_median": float(np.median([r["core_share"] for r in cpu])) if cpu else None,
    }


def validate(model: costmodel.CostModel, roots: list[Path] = (RUNS,), gap: dict | None = None) -> dict:
    """Per stage: predicted and measured wall, their ratio; per runs folder and code commit: the median and spread
    of the errors, the fast-state error where probed, the evaluation's predicted share; the slow-state factor; with
    ``gap`` (``benchmarks.engine_gap``'s JSON) the errors at its shared-machine factors too."""
    found = []
    for root in roots:
        found += [{**s, "group": f"{_name(root)} @ {s['commit']}"} for s in stages(root, model)]
    found = [s for s in found if s["predicted_s"] is not None]
    split = state_split(found)
    shared = shared_factors(gap)
    rows = [{**{k: v for k, v in s.items() if k != "epochs"}, **_errors(s, split, shared)} for s in found]
    groups = {g: _group_summary([r for r in rows if r["group"] == g]) for g in dict.fromkeys(r["group"] for r in rows)}
    return {
        "runs_roots": [_name(r) for r in roots],
        "groups": groups,
        "slow_state_factor": split["slow_state_factor"],
        "slow_state_stages": split["stages_with_both"],
        "shared_factors": shared,
        "shared_source": None if gap is None else gap.get("_path"),
        "stages": rows,
    }


def _share(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _line(group: str, g: dict) -> str:
    pct = lambda x: "-" if x is None else f"{100 * x:+.1f}%"  # noqa: E731
    return (
        f"{group}: {g['runs']} runs, {g['stages']} stages: predicted/measured training wall - 1: median "
        f"{pct(g['median_error'])} (|median| {100 * g['median_abs_error']:.1f}%, range "
        f"{pct(g['min_error'])}..{pct(g['max_error'])}), all stages' walls together {pct(g['total_error'])}; "
        f"against each stage's fastest epoch {pct(g['fastest_median_error'])}; fast-state epochs "
        f"{pct(g['fast_state_median_error'])} ({g['fast_state_stages']} stages probed); at the shared-machine "
        f"factor {pct(g['shared_median_error'])} ({g['between']} stages between the two); evaluation (outside "
        f"wall_s) adds {pct(g['eval_share_median'])} by the model; on the CPU clock {pct(g['cpu_median_error'])} "
        f"({g['cpu_stages']} stages with cpu_s; core share {_share(g['core_share_median'])}); stages whose work "
        "differs from the record: "
        f"{g['work_mismatches']}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.costmodel_check", description=__doc__.split("\n")[0])
    p.add_argument(
        "--runs",
        type=Path,
        nargs="+",
        default=[RUNS, CHECK, BACKBONES],
        help="folders of run directories (their summary.csv); default: the fair study's, the check's and the "
        "balloon-r18 backbones'",
    )
    p.add_argument("--model", type=Path, default=None, help="the cost model JSON (default: this CPU kind's)")
    p.add_argument(
        "--gap",
        type=Path,
        default=None,
        help="python -m benchmarks.engine_gap's JSON (default: reports/bench/engine-gap-<this CPU kind>.json if any)",
    )
    args = p.parse_args(argv)
    path = args.model or costmodel.costmodel_path(machine.cpu_kind())
    if not path.is_file():
        print(
            f"no cost model at {path}: fit one with python -m rbdc.cost.costmodel reports/bench/<cpu json>",
            file=sys.stderr,
        )
        return 2
    data = json.loads(path.read_text())
    gap_path = args.gap or REPO / "reports" / "bench" / f"engine-gap-{machine.cpu_kind()['slug']}.json"
    gap = {**json.loads(gap_path.read_text()), "_path": _name(gap_path.resolve())} if gap_path.is_file() else None
    result = validate(costmodel.CostModel.from_dict(data), [r.resolve() for r in args.runs], gap)
    for group, g in result["groups"].items():
        print(_line(group, g))
    if result["shared_factors"]:
        shown = ", ".join(f"{k} {v:.2f}x" for k, v in result["shared_factors"].items())
        print(f"shared-machine factors ({result['shared_source']}): {shown}")
    factor = result["slow_state_factor"]
    print(
        f"slow-state factor: {factor:.2f} ({result['slow_state_stages']} stages with both states)"
        if factor
        else "slow-state factor: not measured (no stage recorded gemm_gflops in both states)"
    )
    data["validation"] = result
    data.pop("slow_state_factor", None)
    if factor:
        data["slow_state_factor"] = factor
    atomic_write_bytes(path, json.dumps(data, indent=1).encode())
    print(f"wrote the validation into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
