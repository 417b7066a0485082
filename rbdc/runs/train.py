"""``rbdc train``: run a recipe's protocol into a run directory (:class:`rbdc.runs.run.Run`, the stage loop), resuming
automatically, under one writer (:mod:`rbdc.runs.runlock`); ``rbdc.jobs`` > 1 trains a level's independent stages in
parallel child processes (:mod:`rbdc.runs.parallel`), each ``python -m rbdc.runs.train RUN_DIR STAGE``
(:func:`train_child`)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import torch

from ..training import preempt
from .. import protocols
from . import rundir, runlock
from .. import recipe as recipes
from ..data import plan_size
from ..training.runtime import Dist
from ..errors import UserError
from ..flops import Ledger
from .manifest import Manifest, save_child_result
from ..protocols import describe_plan, plan_stages
from .run import Run
from ..cli import check_output
from ..cost.estimate import estimate_stages


def run_recipe(
    path: str | None,
    output: str = "runs",
    overrides: list[str] = (),
    dry_run: bool = False,
    log=print,
    estimate: bool | str = False,
    wait: bool = False,
    allow_mixed: bool = False,
    **fields,
) -> dict | None:
    rec = recipes.resolve(path, overrides, **fields)
    d = Dist.init()
    if not d.main:
        log = lambda *a, **k: None  # noqa: E731
    # every rank alike: the lock's outcome (rank 0 broadcasts it) and a preemption (its flag is all-reduced)
    with d.closed_after(every_rank_raises=(runlock.RunHeld, preempt.Preempted)):
        if dry_run:
            _dry_run(rec, log, estimate)
            return None
        run = Run(rec, output, d, log, allow_mixed)
        run.plan()
        with _one_writer(run, d, wait, log):
            run.prepare()
            with _failures_recorded(run):
                return run.execute()


def _dry_run(rec: dict, log, estimate: bool | str) -> None:
    size = plan_size(rec)
    if size.note:
        log(f"({size.note})")
    log(f"plan for {rec.name} (seed {rec.seed}, protocol {rec.protocol}):")
    stages = plan_stages(rec, size.train_size, size.num_classes)
    log(describe_plan(rec, stages, size.train_size, size.num_classes))
    if estimate:  # True: measure here; a string: a device of the committed benchmarks
        gpu = estimate if isinstance(estimate, str) else None
        log(estimate_stages(rec, stages, size.num_classes, gpu=gpu, train_size=size.train_size))


@contextlib.contextmanager
def _one_writer(run: Run, d: Dist, wait: bool, log):
    """Hold the run directory (:mod:`rbdc.runs.runlock`) for the run's life: rank 0 takes the lock and tells the other
    ranks. (A parallel child trains inside its parent's hold.)"""
    if d.world == 1:
        with runlock.hold(run.dir.path, wait=wait, log=log):
            yield
        return
    stack, box = contextlib.ExitStack(), [None]
    if d.main:
        try:
            stack.enter_context(runlock.hold(run.dir.path, wait=wait, log=log))
        except runlock.RunHeld as e:
            box[0] = e.holder
    torch.distributed.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise runlock.RunHeld(run.dir.path, box[0])
    with stack:
        yield


@contextlib.contextmanager
def _failures_recorded(run: Run, child_stage: str | None = None):
    """An error (not KeyboardInterrupt: an interrupted run is resumable, not failed) leaves ``failed.json`` in the
    run directory, or in a parallel child's stage folder."""
    try:
        yield
    except Exception as e:
        if run.d.main:
            try:
                run.dir.write_failed(
                    stage=getattr(e, "stage", run.stage),
                    step=getattr(e, "step", None),
                    reason=str(e) or type(e).__name__,
                    command=run.command,
                    diverged=getattr(e, "diverged", False),
                    child_stage=child_stage,
                )
            except UserError:  # e.g. the disk is full: the original error says so
                pass
        raise


def train_child(run_dir: Path, stage: str, log=print) -> None:
    """A parallel child's work (:mod:`rbdc.runs.parallel`): train ``stage`` of the run in ``run_dir`` alone, from rows
    and a ledger of its own, into its ``stage.json`` for the parent to merge. It writes nothing outside the stage's
    folder and trains inside its parent's hold of the run directory."""
    rec = recipes.resolve(Path(run_dir) / rundir.RECIPE)
    run = Run(rec, Path(run_dir).parents[len(Path(rec.name).parts)], Dist(), log)
    run.plan()
    st = next((s for s in run.stages if s.id == stage), None)
    if st is None:
        raise UserError(f"{run_dir} has no stage {stage!r}; its stages: {', '.join(s.id for s in run.stages)}")
    run.dir.clear_failed(stage)
    run.dir.remove_orphans([stage], {}, top=False)  # its own folder: a sibling may be writing in its own
    run.start()
    with _failures_recorded(run, child_stage=stage):
        entry, rows, ledger = run.train(st, Manifest.load(run.dir), [], Ledger(), progress=False)
        save_child_result(run.dir, stage, entry, rows, ledger)
        run.dir.drop_checkpoint(stage)


def child_main(argv: list[str] | None = None) -> int:
    """``python -m rbdc.runs.train RUN_DIR STAGE``: :func:`train_child`, with the CLI's exit codes."""
    ap = argparse.ArgumentParser(
        prog="python -m rbdc.runs.train",
        description="train one stage of a run as a parallel child of rbdc.jobs (the parent merges it)",
    )
    ap.add_argument("run_dir")
    ap.add_argument("stage")
    args = ap.parse_args(argv)
    try:
        with preempt.armed():
            train_child(Path(args.run_dir), args.stage)
    except UserError as e:
        print(f"rbdc train (stage {args.stage}): error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        print(f"rbdc train (stage {args.stage}): interrupted", file=sys.stderr)
        return 130
    except preempt.Preempted as e:
        print(f"rbdc train (stage {args.stage}): {e}", file=sys.stderr)
        return preempt.PREEMPTED_EXIT
    return 0


def cmd_train(args) -> int:
    t0 = time.time()
    if args.resume:
        run_dir = Path(args.resume)
        recipe = run_dir / rundir.RECIPE
        if not recipe.is_file():
            raise UserError(f"--resume {run_dir}: no {rundir.RECIPE} there; pass a run directory written by rbdc train")
        rec = recipes.resolve(recipe)
        args.recipe, args.output = str(recipe), str(run_dir.parents[len(Path(rec.name).parts)])
    check_output(args.output, "--output", directory=True)
    with preempt.armed() if not args.dry_run else contextlib.nullcontext():
        _train_from_args(args)
    if not args.dry_run and int(os.environ.get("RANK", 0)) == 0:
        print(f"wall time {time.time() - t0:.0f} s")
    return 0


def _train_from_args(args) -> None:
    run_recipe(
        args.recipe,
        args.output,
        args.set or [],
        dry_run=args.dry_run,
        estimate=args.gpu or args.estimate,
        wait=args.wait,
        allow_mixed=args.allow_mixed,
        seed=args.seed,
        model=args.model,
        protocol=args.protocol,
        name=args.name,
        epochs=args.epochs,
        budget=args.budget,
        match=args.match,
    )


def add_cli(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a recipe (scratch, rbdc, a growth baseline, diffusionblocks) into a run directory; reruns resume",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  rbdc train -c configs/recipes/imagenette/vit-mini-rbdc-d1.yaml   # rerun to resume\n"
        "  rbdc train -c configs/recipes/imagenet/deit-base-rbdc-d2.yaml --dry-run --gpu H100\n"
        "  rbdc train -c configs/recipes/imagenette32/vit-nano-rbdc-d1.yaml --dry-run --estimate\n"
        "  rbdc train -c RECIPE --match runs/quickstart/rbdc-d1/seed0   # the FLOPs that run spent\n"
        "  rbdc train -c RECIPE --set rbdc.depth=2 --set data.subset=50 --seed 1\n",
    )
    p.add_argument("--recipe", "-c", default=None, help="recipe YAML (configs/recipes/...)")
    p.add_argument("--output", "-o", default=os.environ.get("RBDC_OUT", "runs"), help="root of run directories")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a recipe key (repeatable), e.g. --set rbdc.depth=2 --set data.subset=50",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--model", default=None, help="target timm model")
    p.add_argument("--protocol", choices=protocols.names(), default=None)
    p.add_argument("--name", default=None, help="experiment name (run dir: OUTPUT/NAME/seedS)")
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--budget", type=float, default=None, help="training FLOPs budget")
    p.add_argument("--match", default=None, help="give this run the total training FLOPs of RUN_DIR")
    p.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue this run directory (reruns of the same command resume automatically anyway)",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="if another process is training this run, wait for it (default: skip it, exit status 75)",
    )
    p.add_argument(
        "--allow-mixed",
        action="store_true",
        help="resume under another code commit, torch version or "
        "bf16 matmul path than the run started with (recorded in command.txt; reports mark the run)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan (stages, steps, FLOPs) and exit")
    p.add_argument("--estimate", action="store_true", help="with --dry-run: the wall time, from a few steps here")
    p.add_argument(
        "--gpu",
        metavar="NAME",
        default=None,
        help="with --dry-run: the wall time on device NAME, from its benchmarked speeds (rbdc/cost/fitted)",
    )
    p.set_defaults(func=cmd_train)


if __name__ == "__main__":
    sys.exit(child_main())
