"""``rbdc train``: run a recipe's protocol into a run directory (its layout: :mod:`rbdc.rundir`), stage by stage,
resuming automatically; ``rbdc.jobs`` > 1 trains independent stages in parallel processes (:mod:`rbdc.jobs`)."""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from pathlib import Path

import torch

from . import bf16, jobs, perf
from . import recipe as recipes
from . import preempt, rundir, runlock
from .checkpoint import save_weights
from .coupling import named_optimizer_state
from .data import build_dataset, build_loader, holdout_split
from . import protocols
from .engine import Dist, evaluate, train_stage
from .errors import UserError
from .flops import Ledger
from .protocols import BuildContext, describe_plan, lr_for, plan_stages
from .rundir import atomic_write_bytes, code_version, load_state, save_state, sha256

KNOWN_TRAIN_SIZES = {"imagenet": 1_281_167, "imagenette": 9_469, "cifar100": 50_000}
KNOWN_CLASSES = {"imagenet": 1000, "cifar100": 100}


def _device(recipe: dict, d: Dist) -> torch.device:
    if recipe["device"] != "auto":
        return torch.device(recipe["device"])
    return torch.device(f"cuda:{d.local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def _data_root(recipe: dict) -> str | None:
    root = recipe["data"]["root"]  # imagenette without a root: rbdc.data.find_imagenette searches RBDC_DATA etc.
    if root is None and recipe["data"]["source"] == "imagenet":
        root = os.environ.get("IMAGENET_ROOT")
    return root


def _datasets(recipe: dict):
    dc = recipe["data"]
    common = dict(img_size=recipe["img_size"], num_classes=recipe["num_classes"], seed=0)
    root = _data_root(recipe)
    train = build_dataset(dc["source"], root, "train", subset=dc["subset"], download=dc["download"], **common)
    if dc["holdout"] is not None:  # the tuning split: evaluate on held-out train images, never read val
        return holdout_split(train, dc["holdout"], dc["holdout_seed"])
    val = build_dataset(dc["source"], root, "val", subset=dc["val_subset"], download=dc["download"], **common)
    return train, val


def _env_info(device: torch.device, amp: str | None = None) -> dict:
    import timm
    cpu = {**perf.cpu_info(), **({"bf16_matmul": bf16.matmul_path()} if amp == "bf16" else {})}
    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
            **({} if device.type == "cuda" else {"cpu": cpu}),
            "host": platform.node(), "threads": torch.get_num_threads(), "code": code_version()}


