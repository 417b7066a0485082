"""``rbdc quickstart``: the whole idea in minutes on a laptop, offline.

Trains two half-width ViTs independently, couples them block-diagonally, trains the coupled model on; trains the
same model from scratch on the same training FLOPs; writes the comparison table and the accuracy-vs-training-FLOPs
figure. Real data without downloads: Imagenette (32 px) when it can be found (``RBDC_DATA``), else scikit-learn's
digits. The images are decoded once into the disk cache (``RBDC_CACHE``), so later runs start training at once.

By default the two runs train side by side, one thread each (``--jobs 2``), both on ``budget_epochs`` of the target:
tiny models use a second thread poorly, so this halves the wall time on 2 cores. ``--jobs 1`` runs them one after
the other with scratch matched to the FLOPs rbdc spent (``match:``); the two budgets differ by less than one
optimizer step.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from .runs import rundir
from .data import DataError, find_imagenette, build_loader, recipe_datasets
from .errors import UserError
from .files import package_data
from .units import human_flops, human_time
from . import recipe as recipes
from .studies.study import planned_flops, run_local
from .studies.spec import Study, StudyRun
from .runs.train import run_recipe
from .report import generate_report
from .cli import add_command

RECIPES = package_data("quickstart_recipes")  # base, rbdc and scratch: package data, so an installed rbdc runs them
IMAGENETTE = ["data.source=imagenette", "budget_epochs=6", "batch_size=128"]
PROTOCOLS = ("rbdc-d1", "scratch")


def pick_data(choice: str) -> tuple[str, list[str]]:
    """The dataset the quickstart uses and the recipe overrides that select it."""
    if choice == "digits":
        return "digits", []
    try:
        find_imagenette()
        return "imagenette", IMAGENETTE
    except DataError:
        if choice == "imagenette":
            raise
        return "digits", []


def warm_cache(recipe: str, overrides: list[str], seed: int) -> float:
    """Decode the train and val images into the disk cache the runs read (all cores); seconds it took."""
    t0 = time.time()
    rec = recipes.resolve(recipe, overrides, seed=seed)
    if rec.data.in_memory:
        train_ds, val_ds = recipe_datasets(rec)
        for ds, train in ((train_ds, True), (val_ds, False)):
            build_loader(ds, batch_size=rec.batch_size, train=train, aug=rec.aug, in_memory=True, img_size=rec.img_size)
    return time.time() - t0


def _done_flops(run_dir: Path) -> float:
    path = run_dir / rundir.SUMMARY
    if not path.is_file():  # the run has not finished an epoch yet
        return 0.0
    rows = rundir.read_summary(path)[1]
    return max((float(r["cum_train_flops"] or 0) for r in rows), default=0.0)


def _report_progress(dirs: dict[str, Path], planned: dict[str, float], stop: threading.Event, every: float) -> None:
    """Every ``every`` seconds: the share of each run's planned FLOPs done and the time left at the pace so far."""
    t0 = time.time()
    while not stop.wait(every):
        done = {k: min(_done_flops(d) / planned[k], 1.0) for k, d in dirs.items()}
        elapsed = time.time() - t0
        slowest = min(done.values())
        left = f"~{human_time(elapsed * (1 - slowest) / slowest)} left" if slowest > 0 else "time left: after 1 epoch"
        print(
            f"  [{human_time(elapsed)}] " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in done.items()) + f" | {left}",
            flush=True,
        )


def _run_side_by_side(out: Path, over: list[str], seed: int, every: float) -> None:
    runs = [
        StudyRun(
            name=f"quickstart/{p}",
            recipe=str(RECIPES / f"{p.split('-')[0]}.yaml"),
            overrides=tuple(over),
            seed=seed,
            point=p,
        )
        for p in PROTOCOLS
    ]
    planned = {r.point: planned_flops(r) for r in runs}
    stop = threading.Event()
    watcher = threading.Thread(
        target=_report_progress, daemon=True, args=({r.point: r.run_dir(out) for r in runs}, planned, stop, every)
    )
    watcher.start()
    try:
        # the pool's ETA counts whole runs only; the progress lines above give the time left
        failed = run_local(
            Study(name="quickstart", path=RECIPES, runs=runs),
            out,
            runs,
            jobs=2,
            threads=1,
            log=lambda msg, **kw: print(msg.split(" | ETA")[0], **kw),
        )
    finally:
        stop.set()
    if failed:
        raise UserError(
            f"quickstart run(s) failed: {', '.join(r.name for r in failed)}; see "
            f"{failed[0].run_dir(out) / rundir.LOG}; rerun the same command to resume"
        )


