"""The engine's training step against the ``time-split`` benchmark's step: ``python -m benchmarks.engine_gap``.

The cost model (:mod:`rbdc.cost.costmodel`) is fitted on the ``time-split`` rows, whose step is
:class:`benchmarks.train_paths.Trainer`'s: the engine's ``train_step`` on one fixed random batch. A run's ``wall_s``
times :class:`rbdc.training.engine._StageLoop`'s epoch loop instead: the loader's fresh batches, the learning rate set
before every step, the finiteness check (one host sync) after it. This measurement times both, in one process on one
thread, for the study recipes' models (the ViT-nano at widths 64 / 32 / 16, ResNet-18 at full and half width), and
walks from the one to the other one change at a time, so the ratio engine / benchmark is attributed to the changes:

* ``bench``: the time-split case's own :class:`Trainer` (its model, its random batch);
* ``engine-model``: the model, optimizer, loss, schedule and step as a run builds them (``scaled`` of the recipe's
  model at the stage's factor, :func:`rbdc.training.engine.build_training`), stepped through ``_StageLoop``'s own
  ``_train_step`` (the learning rate set every step) on the benchmark's random batch;
* ``real-batch``: one real training batch of the in-memory loader (crop + flip of Imagenette images), repeated;
* ``loader``: the loader's fresh batches, a new epoch's iterator when one ends (what ``wall_s`` contains);
* ``engine``: + the finiteness check and the preemption poll of every step: ``_StageLoop.train_epoch``'s body.

Every round times each variant once (same number of steps), in a rotating order; a variant's factor is the median
over rounds of its time over the previous variant's in the same round, so slow changes of the machine's load cancel.
The factors multiply to the whole chain's ratio up to the medians' rounding (``residual``). Each round is timed on
the process's CPU time (the cost model's busy clock) and on the wall; the wall over the CPU time is the share of the
core the process did not get (other jobs). Absolute seconds are noisy where other jobs share the cores (say so with
them); the ratios are what this measures. Also timed: the cold start of a stage (its first steps in a fresh process
against the same steps once warm), which no steady-state benchmark round contains.

Writes ``reports/bench/engine-gap-<cpu kind>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from benchmarks.time_split import gemm_busy_rate
from rbdc.cost import costmodel

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configs" / "recipes" / "imagenette32"
# label: (recipe, the stage's width factor, the time-split case's width label)
CASES = {
    "vit w64": ("vit-nano-scratch.yaml", Fraction(1), "64"),
    "vit w32": ("vit-nano-scratch.yaml", Fraction(1, 2), "32"),
    "vit w16": ("vit-nano-scratch.yaml", Fraction(1, 4), "16"),
    "resnet18 /1": ("resnet18-scratch.yaml", Fraction(1), "resnet18 /1"),
    "resnet18 /2": ("resnet18-scratch.yaml", Fraction(1, 2), "resnet18 /2"),
}
VARIANTS = ("bench", "engine-model", "real-batch", "loader", "engine")
STEPS = {"vit w64": 3, "vit w32": 5, "vit w16": 8, "resnet18 /1": 1, "resnet18 /2": 3}


def chain_factors(times: dict[str, list[float]], order=VARIANTS) -> dict:
    """Per variant after the first: the median over rounds of its time over the previous variant's in the same round
    (``factors``); the median over rounds of the last over the first (``total``); and ``residual`` = total / the
    factors' product (1 when the per-round ratios multiply exactly; the medians' rounding otherwise)."""
    rounds = {len(v) for v in times.values()}
    if len(rounds) != 1 or not rounds.pop():
        raise ValueError(f"every variant needs the same number (> 0) of timed rounds, got {sorted(rounds)}")
    arr = {k: np.asarray(times[k], dtype=float) for k in order}
    factors = {b: float(np.median(arr[b] / arr[a])) for a, b in zip(order, order[1:])}
    total = float(np.median(arr[order[-1]] / arr[order[0]]))
    return {"factors": factors, "total": total, "residual": total / float(np.prod(list(factors.values())))}


def _split_case(width: str):
    from benchmarks.test_bench_time_split import CASES as SPLIT

    return next(c for c in SPLIT if c.device == "cpu" and c.width == width and c.study and c.batch == 128)


class _Variants:
    """The five steps of one case, each its own model (same seed) and what feeds it."""

    def __init__(self, label: str, train_ds, cold_steps: int):
        from benchmarks.train_paths import Trainer
        from rbdc import recipe as recipes
        from rbdc.data import build_loader
        from rbdc.flops import Ledger
        from rbdc.nets.models import scaled
        from rbdc.protocols import get
        from rbdc.training.engine import _StageLoop

        rec_file, factor, width = CASES[label]
        rec = recipes.resolve(RECIPES / rec_file, ["data.holdout=0.1", "data.holdout_seed=0"])
        self.recipe, self.label = rec, label
        stage = replace(
            _scratch_stage(rec, len(train_ds)), factor=factor, model_name=f"{rec.model} x{factor}", steps=10**9
        )

        def loader():
            kw = dict(img_size=rec.img_size, in_memory=True, num_workers=rec.workers, device=torch.device("cpu"))
            return build_loader(train_ds, batch_size=rec.batch_size, train=True, aug=rec.aug, seed=0, **kw)

        def loop():
            torch.manual_seed(0)
            model = scaled(rec.model, factor, num_classes=10, drop_path_rate=rec.drop_path, **rec.model_kwargs)
            lp = _StageLoop(model, stage, rec, torch.device("cpu"), _dist(), get(rec.protocol), Ledger(), _quiet)
            lp.start(loader(), None, None)
            lp.net.train()
            return lp

        self.loss = {v: torch.zeros(()) for v in VARIANTS}
        # the engine first: its first steps are a fresh process's (kernels not yet built for these shapes)
        self.loops = {"engine": loop()}
        self.loaders = {"engine": loader()}
        self.iters = {"engine": _epochs(self.loaders["engine"])}
        self.cold = self._cold(cold_steps)
        self.bench = Trainer(_split_case(width).for_run())
        x, y = self.bench.batch
        real = next(iter(loader()))
        if self.loops["engine"].channels_last != self.bench.case.channels_last:
            raise RuntimeError(f"{label}: the run's channels_last differs from the benchmark case's")
        for v in ("engine-model", "real-batch", "loader"):
            self.loops[v] = loop()
        self.iters["engine-model"] = itertools.repeat((x, y))
        self.iters["real-batch"] = itertools.repeat(real)
        self.loaders["loader"] = loader()
        self.iters["loader"] = _epochs(self.loaders["loader"])
        for v in VARIANTS:  # warm: the bench's Trainer warmed itself; two steps each for the others
            if v != "bench":
                self.run(v, 2)

    def _cold(self, steps: int) -> dict:
        """Seconds of the engine's first ``steps`` steps in this process, then of the same number once warm."""
        out = {}
        for key in ("first_s", "warm_s"):
            t0 = time.perf_counter()
            self.run("engine", steps)
            out[key] = time.perf_counter() - t0
        return {**out, "steps": steps, "extra_s": out["first_s"] - out["warm_s"]}

    def run(self, variant: str, steps: int) -> None:
        """``steps`` steps of ``variant`` (the engine's: ``_StageLoop.train_epoch``'s loop body)."""
        from rbdc.training import preempt

        if variant == "bench":
            for _ in range(steps):
                self.bench.step()
            return
        lp, it, loss = self.loops[variant], self.iters[variant], self.loss[variant]
        for _ in range(steps):
            if variant == "engine" and preempt.requested(lp.d, lp.device):
                raise RuntimeError("preempted")
            lp._train_step(it, loss)
            if variant == "engine" and not torch.isfinite(loss):
                raise RuntimeError(f"{self.label}: non-finite loss")