class Run:
    """One run directory: resolves where a run stands and moves it forward stage by stage."""

    def __init__(self, recipe: dict, output: str | Path, d: Dist, log=print, only_stage: str | None = None,
                 allow_mixed: bool = False):
        self.recipe, self.d, self.log, self.only_stage = recipe, d, log, only_stage
        self.allow_mixed = allow_mixed
        self.root = Path(output)
        self.dir = rundir.run_dir(self.root, recipe["name"], recipe["seed"])
        self.device = _device(recipe, d)
        self.protocol = protocols.get(recipe["protocol"])
        self.stage: str | None = None  # the stage in progress (for failed.json)
        self.command = rundir.relative_argv(["rbdc", *sys.argv[1:]], self.root)

    def prepare(self) -> None:
        text = recipes.dump(self.recipe)
        existing = self.dir / rundir.RECIPE
        if self.dir.exists() and not self.dir.is_dir():
            raise UserError(f"{self.dir} is a file, not a run directory; move it away or pick another --output")
        # resolved, so that a run written before a new recipe key existed (with its default) still resumes
        if existing.is_file() and existing.read_text() != text and recipes.resolve(existing) != self.recipe:
            raise UserError(f"{self.dir} holds a run of a different recipe (see its {rundir.RECIPE}); resume it with "
                            f"`rbdc train --recipe {existing}`, or pick another --output or name")
        if not self.only_stage:
            rundir.refuse_diverged(self.dir)
        if self.d.main and not self.only_stage:
            with rundir.user_errors(self.dir):
                self.dir.mkdir(parents=True, exist_ok=True)
            env = _env_info(self.device, self.recipe["amp"])
            mixed = rundir.mixed_with(self.dir, env)
            if mixed and not self.allow_mixed:
                raise UserError(f"{self.dir} started under {mixed[0]} and would resume under {mixed[1]}: a run "
                                "mixes neither; resume it where it started, start a new run, or pass --allow-mixed")
            atomic_write_bytes(existing, text.encode())
            rundir.append_command(self.dir, self.command, {**env, **({"mixed": list(mixed)} if mixed else {})})
            if self.recipe["amp"] == "bf16" and bf16.needed(self.device):
                self.log("this CPU has no bf16 matmul kernels: bf16 autocast runs its matmuls as fp32 GEMMs of "
                         "bf16-rounded operands, rounded to bf16 (oneDNN's result up to summation order; rbdc/bf16.py)")

    def _manifest(self) -> dict:
        return rundir.read_manifest(self.dir)

    def _write_progress(self, rows: list[dict], ledger: Ledger) -> None:
        if self.d.main and not self.only_stage:
            rundir.write_progress(self.dir, rows, ledger)

    def plan(self) -> None:
        """The data and the stages: an impossible plan is refused before the run directory exists."""
        rec = self.recipe
        self.train_ds, self.val_ds = _datasets(rec)
        self.num_classes = rec["num_classes"] or self.train_ds.num_classes
        self.stages = plan_stages(rec, len(self.train_ds), self.num_classes)
        self.steps_per_epoch = len(self.train_ds) // rec["batch_size"]

    def execute(self) -> dict:
        rec = self.recipe
        train_ds, val_ds, num_classes, stages = self.train_ds, self.val_ds, self.num_classes, self.stages
        self.log(f"run {self.dir}  ({rec['protocol']}, target {rec['model']}, {len(train_ds):,} train / "
                 f"{len(val_ds):,} {val_ds.split} images, device {self.device})")
        self.log(describe_plan(rec, stages, len(train_ds), num_classes))
        micro = rec["micro_batch"] or rec["batch_size"] // self.d.world
        self.log(f"effective global batch {rec['batch_size']} (micro-batch {micro} x {self.d.world} process(es)), "
                 f"lr {lr_for(rec):.3g} = {rec['lr_base']:g} x {rec['batch_size']}/512")
        man = self._manifest()
        if self.d.main:
            if self.only_stage:
                rundir.clear_failed(rundir.stage_dir(self.dir, self.only_stage))
            rundir.remove_orphans(self.dir, [s.id for s in stages], man["stages"], top=not self.only_stage)
        loader_kw = dict(img_size=rec["img_size"], in_memory=rec["data"]["in_memory"], num_workers=rec["workers"],
                         distributed=self.d.world > 1, device=self.device)
        val_loader = build_loader(val_ds, batch_size=max(micro, 64), train=False, **loader_kw)
        if self.only_stage:  # a child of --jobs: this stage alone, with its own rows and ledger
            stages = [s for s in stages if s.id == self.only_stage]
            man = {**man, "rows": [], "ledger": {}}
        elif rec["rbdc"]["jobs"] > 1 and self.d.world == 1:
            jobs.run_parallel(self.dir, stages, man, rec["rbdc"]["jobs"], self.log)
        elif rec["rbdc"]["jobs"] > 1:
            self.log(f"rbdc.jobs {rec['rbdc']['jobs']} ignored under {self.d.world} processes: each stage trains "
                     "with all of them, one after another")
        for st in stages:
            if st.id in man["stages"]:
                continue
            sdir = rundir.stage_dir(self.dir, st.id)
            if not self.only_stage and (sdir / rundir.STAGE_DONE).is_file():  # a child of rbdc.jobs trained it
                jobs.merge(self.dir, st.id, man, self.d.main)
                continue
            self.stage = st.id
            sdir.mkdir(parents=True, exist_ok=True)
            train_loader = build_loader(train_ds, batch_size=micro, train=True, aug=rec["aug"], seed=st.seed,
                                        repeated_aug=rec["repeated_aug"], **loader_kw)
            built, parents = self._build(st, num_classes, man, train_loader)
            model, growth_cost = built.model, built.cost
            state = rundir.load_checkpoint(sdir)
            rows = state["rows"] if state else list(man["rows"])
            ledger = Ledger.from_dict(state["ledger"] if state else man["ledger"])
            if state:  # a kill after the checkpoint's write left these behind it
                self._write_progress(rows, ledger)
            if growth_cost and state is None:
                ledger.add(st.id, *growth_cost)
            # the coupled model before any training: how exact was the coupling?
            if parents and state is None and self.protocol.evaluates_growth:
                ev = evaluate(model.to(self.device), val_loader, rec, self.device, self.d)
                rows.append({"stage": st.id, "model": st.model_name, "epoch": -1, **ev,
                             "cum_train_flops": ledger.total, "images_seen": 0, "train_flops": 0})
                self.log(f"[{st.id}] coupled model before training: top-1 {ev['eval_top1']:.2f}")

            def on_epoch(row, ckpt, sdir=sdir, rows=rows, ledger=ledger):
                rows.append(row)
                if self.d.main:
                    save_state({**ckpt, "rows": rows, "ledger": ledger.to_dict()}, sdir / rundir.CHECKPOINT)
                    self._write_progress(rows, ledger)

            def on_preempt(ckpt, sdir=sdir, rows=rows, ledger=ledger):
                if self.d.main:
                    save_state({**ckpt, "rows": rows, "ledger": ledger.to_dict()}, sdir / rundir.CHECKPOINT)

            model, opt = train_stage(model, st, rec, train_loader, val_loader, self.device, ledger, on_epoch,
                                     state=state, optimizer_state=built.optimizer_state if state is None else None,
                                     d=self.d, log=self.log, on_preempt=on_preempt)
            final, opt_path = sdir / rundir.FINAL, sdir / rundir.OPTIMIZER
            if self.d.main:
                save_weights(model, final, stage=st.id, recipe=rec["name"])
                if self.protocol.carries_optimizer(rec):
                    save_state(named_optimizer_state(model, opt), opt_path)
            self._barrier()  # every rank reads the stage's final weights from here on
            entry = {"model": st.model_name, "final": str(final.relative_to(self.dir)), "sha256": sha256(final),
                     "parents": parents, "steps": st.steps}
            if self.protocol.carries_optimizer(rec):
                entry["optimizer"] = {"path": str(opt_path.relative_to(self.dir)), "sha256": sha256(opt_path)}
            if self.only_stage:
                payload = {"entry": entry, "rows": rows, "ledger": ledger.to_dict()}
                rundir.write_json(sdir / rundir.STAGE_DONE, payload)
                (sdir / rundir.CHECKPOINT).unlink(missing_ok=True)
                return {}
            man["stages"][st.id] = entry
            man["rows"], man["ledger"] = rows, ledger.to_dict()
            if self.d.main:
                rundir.write_manifest(self.dir, man)
                (sdir / rundir.CHECKPOINT).unlink(missing_ok=True)
            self._barrier()
        return self._finish(stages, man)

    def _barrier(self) -> None:
        if self.d.world > 1:
            torch.distributed.barrier()

    def _build(self, st, num_classes: int, man: dict, train_loader):
        """The stage's starting model (:class:`rbdc.protocols.Built`) and its parents' provenance."""
        paths = [rundir.verified(self.dir, man["stages"][p], p) for p in st.parents]
        parents = [{"stage": p, "path": str(path.relative_to(self.dir)), "sha256": man["stages"][p]["sha256"]}
                   for p, path in zip(st.parents, paths)]
        ctx = BuildContext(self.recipe, num_classes, self.stages, lambda stage: self._optimizer_state(man, stage),
                           train_loader, self.device, self.d.world, self.log)
        return self.protocol.build(st, paths, ctx), parents

    def _optimizer_state(self, man: dict, stage: str) -> dict:
        """A finished stage's carried optimizer state (AdamW moments by parameter name)."""
        entry = man["stages"][stage]
        path = rundir.verified(self.dir, entry, stage, "optimizer") if "optimizer" in entry else \
            rundir.stage_dir(self.dir, stage) / rundir.OPTIMIZER  # runs made before the manifest listed it
        return load_state(path, rundir.NEW_RUN)

    def _finish(self, stages, man: dict) -> dict:
        rec = self.recipe
        last = stages[-1].id
        rows = man["rows"]
        final_row = [r for r in rows if r["stage"] == last and "eval_top1" in r][-1]
        if self.d.main:
            src = rundir.verified(self.dir, man["stages"][last], last)
            atomic_write_bytes(self.dir / rundir.FINAL, src.read_bytes())
        ledger = Ledger.from_dict(man["ledger"])
        by_stage = ledger.by_stage()
        results = {
            "name": f"{rec['name']}/seed{rec['seed']}", "group": rec["name"], "protocol": rec["protocol"],
            "seed": rec["seed"], "model": rec["model"], "dataset": rec["data"]["source"],
            "img_size": rec["img_size"], "eval_top1": final_row["eval_top1"], "eval_top5": final_row["eval_top5"],
            "total_train_flops": ledger.total,
            "wall_s": sum(max(r["wall_s"] for r in rows if r["stage"] == s.id and "wall_s" in r) for s in stages),
            "peak_mem_mb": max(r["peak_mem_mb"] for r in rows if "peak_mem_mb" in r),
            "device": _env_info(self.device)["device"],
            "stages": [{"stage": s.id, "model": s.model_name, "steps": s.steps,
                        "epochs": round(s.steps / self.steps_per_epoch, 4),
                        "train_flops": by_stage[s.id]["train_flops"]} for s in stages],
            "coupled_top1_before_training": {r["stage"]: r["eval_top1"] for r in rows if r.get("epoch") == -1},
        }
        if self.d.main:
            rundir.clear_failed(self.dir)  # a run that failed before and now finished (never a diverged one)
            rundir.write_results(self.dir, results)
        self.log(f"done: {rec['name']} seed {rec['seed']}: top-1 {results['eval_top1']:.2f} at "
                 f"{ledger.total:.4e} training FLOPs -> {self.dir}")
        return results


