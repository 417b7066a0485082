"""``rbdc study STUDY.yaml``: a grid of runs (protocol variants x budgets x seeds x overrides) as data, run
unattended and resumably on this machine (a local process pool) or on Slurm (submitit, one job per run).

A study file (``benchmarks/studies/*.yaml``)::

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
import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import pool, rundir, runlock, tuning
from .errors import UserError
from .recipe import load_yaml
from .units import human_flops, human_time

REPO = pool.REPO  # the checkout whose code the runs use
STUDY_KEYS = {"name", "seeds", "jobs", "threads", "nproc", "set", "points", "output", "description", "report",
              "tuning"}
POINT_KEYS = {"id", "recipe", "budgets", "grid", "set"}


@dataclass(frozen=True)
class StudyRun:
    """One run of a study: a recipe, its overrides, a seed, and the run directory's name."""

    name: str                 # <study>/<point>/b<budget>: the report's group
    recipe: str               # absolute path of the recipe file
    overrides: tuple[str, ...] = ()
    seed: int = 0
    budget_epochs: float | None = None
    point: str = ""
    waiting: str = ""         # why it cannot start yet (a tuned point before its trials finish)

    def run_dir(self, output: str | Path) -> Path:
        return rundir.run_dir(output, self.name, self.seed)

    def extra_args(self) -> list[str]:
        """``rbdc train`` arguments after the recipe and output."""
        args = ["--name", self.name, "--seed", str(self.seed)]
        for o in self.overrides:
            args += ["--set", o]
        return args

    def train_args(self, output: str | Path) -> list[str]:
        return ["train", "-c", self.recipe, "-o", str(output), *self.extra_args()]

    def changed(self, output: str | Path) -> list[str]:
        """The recipe keys in which this run's stored ``recipe.yaml`` differs from what the study now asks (none
        for a run not started)."""
        from . import recipe as recipes
        path = self.run_dir(output) / rundir.RECIPE
        if not path.is_file():
            return []
        want = _flat(recipes.resolve(self.recipe, list(self.overrides), seed=self.seed, name=self.name).to_dict())
        try:
            have = _flat(recipes.resolve(path).to_dict())
        except UserError as e:  # damaged, or not written by rbdc train: never counted as the study's run
            return [f"{rundir.RECIPE} unreadable ({e})"]
        return sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))

    def status(self, output: str | Path) -> str:
        d = self.run_dir(output)
        if self.waiting:
            return "waiting"
        if (d / rundir.RESULTS).is_file():
            return "done"
        if (d / rundir.FAILED).is_file():
            return "failed"
        return "started" if (d / rundir.RECIPE).is_file() else "pending"


@dataclass
class Study:
    name: str
    path: Path
    runs: list[StudyRun]
    jobs: int = 2
    threads: int = 1
    description: str = ""
    points: list[str] = field(default_factory=list)
    nproc: int = 1            # processes (GPUs) per run: > 1 runs each through torchrun
    tuning: tuning.Tuning | None = None
    choices: dict[str, str] = field(default_factory=dict)   # tuned point -> its trial's account (rbdc.tuning)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k in ("data", "rbdc", "growth"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _fmt_value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def group_name(study: str, point: str, budget) -> str:
    """The report group (and run folder) of a point at a budget: ``<study>/<point>/b<budget>``."""
    return f"{study}/{point}" + ("" if budget is None else f"/b{_fmt_value(budget)}")


def _override(key: str, value) -> str:
    return f"{key}={json.dumps(value) if isinstance(value, (list, dict)) else value}"


