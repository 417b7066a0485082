"""The stage loop of a run: :class:`Run` plans a recipe's stages and moves its run directory (:mod:`rbdc.runs.rundir`)
forward, one :meth:`Run.run_stage` at a time: a stage done already is kept, one a parallel child trained
(:mod:`rbdc.runs.parallel`) is merged, any other is trained here (:meth:`Run.train`, the engine's
:func:`rbdc.training.engine.train_stage`) and recorded in the manifest (:mod:`rbdc.runs.manifest`)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch

from ..training import bf16
from ..cost import perf
from .. import protocols
from .. import recipe as recipes
from . import rundir
from ..nets.checkpoint import save_weights
from ..coupling import named_optimizer_state
from ..data import build_loader, recipe_datasets
from ..training.engine import evaluate, train_stage
from ..errors import UserError
from ..flops import Ledger
from .manifest import Manifest, child_done
from .parallel import train_in_parallel
from ..protocols import BuildContext, Stage, describe_plan, lr_for, plan_stages
from ..training.runtime import Dist
from .rundir import RunDir, atomic_write_bytes, code_version, load_state, save_state

__all__ = ["Run"]


def _device(recipe: dict, d: Dist) -> torch.device:
    if recipe.device != "auto":
        return torch.device(recipe.device)
    return torch.device(f"cuda:{d.local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def _env_info(device: torch.device, amp: str | None = None) -> dict:
    import timm

    cpu = {**perf.cpu_info(), **({"bf16_matmul": bf16.matmul_path()} if amp == "bf16" else {})}
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        **({} if device.type == "cuda" else {"cpu": cpu}),
        "host": platform.node(),
        "threads": torch.get_num_threads(),
        "code": code_version(),
    }


class Run:
    """One run directory: resolves where a run stands and moves it forward stage by stage."""

    def __init__(self, recipe: dict, output: str | Path, d: Dist, log=print, allow_mixed: bool = False):
        self.recipe, self.d, self.log, self.allow_mixed = recipe, d, log, allow_mixed
        self.root = Path(output)
        self.dir = RunDir.of(self.root, recipe.name, recipe.seed)
        self.device = _device(recipe, d)
        self.protocol = protocols.get(recipe.protocol)
        self.stage: str | None = None  # the stage in progress (for failed.json)
        self.command = rundir.relative_argv(["rbdc", *sys.argv[1:]], self.root)

    def prepare(self) -> None:
        """Check that the run directory holds this recipe's run (or nothing), and record this invocation."""
        text = recipes.dump(self.recipe)
        existing = self.dir / rundir.RECIPE
        if self.dir.path.exists() and not self.dir.path.is_dir():
            raise UserError(f"{self.dir} is a file, not a run directory; move it away or pick another --output")
        # resolved, so that a run written before a new recipe key existed (with its default) still resumes
        if existing.is_file() and existing.read_text() != text and recipes.resolve(existing) != self.recipe:
            raise UserError(
                f"{self.dir} holds a run of a different recipe (see its {rundir.RECIPE}); resume it with "
                f"`rbdc train --recipe {existing}`, or pick another --output or name"
            )
        self.dir.refuse_diverged()
        if not self.d.main:
            return
        with rundir.user_errors(self.dir):
            self.dir.path.mkdir(parents=True, exist_ok=True)
        env = _env_info(self.device, self.recipe.amp)
        mixed = self.dir.mixed_with(env)
        if mixed and not self.allow_mixed:
            raise UserError(
                f"{self.dir} started under {mixed[0]} and would resume under {mixed[1]}: a run "
                "mixes neither; resume it where it started, start a new run, or pass --allow-mixed"
            )
        atomic_write_bytes(existing, text.encode())
        self.dir.append_command(self.command, {**env, **({"mixed": list(mixed)} if mixed else {})})
        if self.recipe.amp == "bf16" and bf16.needed(self.device):
            self.log(
                "this CPU has no bf16 matmul kernels: bf16 autocast runs its matmuls as fp32 GEMMs of "
                "bf16-rounded operands, rounded to bf16 (oneDNN's result up to summation order; "
                "rbdc/training/bf16.py)"
            )

    def plan(self) -> None:
        """The data and the stages: an impossible plan is refused before the run directory exists."""
        rec = self.recipe
        self.train_ds, self.val_ds = recipe_datasets(rec)
        self.num_classes = rec.num_classes or self.train_ds.num_classes
        self.stages = plan_stages(rec, len(self.train_ds), self.num_classes)
        self.steps_per_epoch = len(self.train_ds) // rec.batch_size
        self.micro = rec.micro_batch or rec.batch_size // self.d.world

    def start(self) -> None:
        """Say what runs, and open the evaluation loader: before the first stage."""
        rec, train_ds, val_ds = self.recipe, self.train_ds, self.val_ds
        self.log(
            f"run {self.dir}  ({rec.protocol}, target {rec.model}, {len(train_ds):,} train / "
            f"{len(val_ds):,} {val_ds.split} images, device {self.device})"
        )
        self.log(describe_plan(rec, self.stages, len(train_ds), self.num_classes))
        self.log(
            f"effective global batch {rec.batch_size} (micro-batch {self.micro} x {self.d.world} "
            f"process(es)), lr {lr_for(rec):.3g} = {rec.lr_base:g} x {rec.batch_size}/512"
        )
        self.val_loader = build_loader(val_ds, batch_size=max(self.micro, 64), train=False, **self._loader_kw())

    def execute(self) -> dict:
        """Every stage in plan order (a level's independent stages in parallel processes with ``rbdc.jobs`` > 1);
        the run's results."""
        self.start()
        man = Manifest.load(self.dir)
        if self.d.main:
            self.dir.remove_orphans([s.id for s in self.stages], man.stages)
        parallel, started = self._parallel_jobs(), set()
        for st in self.stages:
            if parallel > 1 and st.level not in started:
                started.add(st.level)
                self._train_level_in_parallel(st.level, man, parallel)
            man = self.run_stage(st, man)
        return self._finish(man)

    def run_stage(self, st: Stage, man: Manifest) -> Manifest:
        """``man`` with stage ``st`` done: as it was when done already, merged when a parallel child trained it,
        else trained here; saved in the run directory."""
        if man.done(st.id):
            return man
        if child_done(self.dir, st.id):
            man = man.with_child_result(self.dir, st.id)
            if self.d.main:
                man.save(self.dir)
                self.dir.write_progress(man.rows, man.ledger)
            return man
        entry, rows, ledger = self.train(st, man, man.rows, man.ledger)
        man = man.with_stage(st.id, entry, rows, ledger)
        if self.d.main:
            man.save(self.dir)
            self.dir.drop_checkpoint(st.id)
        self._barrier()
        return man

    def train(
        self, st: Stage, man: Manifest, rows: list[dict], ledger: Ledger, progress: bool = True
    ) -> tuple[dict, list[dict], Ledger]:
        """Train stage ``st`` in this process (from its checkpoint when it has one) after ``rows`` and ``ledger``,
        the run's so far; its manifest entry, and the rows and ledger with it. ``progress``: write them to the run's
        summary.csv and ledger.json after every epoch (a parallel child writes its stage's folder only)."""
        rec = self.recipe
        self.stage = st.id
        self.dir.stage(st.id).mkdir(parents=True, exist_ok=True)
        train_loader = build_loader(
            self.train_ds,
            batch_size=self.micro,
            train=True,
            aug=rec.aug,
            seed=st.seed,
            repeated_aug=rec.repeated_aug,
            **self._loader_kw(),
        )
        built, parents = self._build(st, man, train_loader)
        state = self.dir.load_checkpoint(st.id)
        rows, ledger = self._start_rows(st, built, bool(parents), state, rows, ledger, progress)

        def save(ckpt: dict, epoch_end: bool) -> None:
            if self.d.main:
                self.dir.save_checkpoint(st.id, {**ckpt, "rows": rows, "ledger": ledger.to_dict()})
                if epoch_end and progress:
                    self.dir.write_progress(rows, ledger)

        model, opt = train_stage(
            built.model,
            st,
            rec,
            train_loader,
            self.val_loader,
            self.device,
            ledger,
            lambda row, ckpt: (rows.append(row), save(ckpt, True)),
            state=state,
            optimizer_state=built.optimizer_state if state is None else None,
            d=self.d,
            log=self.log,
            on_preempt=lambda ckpt: save(ckpt, False),
            protocol=self.protocol,
        )
        return self._save_stage(st, model, opt, parents), rows, ledger

    def _start_rows(
        self, st: Stage, built, grown: bool, state: dict | None, rows: list[dict], ledger: Ledger, progress: bool
    ) -> tuple[list[dict], Ledger]:
        """The rows and ledger the stage's training continues: its checkpoint's, or the run's with what building
        the stage cost and (grown models) the grown model's evaluation before training."""
        if state:
            rows, ledger = state["rows"], Ledger.from_dict(state["ledger"])
            if progress and self.d.main:  # a kill after the checkpoint's write left these behind it
                self.dir.write_progress(rows, ledger)
            return rows, ledger
        rows, ledger = list(rows), Ledger(list(ledger.entries))
        if built.cost:
            ledger.add(st.id, *built.cost)
        if grown and self.protocol.evaluates_growth:  # the coupled model before any training: how exact was it?
            ev = evaluate(built.model.to(self.device), self.val_loader, self.recipe, self.device, self.d)
            rows.append(
                {
                    "stage": st.id,
                    "model": st.model_name,
                    "epoch": -1,
                    **ev,
                    "cum_train_flops": ledger.total,
                    "images_seen": 0,
                    "train_flops": 0,
                }
            )
            self.log(f"[{st.id}] coupled model before training: top-1 {ev['eval_top1']:.2f}")
        return rows, ledger

    def _save_stage(self, st: Stage, model, opt, parents: list[dict]) -> dict:
        """Write the stage's final weights (and carried optimizer state); its manifest entry."""
        sdir = self.dir.stage(st.id)
        final, opt_path = sdir / rundir.FINAL, sdir / rundir.OPTIMIZER
        carries = self.protocol.carries_optimizer(self.recipe)
        if self.d.main:
            save_weights(model, final, stage=st.id, recipe=self.recipe.name)
            if carries:
                save_state(named_optimizer_state(model, opt), opt_path)
        self._barrier()  # every rank reads the stage's final weights from here on
        return Manifest.entry(self.dir, st.model_name, final, parents, st.steps, opt_path if carries else None)

    def _loader_kw(self) -> dict:
        rec = self.recipe
        return dict(
            img_size=rec.img_size,
            in_memory=rec.data.in_memory,
            num_workers=rec.workers,
            distributed=self.d.world > 1,
            device=self.device,
        )

    def _parallel_jobs(self) -> int:
        """Processes for a level's independent stages: ``rbdc.jobs``, in a run of one process only."""
        jobs = self.recipe.rbdc.jobs
        if jobs > 1 and self.d.world > 1:
            self.log(
                f"rbdc.jobs {jobs} ignored under {self.d.world} processes: each stage trains with all of "
                "them, one after another"
            )
            return 1
        return jobs

    def _train_level_in_parallel(self, level: int, man: Manifest, jobs: int) -> None:
        """Train the level's stages that are neither done nor trained by a child before, when there are two or more,
        in child processes (:mod:`rbdc.runs.parallel`); :meth:`run_stage` merges them."""
        pending = [s for s in self.stages if s.level == level and not man.done(s.id) and not child_done(self.dir, s.id)]
        if len(pending) >= 2:
            train_in_parallel(self.dir, pending, jobs, self.log)

    def _barrier(self) -> None:
        if self.d.world > 1:
            torch.distributed.barrier()

    def _build(self, st: Stage, man: Manifest, train_loader):
        """The stage's starting model (:class:`rbdc.protocols.Built`) and its parents' provenance."""
        paths = [man.verified(self.dir, p) for p in st.parents]
        parents = [
            {"stage": p, "path": str(path.relative_to(self.dir.path)), "sha256": man.stages[p]["sha256"]}
            for p, path in zip(st.parents, paths)
        ]
        ctx = BuildContext(
            self.recipe,
            self.num_classes,
            self.stages,
            lambda stage: self._optimizer_state(man, stage),
            train_loader,
            self.device,
            self.d.world,
            self.log,
        )
        return self.protocol.build(st, paths, ctx), parents

    def _optimizer_state(self, man: Manifest, stage: str) -> dict:
        """A finished stage's carried optimizer state (AdamW moments by parameter name)."""
        path = (
            man.verified(self.dir, stage, "optimizer")
            if "optimizer" in man.stages[stage]
            else self.dir.stage(stage) / rundir.OPTIMIZER
        )  # runs made before the manifest listed it
        return load_state(path, rundir.NEW_RUN)

    def _finish(self, man: Manifest) -> dict:
        rec, stages, rows, ledger = self.recipe, self.stages, man.rows, man.ledger
        last = stages[-1].id
        final_row = [r for r in rows if r["stage"] == last and "eval_top1" in r][-1]
        if self.d.main:
            src = man.verified(self.dir, last)
            atomic_write_bytes(self.dir / rundir.FINAL, src.read_bytes())
        by_stage = ledger.by_stage()
        results = {
            "name": f"{rec.name}/seed{rec.seed}",
            "group": rec.name,
            "protocol": rec.protocol,
            "seed": rec.seed,
            "model": rec.model,
            "dataset": rec.data.source,
            "img_size": rec.img_size,
            "eval_top1": final_row["eval_top1"],
            "eval_top5": final_row["eval_top5"],
            "total_train_flops": ledger.total,
            "wall_s": sum(max(r["wall_s"] for r in rows if r["stage"] == s.id and "wall_s" in r) for s in stages),
            "peak_mem_mb": max(r["peak_mem_mb"] for r in rows if "peak_mem_mb" in r),
            "device": _env_info(self.device)["device"],
            "stages": [
                {
                    "stage": s.id,
                    "model": s.model_name,
                    "steps": s.steps,
                    "epochs": round(s.steps / self.steps_per_epoch, 4),
                    "train_flops": by_stage[s.id]["train_flops"],
                }
                for s in stages
            ],
            "coupled_top1_before_training": {r["stage"]: r["eval_top1"] for r in rows if r.get("epoch") == -1},
        }
        if self.d.main:
            self.dir.clear_failed()  # a run that failed before and now finished (never a diverged one)
            self.dir.write_results(results)
        self.log(
            f"done: {rec.name} seed {rec.seed}: top-1 {results['eval_top1']:.2f} at "
            f"{ledger.total:.4e} training FLOPs -> {self.dir}"
        )
        return results