def run_recipe(path: str | None, output: str = "runs", overrides: list[str] = (), dry_run: bool = False,
               log=print, only_stage: str | None = None, estimate: bool | str = False, wait: bool = False,
               allow_mixed: bool = False, **fields) -> dict | None:
    rec = recipes.resolve(path, overrides, **fields)
    d = Dist.init()
    if not d.main:
        log = lambda *a, **k: None  # noqa: E731
    if dry_run:
        source = rec["data"]["source"]
        try:
            train_ds, _ = _datasets(rec)
            size, ncls = len(train_ds), rec["num_classes"] or train_ds.num_classes
        except UserError as e:
            if source not in KNOWN_TRAIN_SIZES:
                raise
            size, ncls = KNOWN_TRAIN_SIZES[source], rec["num_classes"] or KNOWN_CLASSES.get(source, 10)
            log(f"(data not found: {e}; planning with the known size of {source})")
        log(f"plan for {rec['name']} (seed {rec['seed']}, protocol {rec['protocol']}):")
        stages = plan_stages(rec, size, ncls)
        log(describe_plan(rec, stages, size, ncls))
        if estimate:  # True: measure here; a string: a device of the committed benchmarks
            from .estimate import estimate_stages
            log(estimate_stages(rec, stages, ncls, gpu=estimate if isinstance(estimate, str) else None))
        return None
    run = Run(rec, output, d, log, only_stage, allow_mixed)
    run.plan()
    with _one_writer(run, d, wait, log):
        return _execute(run, d, only_stage)


