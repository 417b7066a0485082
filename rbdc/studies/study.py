"""``rbdc study STUDY.yaml``: a grid of runs (protocol variants x budgets x seeds x overrides) as data, run
unattended and resumably on this machine (a local process pool) or on Slurm (submitit, one job per run).

A study file (``configs/studies/*.yaml``)::

    name: imagenette32            # runs go to OUTPUT/<name>/<point>/b<budget>/seed<s>
    seeds: [0, 1, 2]
    jobs: 2                       # runs at once on this machine ...
    threads: 1                    # ... with this many threads each
    nproc: 1                      # processes (GPUs) per run; > 1: torchrun
    set: {amp: bf16}              # overrides of every point
    points:                       # run in this order: put the headline comparison first
      - {id: vit-scratch, recipe: ../recipes/imagenette32/vit-nano-scratch.yaml, budgets: [4, 8, 16]}
      - id: vit-rbdc-d1-r{rbdc.ratio}          # one point per value of every `grid` key
        recipe: ../recipes/imagenette32/vit-nano-rbdc-d1.yaml
        budgets: [16]
        grid: {rbdc.ratio: [1.0, 3.0]}
        set: {rbdc.schedule: restart}          # fixed overrides

``budgets`` are ``budget_epochs`` (epochs of the target's training FLOPs). Recipe paths are relative to the study
file. Re-running the same command skips finished runs (their ``results.json``) and resumes unfinished ones (run
directories resume on their own); a run that fails is reported with its log and the others go on.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
import time
from pathlib import Path

from . import eta, pool
from .spec import Study, StudyRun, load_study
from ..runs import rundir, runlock
from ..errors import UserError
from ..units import human_flops, human_time
from .. import recipe as recipes
from ..data import plan_size
from ..protocols.planning import plan_stages, stage_flops
from ..runs.launch import SlurmTrain


def planned_flops(run: StudyRun) -> float:
    """The run's total training FLOPs from its plan (the data's size as :func:`rbdc.data.plan_size` gives it)."""
    rec = recipes.resolve(run.recipe, list(run.overrides), seed=run.seed, name=run.name)
    size = plan_size(rec)
    return float(sum(stage_flops(plan_stages(rec, size.train_size, size.num_classes), rec.batch_size)))


def _checked_plan(r: StudyRun) -> float:
    """Plan every run before any starts, so that a broken point stops the study before it spends anything."""
    try:
        return planned_flops(r)
    except UserError as e:
        raise UserError(f"{r.name} seed {r.seed} ({r.recipe}, {' '.join(r.overrides)}): {e}") from e


def _outcome(r: StudyRun, output: Path):
    def read() -> tuple[bool, str]:
        if r.status(output) != "done":
            return False, ""
        res = json.loads((r.run_dir(output) / rundir.RESULTS).read_text())
        return True, f"top-1 {res['eval_top1']:.2f} at {human_flops(res['total_train_flops'])}"

    return read


def run_local(
    study: Study,
    output: Path,
    runs: list[StudyRun],
    jobs: int,
    threads: int,
    log=print,
    retry_failed: bool = False,
    wait: bool = False,
) -> list:
    """Run ``runs`` in a pool of ``jobs`` processes of ``threads`` threads; progress and ETA after each run.

    A run marked failed (its ``failed.json``: it diverged or broke) is not retried unless ``retry_failed``: the same
    recipe fails the same way, and the report leaves it out, saying why."""
    cost = {r: _checked_plan(r) for r in runs}
    status = {r: r.status(output) for r in runs}
    marked = [r for r in runs if status[r] == "failed"]
    todo = [r for r in runs if status[r] in ("pending", "started") or (retry_failed and status[r] == "failed")]
    total, done_before = len(runs), len(runs) - len(todo)
    holders = {} if wait else {r: runlock.holder(r.run_dir(output)) for r in todo if status[r] == "started"}
    for r, who in holders.items():
        if who:  # another launcher trains it: skip it here, the others go on
            log(f"skipping {r.name} seed {r.seed}: {runlock.RunHeld(r.run_dir(output), who)}")
            todo.remove(r)
    for r in marked if not retry_failed else []:
        reason = json.loads((r.run_dir(output) / rundir.FAILED).read_text()).get("reason", "?")
        log(f"skipping {r.name} seed {r.seed}: failed earlier ({reason}); --retry-failed runs it again")
    log(
        f"study {study.name}: {total} runs, {done_before} done, {len(todo)} to run "
        f"({human_flops(sum(cost[r] for r in todo))} of training) as {jobs} x {threads} thread(s) -> {output}"
    )
    # a retried run's failed.json stays: train clears it on success and refuses to resume a diverged run (it would
    # replay the same steps)
    pending = [
        pool.Job(
            key=r,
            label=f"{r.name} seed {r.seed}",
            argv=("rbdc.cli", *r.train_args(output), *(["--wait"] if wait else [])),
            log=r.run_dir(output) / rundir.LOG,
            cost=cost[r],
            outcome=_outcome(r, output),
            title=f"rbdc study {study.name}:",
        )
        for r in todo
    ]
    failed = pool.run(
        pending, jobs=jobs, threads=threads, total=total, done_before=done_before, nproc=study.nproc, log=log
    )
    return [job.key for job in failed]


def summary(study: Study, output: Path) -> str:
    """A plain-text table: one row per point and budget, top-1 mean and spread over the finished seeds."""
    groups: dict[str, list[dict]] = {}
    for r in study.runs:
        groups.setdefault(r.name, [])
        p = r.run_dir(output) / rundir.RESULTS
        if p.is_file():
            groups[r.name].append(json.loads(p.read_text()))
    lines = [f"{'run':48s} {'seeds':>5s} {'top-1':>14s} {'train FLOPs':>12s} {'wall':>8s}"]
    for name, res in groups.items():
        n = len(res)
        if not n:
            lines.append(f"{name:48s} {0:5d} {'-':>14s}")
            continue
        top = [x["eval_top1"] for x in res]
        mean = sum(top) / n
        sd = math.sqrt(sum((t - mean) ** 2 for t in top) / (n - 1)) if n > 1 else float("nan")
        lines.append(
            f"{name:48s} {n:5d} {mean:8.2f} ± {sd:4.2f} {human_flops(res[0]['total_train_flops']):>12s} "
            f"{human_time(sum(x['wall_s'] for x in res) / n):>8s}"
        )
    return "\n".join(lines)


def submit(runs: list[StudyRun], output: Path, cluster: str | None, args) -> list:
    """One job per run through submitit (``cluster``: None = Slurm when present, or ``local`` / ``debug``)."""
    try:
        import submitit
    except ImportError as e:
        raise UserError("--slurm needs submitit: pip install 'rbdc[slurm]'") from e
    if not runs:
        return []
    ex = submitit.AutoExecutor(folder=output / "submitit" / "%j", cluster=cluster)
    params = dict(timeout_min=args.timeout_min, name="rbdc-study")
    if cluster in (None, "slurm"):
        params.update(
            slurm_partition=args.partition,
            slurm_signal_delay_s=120,
            gpus_per_node=args.gpus_per_run,
            cpus_per_task=args.cpus_per_run,
            slurm_array_parallelism=args.array_parallelism,
        )
    ex.update_parameters(**params)
    with ex.batch():  # one array job on Slurm
        jobs = [ex.submit(SlurmTrain(r.recipe, str(output), r.extra_args())) for r in runs]
    return jobs


def _selected(study: Study, only) -> list[StudyRun]:
    runs = study.runs
    if only:
        runs = [r for r in runs if any(part in r.name for part in only)]
        if not runs:
            raise UserError(f"--only {only} matches no run of {study.name}; points: {', '.join(study.points)}")
    return runs


def changed_runs(runs: list[StudyRun], output: Path) -> dict[StudyRun, list[str]]:
    """Runs under ``output`` whose recipe differs from what the study file now asks, with the keys that differ."""
    found = {r: r.changed(output) for r in runs if not r.waiting}
    return {r: keys for r, keys in found.items() if keys}


def supersede(changed: dict[StudyRun, list[str]], output: Path, log=print) -> None:
    """Move changed runs aside into ``OUTPUT/superseded/`` (kept, never counted) so the study reruns them."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for r in changed:
        src = r.run_dir(output)
        dest = output / "superseded" / r.name / f"seed{r.seed}-{stamp}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with runlock.hold(src):
            src.rename(dest)
        log(f"moved {src} -> {dest}")