def read_study_file(path: str | Path) -> tuple[Path, dict]:
    """The resolved path and the mapping of a study file (classification or detection)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise UserError(f"study {path} not found; studies live under benchmarks/studies/")
    try:
        return path, load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"study {path} is not valid YAML: {e}") from e


def load_study(path: str | Path, output: str | Path | None = None) -> Study:
    """Read and expand a study file into its runs, in execution order (tuning trials, then points, then budgets,
    then seeds). A tuned point takes its best trial's overrides from the finished trial runs under ``output``; until
    they are all finished (or without ``output``) its runs wait."""
    path, data = read_study_file(path)
    if data.get("kind") == "detection":
        raise UserError(f"{path} is a detection study: run it with rbdc det-study {path}")
    unknown = sorted(set(data) - STUDY_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown study key(s) {unknown}; known: {', '.join(sorted(STUDY_KEYS))}")
    for key in ("name", "points"):
        if not data.get(key):
            raise UserError(f"{path}: the study needs `{key}:`")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise UserError(f"{path}: `seeds` must be a list of non-negative integers, got {seeds!r}")
    jobs, threads, nproc = data.get("jobs", 2), data.get("threads", 1), data.get("nproc", 1)
    common = data.get("set") or {}
    if not isinstance(common, dict):
        raise UserError(f"{path}: `set` maps recipe keys to values (overrides of every point)")
    for key, v in (("jobs", jobs), ("threads", threads), ("nproc", nproc)):
        if not isinstance(v, int) or v < 1:
            raise UserError(f"{path}: `{key}` must be a positive integer, got {v!r}")
    expanded: list[tuple[str, Path, dict, list]] = []  # (point id, recipe, overrides, budgets)
    ids: list[str] = []
    for i, pt in enumerate(data["points"]):
        where = f"{path}: point {i + 1}"
        if not isinstance(pt, dict):
            raise UserError(f"{where} must be a mapping with id, recipe, budgets")
        bad = sorted(set(pt) - POINT_KEYS)
        if bad:
            raise UserError(f"{where}: unknown key(s) {bad}; known: {', '.join(sorted(POINT_KEYS))}")
        if not pt.get("id") or not pt.get("recipe"):
            raise UserError(f"{where} needs `id` and `recipe`")
        recipe = (path.parent / pt["recipe"]).resolve()
        if not recipe.is_file():
            raise UserError(f"{where} ({pt['id']}): recipe {recipe} not found")
        budgets = pt.get("budgets", [None])
        if not isinstance(budgets, list) or not budgets or not all(
                b is None or (isinstance(b, (int, float)) and b > 0) for b in budgets):
            raise UserError(f"{where} ({pt['id']}): `budgets` must be a list of positive numbers (epochs of the "
                            f"target's training FLOPs), got {budgets!r}")
        grid = pt.get("grid") or {}
        fixed = pt.get("set") or {}
        if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
            raise UserError(f"{where} ({pt['id']}): `grid` maps recipe keys to non-empty lists of values")
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            values = dict(zip(keys, combo))
            pid = pt["id"]
            for k, v in values.items():
                pid = pid.replace("{" + k + "}", _fmt_value(v))
            if "{" in pid:
                raise UserError(f"{where}: id {pt['id']!r} names a key in braces that is not a grid key "
                                f"(grid: {', '.join(keys) or 'none'})")
            if keys and pid == pt["id"]:
                pid += "-" + "-".join(f"{k.split('.')[-1]}{_fmt_value(v)}" for k, v in values.items())
            if pid in ids:
                raise UserError(f"{where}: point id {pid!r} is used twice; give each point its own id")
            ids.append(pid)
            expanded.append((pid, recipe, {**common, **fixed, **values}, budgets))
    tune = tuning.parse(data["tuning"], f"{path}", ids, _key_checker(expanded)) if "tuning" in data else None
    runs: list[StudyRun] = []
    choices: dict[str, str] = {}

    def add(name_pid: str, pid: str, recipe: Path, over: dict, b, seed: int, waiting: str = "") -> None:
        extra = tuple(_override(k, v) for k, v in over.items())
        extra += (f"budget_epochs={_fmt_value(b)}",) if b is not None else ()
        runs.append(StudyRun(group_name(data["name"], name_pid, b), str(recipe), extra, seed, b, pid, waiting))

    if tune:  # trials first, the cheapest budget first for every point
        for b in sorted(tune.budgets):
            for pid, recipe, over, _ in expanded:
                for t in tune.trials.get(pid, []):
                    for s in tune.seeds:
                        tp = tuning.trial_point(pid, t.index)
                        add(tp, tp, recipe, {**over, **t.overrides, **tune.split}, b, s)
    for pid, recipe, over, budgets in expanded:
        waiting = ""
        if tune and pid in tune.trials:
            trial, choices[pid] = (tuning.choice(tune, pid, trial_dir(data["name"], output)) if output is not None
                                   else (None, "awaiting tuning"))
            if trial is None:
                waiting = choices[pid]
            else:
                over = {**over, **trial.overrides}
        for b in budgets:
            for s in seeds:
                add(pid, pid, recipe, over, b, s, waiting)
    return Study(data["name"], path, runs, jobs, threads, data.get("description", ""), ids, nproc, tune, choices)


def trial_dir(study: str, output: str | Path):
    """Where a trial run of ``study`` lives under ``output``, as ``run_dir(trial point, budget, seed)``."""
    return lambda point, b, seed: rundir.run_dir(output, group_name(study, point, b), seed)


def _key_checker(expanded: list[tuple[str, Path, dict, list]]):
    """``known(point, key)``: the key is in the recipe schema and read by the point's protocol."""
    from . import protocols
    from .recipe import SCHEMA, resolve
    points = {pid: (recipe, over) for pid, recipe, over, _ in expanded}

    def known(pid: str, key: str) -> bool:
        recipe, over = points[pid]
        return key in SCHEMA and protocols.get(over.get("protocol") or resolve(recipe).protocol).owns_key(key)
    return known