@contextlib.contextmanager
def _one_writer(run: "Run", d: Dist, wait: bool, log):
    """Hold the run directory (:mod:`rbdc.runlock`) for the run's life: rank 0 takes the lock and tells the other
    ranks; a child of rbdc.jobs trains inside its parent's hold."""
    if run.only_stage:
        yield
        return
    if d.world == 1:
        with runlock.hold(run.dir, wait=wait, log=log):
            yield
        return
    stack, box = contextlib.ExitStack(), [None]
    if d.main:
        try:
            stack.enter_context(runlock.hold(run.dir, wait=wait, log=log))
        except runlock.RunHeld as e:
            box[0] = e.holder
    torch.distributed.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise runlock.RunHeld(run.dir, box[0])
    with stack:
        yield


def _execute(run: "Run", d: Dist, only_stage: str | None) -> dict:
    run.prepare()
    try:
        return run.execute()
    except Exception as e:  # not KeyboardInterrupt: an interrupted run is resumable, not failed
        if d.main:
            where = rundir.stage_dir(run.dir, only_stage) if only_stage else run.dir
            try:
                rundir.write_failed(where, stage=getattr(e, "stage", run.stage), step=getattr(e, "step", None),
                                    reason=str(e) or type(e).__name__, command=run.command,
                                    diverged=getattr(e, "diverged", False))
            except UserError:  # e.g. the disk is full: the original error says so
                pass
        raise