def _scratch_stage(rec, train_size: int):
    from rbdc.protocols import plan_stages

    return plan_stages(rec, train_size, 10)[0]


def _dist():
    from rbdc.training.engine import Dist

    return Dist()


def _quiet(*_args, **_kw) -> None:
    pass


def _epochs(loader):
    """The loader's batches epoch after epoch (``set_epoch`` and a new iterator at each epoch's start, as in the
    engine)."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from iter(loader)


def measure(label: str, train_ds, rounds: int, cold_steps: int = 3) -> dict:
    """One case: the cold start, then ``rounds`` rounds of every variant (rotating order), on both clocks."""
    v = _Variants(label, train_ds, cold_steps)
    steps = STEPS[label]
    busy = {k: [] for k in VARIANTS}
    wall = {k: [] for k in VARIANTS}
    gemm = []
    for r in range(rounds):
        gemm.append(gemm_busy_rate(v.bench.gemm_dtype, v.bench.device))  # the machine's speed state this round
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        for k in order:
            t0, c0 = time.perf_counter(), time.process_time()
            v.run(k, steps)
            busy[k].append(time.process_time() - c0)
            wall[k].append(time.perf_counter() - t0)
    batch = v.recipe.batch_size
    return {
        "case": label,
        "model": v.recipe.model,
        "family": costmodel.family(v.recipe.model),
        "factor": str(CASES[label][1]),
        "time_split_case": str(v.bench.case),
        "amp": v.recipe.amp,
        "batch": batch,
        "steps_per_round": steps,
        "rounds": rounds,
        "round_busy_s": busy,
        "round_wall_s": wall,
        "us_per_image_busy": {k: 1e6 * float(np.median(t)) / (steps * batch) for k, t in busy.items()},
        "busy": chain_factors(busy),
        "wall": chain_factors(wall),
        "core_share": float(np.median([b / w for k in VARIANTS for b, w in zip(busy[k], wall[k])])),
        "cold_start": v.cold,
        "gemm_busy_flops_per_s": gemm,
        "fit": fitted_row(v.bench.case),
    }


def fitted_row(case, model: dict | None = None) -> dict | None:
    """The cost model's row for the time-split ``case`` (this kind's fitted JSON): the benchmark's measured
    seconds per image (fast-state rounds, busy clock, one process per core) and the fit's; None where absent."""
    from rbdc.cost.machine import cpu_kind

    if model is None:
        path = costmodel.costmodel_path(cpu_kind())
        if not path.is_file():
            return None
        model = json.loads(path.read_text())
    for r in model.get("fitted_on", []):
        if (r["model"], r["batch"], r["amp"]) == (case.model, case.batch, case.amp):
            return {"s_per_image": r["s_per_image"], "fit_s_per_image": r["fit_s_per_image"]}
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.engine_gap", description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from benchmarks.time_split import beside
    from rbdc import recipe as recipes
    from rbdc.cost.machine import cpu_kind
    from rbdc.data import recipe_datasets

    rec = recipes.resolve(RECIPES / "vit-nano-scratch.yaml", ["data.holdout=0.1", "data.holdout_seed=0"])
    train_ds, _ = recipe_datasets(rec)
    out = args.out or REPO / "reports" / "bench" / f"engine-gap-{cpu_kind()['slug']}.json"
    result = {
        "command": "python -m benchmarks.engine_gap " + " ".join(argv if argv is not None else sys.argv[1:]),
        "kind": cpu_kind(),
        "threads": torch.get_num_threads(),
        "variants": list(VARIANTS),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "beside": beside(),
        "cases": [],
    }
    for label in args.cases:
        row = measure(label, train_ds, args.rounds)
        result["cases"].append(row)
        f = row["busy"]["factors"]
        print(
            f"{label}: engine / bench {row['busy']['total']:.3f} (busy), {row['wall']['total']:.3f} (wall); "
            + ", ".join(f"{k} x{x:.3f}" for k, x in f.items())
            + f"; residual {row['busy']['residual']:.3f}; core share {row['core_share']:.2f}; cold start +"
            f"{row['cold_start']['extra_s']:.2f} s over {row['cold_start']['steps']} steps",
            flush=True,
        )
        out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