def planned_flops(run: StudyRun) -> float:
    """The run's total training FLOPs from its plan (the data's size as :func:`rbdc.data.plan_size` gives it)."""
    from . import recipe as recipes
    from .data import plan_size
    from .protocols.planning import plan_stages, stage_flops
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


def run_local(study: Study, output: Path, runs: list[StudyRun], jobs: int, threads: int, log=print,
              retry_failed: bool = False, wait: bool = False) -> list:
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
    log(f"study {study.name}: {total} runs, {done_before} done, {len(todo)} to run "
        f"({human_flops(sum(cost[r] for r in todo))} of training) as {jobs} x {threads} thread(s) -> {output}")
    # a retried run's failed.json stays: train clears it on success and refuses to resume a diverged run (it would
    # replay the same steps)
    pending = [pool.Job(key=r, label=f"{r.name} seed {r.seed}",
                        argv=("rbdc.cli", *r.train_args(output), *(["--wait"] if wait else [])),
                        log=r.run_dir(output) / rundir.LOG, cost=cost[r], outcome=_outcome(r, output),
                        title=f"rbdc study {study.name}:")
               for r in todo]
    failed = pool.run(pending, jobs=jobs, threads=threads, total=total, done_before=done_before, nproc=study.nproc,
                      log=log)
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
        lines.append(f"{name:48s} {n:5d} {mean:8.2f} ± {sd:4.2f} {human_flops(res[0]['total_train_flops']):>12s} "
                     f"{human_time(sum(x['wall_s'] for x in res) / n):>8s}")
    return "\n".join(lines)


def submit(runs: list[StudyRun], output: Path, cluster: str | None, args) -> list:
    """One job per run through submitit (``cluster``: None = Slurm when present, or ``local`` / ``debug``)."""
    try:
        import submitit
    except ImportError as e:
        raise UserError("--slurm needs submitit: pip install 'rbdc[slurm]'") from e
    from .launch import SlurmTrain
    if not runs:
        return []
    ex = submitit.AutoExecutor(folder=output / "submitit" / "%j", cluster=cluster)
    params = dict(timeout_min=args.timeout_min, name="rbdc-study")
    if cluster in (None, "slurm"):
        params.update(slurm_partition=args.partition, slurm_signal_delay_s=120, gpus_per_node=args.gpus_per_run,
                      cpus_per_task=args.cpus_per_run, slurm_array_parallelism=args.array_parallelism)
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
    raise UserError(f"{len(changed)} run(s) under {output} were made with other settings than the study file now "
                    "asks (listed above): --rerun-changed moves them into superseded/ and reruns them, or restore "
                    "the study file")