def cmd_train(args) -> int:
    from .cli import check_output
    t0 = time.time()
    if args.resume:
        run_dir = Path(args.resume)
        recipe = run_dir / rundir.RECIPE
        if not recipe.is_file():
            raise UserError(f"--resume {run_dir}: no {rundir.RECIPE} there; pass a run directory written by rbdc train")
        rec = recipes.resolve(recipe)
        args.recipe, args.output = str(recipe), str(run_dir.parents[len(Path(rec["name"]).parts)])
    check_output(args.output, "--output", directory=True)
    with preempt.armed() if not args.dry_run else contextlib.nullcontext():
        _train_from_args(args)
    if not args.dry_run and int(os.environ.get("RANK", 0)) == 0:
        print(f"wall time {time.time() - t0:.0f} s")
    return 0


def _train_from_args(args) -> None:
    run_recipe(args.recipe, args.output, args.set or [], dry_run=args.dry_run, only_stage=args.only_stage,
               estimate=args.gpu or args.estimate, wait=args.wait, allow_mixed=args.allow_mixed, seed=args.seed,
               model=args.model, protocol=args.protocol, name=args.name, epochs=args.epochs, budget=args.budget,
               match=args.match)


def add_cli(sub) -> None:
    p = sub.add_parser("train", help="train a recipe (scratch, rbdc, a growth baseline, diffusionblocks) into a run "
                       "directory; reruns resume", formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n"
                       "  rbdc train -c benchmarks/recipes/imagenette/vit-mini-rbdc-d1.yaml   # rerun to resume\n"
                       "  rbdc train -c benchmarks/recipes/imagenet/deit-base-rbdc-d2.yaml --dry-run --gpu H100\n"
                       "  rbdc train -c benchmarks/recipes/quickstart/rbdc.yaml --dry-run --estimate\n"
                       "  rbdc train -c RECIPE --match runs/quickstart/rbdc-d1/seed0   # the FLOPs that run spent\n"
                       "  rbdc train -c RECIPE --set rbdc.depth=2 --set data.subset=50 --seed 1\n")
    p.add_argument("--recipe", "-c", default=None, help="recipe YAML (benchmarks/recipes/...)")
    p.add_argument("--output", "-o", default=os.environ.get("RBDC_OUT", "runs"), help="root of run directories")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key (repeatable), "
                   "e.g. --set rbdc.depth=2 --set data.subset=50")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--model", default=None, help="target timm model")
    p.add_argument("--protocol", choices=protocols.names(), default=None)
    p.add_argument("--name", default=None, help="experiment name (run dir: OUTPUT/NAME/seedS)")
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--budget", type=float, default=None, help="training FLOPs budget")
    p.add_argument("--match", default=None, help="give this run the total training FLOPs of RUN_DIR")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue this run directory (reruns of the "
                   "same command resume automatically anyway)")
    p.add_argument("--only-stage", default=None, help=argparse.SUPPRESS)  # a child process of rbdc.jobs
    p.add_argument("--wait", action="store_true", help="if another process is training this run, wait for it "
                   "(default: skip it, exit status 75)")
    p.add_argument("--allow-mixed", action="store_true", help="resume under another code commit, torch version or "
                   "bf16 matmul path than the run started with (recorded in command.txt; reports mark the run)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (stages, steps, FLOPs) and exit")
    p.add_argument("--estimate", action="store_true", help="with --dry-run: the wall time, from a few steps here")
    p.add_argument("--gpu", metavar="NAME", default=None,
                   help="with --dry-run: the wall time on device NAME, from the committed reports/bench/*.json")
    p.set_defaults(func=cmd_train)