def _run_one_after_another(out: Path, over: list[str], seed: int) -> None:
    run_recipe(str(RECIPES / "rbdc.yaml"), str(out), over, seed=seed)
    rbdc_dir = rundir.run_dir(out, "quickstart/rbdc-d1", seed)
    run_recipe(str(RECIPES / "scratch.yaml"), str(out), over + [f"match={rbdc_dir}"], seed=seed)


def cmd_quickstart(args) -> int:
    import json

    t0 = time.time()
    source, over = pick_data(args.data)
    over = over + (args.set or [])
    out = Path(args.output).resolve()
    print(
        f"rbdc quickstart on {source}: rbdc (2 narrow ViTs -> couple -> train on) vs scratch at equal FLOPs -> "
        f"{out / 'quickstart'}",
        flush=True,
    )
    print("1/3 decoding the images once (cached for later runs) ...", flush=True)
    print(f"    {warm_cache(str(RECIPES / 'rbdc.yaml'), over, args.seed):.0f} s", flush=True)
    how = (
        f"side by side, 1 thread each; progress every {args.progress:g} s"
        if args.jobs == 2
        else "one after the other, scratch matched to the FLOPs rbdc spent"
    )
    print(f"2/3 training rbdc and scratch {how}", flush=True)
    if args.jobs == 2:
        _run_side_by_side(out, over, args.seed, args.progress)
    else:
        _run_one_after_another(out, over, args.seed)
    print("3/3 writing the report", flush=True)
    written = generate_report([out / "quickstart"], out / "quickstart-report", title=f"rbdc quickstart ({source})")
    print()
    print(written["md"].read_text())
    res = {
        p: json.loads((rundir.run_dir(out / "quickstart", p, args.seed) / rundir.RESULTS).read_text())
        for p in PROTOCOLS
    }
    r, s = res["rbdc-d1"], res["scratch"]
    print(
        f"rbdc top-1 {r['eval_top1']:.2f} vs scratch {s['eval_top1']:.2f} at {human_flops(r['total_train_flops'])} / "
        f"{human_flops(s['total_train_flops'])} training FLOPs"
    )
    print(f"report: {written['md']}  figure: {written['png']}  ({human_time(time.time() - t0)})")
    return 0


def add_cli(sub) -> None:
    p = add_command(
        sub,
        "quickstart",
        "rbdc vs budget-matched scratch on a small real dataset, in minutes",
        [
            "rbdc quickstart                                 # Imagenette 32 px if RBDC_DATA has it, else digits",
            "RBDC_DATA=/data rbdc quickstart -o /tmp/runs    # rerun: resumes, or reports what is done",
            "rbdc quickstart --data digits --set budget_epochs=10",
            "rbdc quickstart --jobs 1                        # one run after the other, scratch matched",
        ],
    )
    p.add_argument(
        "--data",
        choices=("auto", "imagenette", "digits"),
        default="auto",
        help="auto: Imagenette if RBDC_DATA (tox sets ../shared/data) has it, else digits",
    )
    p.add_argument("--output", "-o", default="runs", help="root of the run directories")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key of both runs")
    p.add_argument(
        "--jobs",
        type=int,
        choices=(1, 2),
        default=2,
        help="2 (default): both runs at once, 1 thread each; 1: one after the other",
    )
    p.add_argument("--progress", type=float, default=30.0, metavar="S", help="seconds between progress lines")
    p.set_defaults(func=cmd_quickstart)