def cmd_study(args) -> int:
    output = Path(args.output or os.environ.get("RBDC_OUT", "runs")).resolve()
    study = load_study(args.study, output)
    runs = _selected(study, args.only)
    jobs, threads = args.jobs or study.jobs, args.threads or study.threads
    if args.list or args.dry_run:
        cost = 0.0
        for r in runs:
            c = _checked_plan(r)
            cost += c if r.status(output) != "done" else 0
            print(f"{r.status(output):8s} {r.name} seed {r.seed}  {human_flops(c)}  "
                  f"[{' '.join(r.overrides)}]" + (f"  ({r.waiting})" if r.waiting else ""))
        for pid, why in study.choices.items():
            print(f"{pid}: {why}")
        for r, keys in changed_runs(runs, output).items():
            print(f"changed  {r.name} seed {r.seed}: {', '.join(keys)} (--rerun-changed reruns it)")
        print(f"{len(runs)} runs, {human_flops(cost)} of training left -> {output}")
        return 0
    changed = changed_runs(runs, output)
    if changed and not args.rerun_changed:
        _refuse_changed(changed, output)
    supersede(changed, output)
    if args.slurm or args.executor:
        todo = [r for r in runs if r.status(output) in ("pending", "started")]
        waiting = sum(r.status(output) == "waiting" for r in runs)
        if waiting:
            print(f"{waiting} run(s) wait for their tuning trials: rerun this command once those have finished")
        jobs_ = submit(todo, output, args.executor, args)
        print(f"submitted {len(jobs_)} runs of {study.name} ({', '.join(j.job_id for j in jobs_[:3])}"
              f"{', ...' if len(jobs_) > 3 else ''}); rerun this command to submit what is left")
        if args.wait:
            rcs = [j.result() for j in jobs_]
            print(summary(study, output))
            return 1 if any(rcs) else 0
        return 0
    t0 = time.time()
    failed = run_local(study, output, [r for r in runs if not r.waiting], jobs, threads,
                       retry_failed=args.retry_failed, wait=args.wait)
    if any(r.waiting for r in runs):  # the trials have run: what they decided can run now
        study = load_study(args.study, output)
        for pid, why in study.choices.items():
            print(f"{pid}: {why}")
        runs = _selected(study, args.only)
        failed += run_local(study, output, [r for r in runs if not r.waiting], jobs, threads,
                            retry_failed=args.retry_failed, wait=args.wait)
    print(f"\nstudy {study.name} after {human_time(time.time() - t0)}:")
    print(summary(study, output))
    if failed:
        print(f"{len(failed)} run(s) failed: " + ", ".join(f"{r.name} seed {r.seed}" for r in failed) +
              "; their train.log says why; rerun the same command to retry them", file=sys.stderr)
        return 1
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser(
        "study", help="run a study file (a grid of recipes x budgets x seeds) here or on Slurm; reruns resume",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  rbdc study benchmarks/studies/imagenette32.yaml            # 2 runs at once x 1 thread, resumable\n"
               "  rbdc study benchmarks/studies/imagenette32.yaml --list     # every run, its status and FLOPs\n"
               "  rbdc study benchmarks/studies/imagenette32.yaml --only vit-scratch --jobs 1 --threads 2\n"
               "  rbdc study benchmarks/studies/imagenette32.yaml --report     # reports/imagenette32.md + figures\n"
               "  rbdc study benchmarks/studies/imagenette64-gpu.yaml --slurm --partition gpu\n")
    p.add_argument("study", help="study YAML (benchmarks/studies/...)")
    p.add_argument("--output", "-o", default=None, help="runs root (default: $RBDC_OUT or runs)")
    p.add_argument("--jobs", type=int, default=None, help="runs at once (default: the study's `jobs`)")
    p.add_argument("--threads", type=int, default=None, help="threads per run (default: the study's `threads`)")
    p.add_argument("--only", action="append", metavar="TEXT", help="only runs whose name contains TEXT (repeatable)")
    p.add_argument("--retry-failed", action="store_true", help="run again the runs marked failed (failed.json)")
    p.add_argument("--list", action="store_true", help="list the runs with their status and planned FLOPs")
    p.add_argument("--dry-run", action="store_true", help="same as --list")
    p.add_argument("--report", action="store_true", help="write the study's report (Fig. 2, Fig. 3, savings with "
                   "intervals, verdict) from the finished runs under OUTPUT, then exit")
    p.add_argument("--report-to", default=None, metavar="PREFIX",
                   help="report path without suffix (default: reports/<study name>)")
    p.add_argument("--slurm", action="store_true", help="submit one Slurm job per unfinished run (submitit)")
    p.add_argument("--executor", choices=("local", "debug"), default=None,
                   help="submit through submitit's local or debug executor (the Slurm path, run here)")
    p.add_argument("--wait", action="store_true", help="with --slurm/--executor: wait for the jobs, print the "
                   "summary; here: wait for runs another launcher is training instead of skipping them")
    p.add_argument("--rerun-changed", action="store_true", help="move runs made with other settings than the "
                   "study file now asks into OUTPUT/superseded/ and rerun them")
    p.add_argument("--partition", default=os.environ.get("SLURM_PARTITION"))
    p.add_argument("--timeout-min", type=int, default=int(os.environ.get("RBDC_TIMEOUT_MIN", 1440)))
    p.add_argument("--gpus-per-run", type=int, default=1)
    p.add_argument("--cpus-per-run", type=int, default=8)
    p.add_argument("--array-parallelism", type=int, default=64)
    p.set_defaults(func=cmd_study)