def _refuse_changed(changed: dict[StudyRun, list[str]], output: Path) -> None:
    for r, keys in changed.items():
        print(f"changed  {r.name} seed {r.seed}: {', '.join(keys)}", file=sys.stderr)
    raise UserError(
        f"{len(changed)} run(s) under {output} were made with other settings than the study file now "
        "asks (listed above): --rerun-changed moves them into superseded/ and reruns them, or restore "
        "the study file"
    )


def _settle_changed(runs: list[StudyRun], output: Path, rerun_changed: bool) -> None:
    """Refuse (or, with ``--rerun-changed``, move aside) the runs made with other settings than the study asks."""
    changed = changed_runs(runs, output)
    if changed and not rerun_changed:
        _refuse_changed(changed, output)
    supersede(changed, output)


def cmd_study(args) -> int:
    output = Path(args.output or os.environ.get("RBDC_OUT", "runs")).resolve()
    study = load_study(args.study, output)
    runs = _selected(study, args.only)
    if args.list or args.dry_run:
        return _list_runs(study, runs, output, args.jobs or study.jobs, args.threads or study.threads)
    _settle_changed(runs, output, args.rerun_changed)
    if args.slurm or args.executor:
        return _submit_runs(study, runs, output, args)
    t0 = time.time()
    jobs, threads = args.jobs or study.jobs, args.threads or study.threads
    failed = run_local(
        study, output, [r for r in runs if not r.waiting], jobs, threads, retry_failed=args.retry_failed, wait=args.wait
    )
    if any(r.waiting for r in runs):  # the trials have run: what they decided can run now
        study = load_study(args.study, output)
        for pid, why in study.choices.items():
            print(f"{pid}: {why}")
        runs = _selected(study, args.only)
        _settle_changed(runs, output, args.rerun_changed)  # a new trial may have moved a point's tuned setting
        failed += run_local(
            study,
            output,
            [r for r in runs if not r.waiting],
            jobs,
            threads,
            retry_failed=args.retry_failed,
            wait=args.wait,
        )
    print(f"\nstudy {study.name} after {human_time(time.time() - t0)}:")
    print(summary(study, output))
    if failed:
        print(
            f"{len(failed)} run(s) failed: "
            + ", ".join(f"{r.name} seed {r.seed}" for r in failed)
            + "; their train.log says why; rerun the same command to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


def _list_runs(study: Study, runs: list[StudyRun], output: Path, jobs: int, threads: int) -> int:
    """``--list`` / ``--dry-run``: every run with its status, planned FLOPs and overrides, the study's choices, the
    count per status and the training left, in FLOPs and in hours here. A run made with other settings than the study
    now asks is listed as ``changed`` with the keys that differ, never as done at the settings it shows. Plans every
    run, so a broken point shows here."""
    left, counts, changed, redo = [], collections.Counter(), changed_runs(runs, output), 0.0
    for r in runs:
        c, status = _checked_plan(r), r.status(output)
        if r in changed:
            status, redo = "changed", redo + c
        counts[status] += 1
        if status not in ("done", "changed"):
            left.append((r, c))
        print(f"{status:8s} {r.name} seed {r.seed}  {human_flops(c)}  [{' '.join(r.overrides)}]")
    for pid, why in study.choices.items():
        print(f"{pid}: {why}")
    for r, keys in changed.items():
        print(f"changed  {r.name} seed {r.seed}: made with other {', '.join(keys)} (--rerun-changed reruns it)")
    print(f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    print(f"{human_flops(sum(c for _, c in left))} of training left -> {output}")
    if changed:
        print(f"plus {human_flops(redo)} if the {len(changed)} changed run(s) are rerun (--rerun-changed)")
    print(eta.eta_text(runs, left, output, jobs, threads))
    return 0


def _submit_runs(study: Study, runs: list[StudyRun], output: Path, args) -> int:
    """``--slurm`` / ``--executor``: submit the unfinished runs (submitit); with ``--wait``, wait for them and print
    the summary."""
    todo = [r for r in runs if r.status(output) in ("pending", "started")]
    waiting = sum(r.status(output) == "waiting" for r in runs)
    if waiting:
        print(f"{waiting} run(s) wait for their tuning trials: rerun this command once those have finished")
    jobs_ = submit(todo, output, args.executor, args)
    print(
        f"submitted {len(jobs_)} runs of {study.name} ({', '.join(j.job_id for j in jobs_[:3])}"
        f"{', ...' if len(jobs_) > 3 else ''}); rerun this command to submit what is left"
    )
    if args.wait:
        rcs = [j.result() for j in jobs_]
        print(summary(study, output))
        return 1 if any(rcs) else 0
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser(
        "study",
        help="run a study file (a grid of recipes x budgets x seeds) here or on Slurm; reruns resume",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  rbdc study configs/studies/imagenette32.yaml            # 2 runs at once x 1 thread, resumable\n"
        "  rbdc study configs/studies/imagenette32.yaml --list     # every run, its status and FLOPs\n"
        "  rbdc study configs/studies/imagenette32.yaml --only vit-scratch --jobs 1 --threads 2\n"
        "  rbdc study configs/studies/imagenette32.yaml --report     # reports/imagenette32.md + figures\n"
        "  rbdc study configs/studies/imagenette64-gpu.yaml --slurm --partition gpu\n",
    )
    p.add_argument("study", help="study YAML (configs/studies/...)")
    p.add_argument("--output", "-o", default=None, help="runs root (default: $RBDC_OUT or runs)")
    p.add_argument("--jobs", type=int, default=None, help="runs at once (default: the study's `jobs`)")
    p.add_argument("--threads", type=int, default=None, help="threads per run (default: the study's `threads`)")
    p.add_argument("--only", action="append", metavar="TEXT", help="only runs whose name contains TEXT (repeatable)")
    p.add_argument("--retry-failed", action="store_true", help="run again the runs marked failed (failed.json)")
    p.add_argument("--list", action="store_true", help="list the runs with their status and planned FLOPs")
    p.add_argument("--dry-run", action="store_true", help="same as --list")
    p.add_argument(
        "--report",
        action="store_true",
        help="write the study's report (Fig. 2, Fig. 3, savings with "
        "intervals, verdict) from the finished runs under OUTPUT, then exit",
    )
    p.add_argument(
        "--report-to", default=None, metavar="PREFIX", help="report path without suffix (default: reports/<study name>)"
    )
    p.add_argument("--slurm", action="store_true", help="submit one Slurm job per unfinished run (submitit)")
    p.add_argument(
        "--executor",
        choices=("local", "debug"),
        default=None,
        help="submit through submitit's local or debug executor (the Slurm path, run here)",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="with --slurm/--executor: wait for the jobs, print the "
        "summary; here: wait for runs another launcher is training instead of skipping them",
    )
    p.add_argument(
        "--rerun-changed",
        action="store_true",
        help="move runs made with other settings than the study file now asks into OUTPUT/superseded/ and rerun them",
    )
    p.add_argument("--partition", default=os.environ.get("SLURM_PARTITION"))
    p.add_argument("--timeout-min", type=int, default=int(os.environ.get("RBDC_TIMEOUT_MIN", 1440)))
    p.add_argument("--gpus-per-run", type=int, default=1)
    p.add_argument("--cpus-per-run", type=int, default=8)
    p.add_argument("--array-parallelism", type=int, default=64)
    p.set_defaults(func=cmd_study)
