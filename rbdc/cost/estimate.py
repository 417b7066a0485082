"""Wall-time estimates of a plan: training FLOP/s measured on this device with a few steps (``--estimate``), or
read from the benchmarked speeds of a named device (``--gpu``): the train-step rows of the committed benchmark results
(``reports/bench/*.json``, written by ``tox -e bench``), kept in the package as :data:`SPEEDS` by
``python -m rbdc.cost.estimate reports/bench`` (which ``tox -e bench`` runs; a test checks it matches)."""

from __future__ import annotations

import json
import time
from fractions import Fraction
from pathlib import Path

import torch

from ..errors import UserError
from ..files import atomic_write_bytes
from ..flops import _meta_twin, train_flops_per_image
from ..nets.models import scaled
from ..training.engine import autocast, set_fused_attn
from ..units import human_time, human_flops
from .costmodel import FITTED, family, features, for_this_machine
from .work import predict_stage, recipe_work

SPEEDS = FITTED / "train-step.json"  # the benchmarked train-step speeds of every device (package data)


STEP_FLOPS = 2e10  # default batch: about this many training FLOPs per step (tiny models are slow at tiny batches)


def measure_train_flops_per_s(
    name: str,
    factor: Fraction | int = 1,
    img_size: int | None = None,
    *,
    batch: int | None = None,
    steps: int = 2,
    device: str | torch.device = "cpu",
    amp: str = "fp32",
    fused_attn: bool | None = None,
    **kwargs,
) -> float:
    """Training FLOP/s (3 x forward, the ledger's rule) of ``steps`` AdamW steps on random data, after one warm-up,
    in the recipe's precision (``amp``: fp32, bf16 or auto) and attention kernel (``fused_attn``; None keeps timm's),
    as training runs them. ``batch`` defaults to about :data:`STEP_FLOPS` per step, between 8 and 256 images."""

    twin, size = _meta_twin(name, img_size, **kwargs)
    if hasattr(twin, "patch_embed"):  # the position embedding follows the input size
        kwargs = {**kwargs, "img_size": size}
    if batch is None:
        batch = int(min(256, max(8, STEP_FLOPS // train_flops_per_image(twin, size) // factor)))
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = set_fused_attn(scaled(name, factor, **kwargs).to(device).train(), fused_attn)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(batch, 3, size, size, device=device)
        y = torch.randint(0, model.num_classes, (batch,), device=device)

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast(amp, device):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        step()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        seconds = time.perf_counter() - t0
    return steps * batch * train_flops_per_image(model, size) / seconds


def train_step_speeds(bench_dir: Path) -> list[dict]:
    """The harness train-step rows of the pytest-benchmark JSONs in ``bench_dir``: file, device, model and training
    FLOP/s (the median round), in file order: what :func:`bench_train_flops_per_s` reads."""
    rows = []
    for path in sorted(Path(bench_dir).glob("*.json")):
        for b in json.loads(path.read_text()).get("benchmarks", []):
            e = b.get("extra_info", {})
            if b.get("group") != "train-step" or e.get("impl") != "harness":
                continue
            flops_per_s = e["images_per_round"] * e["train_flops_per_image"] / b["stats"]["median"]
            rows.append(
                {
                    "file": path.stem,
                    "device": e.get("device", path.stem),
                    "model": e["model"],
                    "flops_per_s": flops_per_s,
                }
            )
    return rows


def bench_train_flops_per_s(device_name: str, model: str | None = None, speeds: Path | None = None) -> float:
    """Training FLOP/s that the committed train-step benchmarks measured on the device called ``device_name``
    (a substring of its name or of its results file): the model's own figure where measured, else the fastest."""
    speeds = Path(speeds or SPEEDS)
    rows = json.loads(speeds.read_text()) if speeds.is_file() else []
    found = [
        (r["model"], r["flops_per_s"]) for r in rows if device_name.lower() in f"{r['device']} {r['file']}".lower()
    ]
    if not found:
        have = ", ".join(sorted({r["device"] for r in rows})) or "none"
        raise UserError(
            f"no committed benchmark results for {device_name!r} (devices: {have}); run `tox -e bench` on that "
            f"device, or pass --estimate to measure here"
        )
    same = [f for m, f in found if m == model]
    return max(same or [f for _, f in found])


def write_speeds(bench_dir: Path, out: Path | None = None) -> Path:
    """Write :func:`train_step_speeds` of ``bench_dir`` to ``out`` (default :data:`SPEEDS`)."""
    out = Path(out or SPEEDS)
    atomic_write_bytes(out, (json.dumps(train_step_speeds(bench_dir), indent=1) + "\n").encode())
    return out


def estimate_stages(recipe: dict, stages: list, num_classes: int, gpu: str | None = None, train_size: int = 0) -> str:
    """The plan's estimated wall time on one device, beside scratch's (the recipe's model at full width) at the same
    training FLOPs: from this CPU kind's cost model where one is fitted (every stage's wall, with the in-memory
    loader's measured cost, and the run's evaluations: :func:`rbdc.cost.work.recipe_work`, on ``train_size``
    images per epoch), else from the speed of each stage's model measured here (the recipe's batch, at most 64
    images) or from the committed benchmarks of ``gpu`` (training steps only)."""
    lines: list[str] = []
    batch, amp = recipe.batch_size, recipe.amp if recipe.amp != "auto" else "fp32"
    kwargs = {"num_classes": num_classes, **recipe.model_kwargs}
    model = None if gpu else usable_costmodel(recipe.model, amp, recipe.img_size, log=lines.append)
    data = model.data_s_per_image.get(str(recipe.img_size), 0.0) if model and recipe.data.in_memory else 0.0
    speed = {f: _stage_speed(model, gpu, recipe, f, amp, **kwargs) for f in {s.factor for s in stages} | {Fraction(1)}}

    def wall(s) -> float:
        return (s.steps * batch * s.flops_per_image + s.extra_flops) / speed[s.factor] + s.steps * batch * data

    where = (
        f"by this CPU kind's cost model ({amp}" + (" + the in-memory loader)" if data else ")")
        if model
        else f"at the benchmarked speed of {gpu}"
        if gpu
        else "at the speed of a few steps measured here"
    )
    evals = _evaluation_seconds(model, recipe, stages, train_size, **kwargs) if model and train_size else None
    if model is not None:
        for s, ev in zip(stages, evals or [None] * len(stages)):
            lines.append(f"  stage {s.id} ({s.model_name}, {s.steps} steps): {human_time(wall(s))}" + _evals(ev))
    seconds = sum(wall(s) for s in stages)
    flops = sum(s.steps * batch * s.flops_per_image + s.extra_flops for s in stages)
    full_fpi = train_flops_per_image(recipe.model, recipe.img_size, **kwargs)
    scratch = flops / speed[Fraction(1)] + flops / full_fpi * data
    lines.append(
        f"estimated wall time: {human_time(seconds)} {where}; scratch at the same training FLOPs: "
        f"{human_time(scratch)} (this plan takes {seconds / scratch:.2f}x) (1 device; training steps only"
        + (")" if evals else ", no evaluation)")
    )
    if evals:
        total = seconds + sum(e for _, e in evals)
        total = slow_range(total, model.slow_state_factor)
        lines.append(f"with the run's evaluations (forwards by the cost model): {total}")
    return "\n".join(lines)


def _stage_speed(model, gpu: str | None, recipe, factor, amp: str, **kwargs) -> float:
    """Training FLOP/s of the recipe's model at ``factor``: the cost model's, a GPU's benchmarked, or measured."""
    if model:
        return _costmodel_speed(model, recipe.model, factor, recipe.img_size, recipe.batch_size, amp, **kwargs)
    if gpu:
        return bench_train_flops_per_s(gpu, recipe.model)
    return measure_train_flops_per_s(
        recipe.model,
        factor,
        recipe.img_size,
        batch=min(recipe.batch_size, 64),
        amp=amp,
        fused_attn=recipe.fused_attn,
        **kwargs,
    )


def _evaluation_seconds(model, recipe, stages: list, train_size: int, **kwargs) -> list | None:
    """``(work, seconds of its evaluations)`` per stage by the cost model, or None where it has no forward fit."""
    out = []
    for w in recipe_work(recipe, stages, train_size):
        pred = predict_stage(model, w, recipe.model, recipe, **kwargs)
        if pred is None or pred["eval_s"] is None:
            return None
        out.append((w, pred["eval_s"]))
    return out


def _evals(ev) -> str:
    """`` + N evaluation(s) of M images T`` for a stage's ``(work, seconds)``, or nothing."""
    if ev is None or not ev[0].evaluations:
        return ""
    w, seconds = ev
    return f" + {w.evaluations} evaluation(s) of {w.eval_images // w.evaluations:,} images {human_time(seconds)}"


def slow_range(seconds: float, factor: float | None) -> str:
    """``seconds`` as a time, and as a range up to the machine's slow state where the cost model holds its
    ``factor`` (the runs' slow-state over fast-state epoch walls, ``benchmarks/costmodel_check.py``)."""
    if not factor or factor <= 1:
        return human_time(seconds)
    return f"{human_time(seconds)}, up to {human_time(seconds * factor)} if the machine is in its slow state"


# ----------------------------------------------------------------------------------------------------------------
# The cost model of this CPU kind (rbdc.cost.costmodel), where one is fitted; else the measured few steps


def _costmodel_speed(model, name: str, factor, img_size: int, batch: int, amp: str, **kwargs) -> float:
    """Training FLOP/s of ``name`` at ``factor`` from a fitted cost model (steps only, no data loading)."""
    terms = features(name, img_size, batch, factor, **kwargs)
    return terms["train_flops"] / model.seconds_per_image(terms, amp, family(name, factor, **kwargs))


def usable_costmodel(name: str, amp: str, img_size: int, bench_dir: Path | None = None, log=print):
    """This CPU kind's cost model if it has a fit for ``amp`` and the model's family, else None; either way one
    line says which (and when ``img_size`` is not the size it was fitted at)."""
    model, why = for_this_machine(bench_dir or FITTED)
    if model is None:
        log(why)
        return None
    fam = family(name)
    if not model.has(amp, fam):
        log(
            f"cost model: this CPU kind's has no {amp} {fam} fit ({', '.join(model.coefs)}); using a few steps "
            f"measured here"
        )
        return None
    sizes = sorted({r["img_size"] for r in model.fitted_on})
    log(
        f"{why}; {amp}, fitted at {'/'.join(map(str, sizes))} px"
        + ("" if img_size in sizes else f": at {img_size} px it extrapolates")
    )
    return model


def level_speeds(
    target: str,
    rows: list[dict],
    img_size: int | None,
    *,
    amp: str = "fp32",
    batch: int = 128,
    bench_dir: Path | None = None,
    log=print,
) -> tuple[dict[int, float], str, float | None]:
    """Training FLOP/s of each level of :func:`rbdc.coupling.plan` on this machine, where they come from, and the
    cost model's slow-state factor (None: not known, or measured here)."""
    size = _meta_twin(target, img_size)[1]
    model = usable_costmodel(target, amp, size, bench_dir, log)
    if model is not None:
        return (
            {r["level"]: _costmodel_speed(model, target, Fraction(r["width"]), size, batch, amp) for r in rows},
            f"by this CPU kind's cost model ({amp}, batch {batch})",
            model.slow_state_factor,
        )
    log(f"measuring {len(rows)} model(s): 1 + 2 {amp} training steps each on this device ...")
    return (
        {r["level"]: measure_train_flops_per_s(target, Fraction(r["width"]), img_size, amp=amp) for r in rows},
        "at the speed measured here",
        None,
    )


def rbdc_vs_scratch(rows: list[dict], speed: dict[int, float], where: str, slow: float | None = None) -> str:
    """One line: one epoch of every level against scratch (the full-width level) at the same training FLOPs; with
    ``slow`` (the cost model's slow-state factor), RBDC's as a range up to the machine's slow state."""
    flops = sum(r["level_train_pflops_per_epoch"] * 1e15 for r in rows)
    mine = sum(r["level_train_pflops_per_epoch"] * 1e15 / speed[r["level"]] for r in rows)
    full = max(rows, key=lambda r: Fraction(r["width"]))
    scratch = flops / speed[full["level"]]
    return (
        f"one epoch of every level: {slow_range(mine, slow)}; scratch ({full['model']}) at equal FLOPs "
        f"({human_flops(flops)}): {human_time(scratch)}; RBDC takes {mine / scratch:.2f}x scratch's wall {where} "
        f"(1 device; training steps only)"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m rbdc.cost.estimate BENCH_DIR``: keep the package's train-step speeds (what ``--gpu`` reads) in
    step with the benchmark JSONs in BENCH_DIR (``reports/bench``)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m rbdc.cost.estimate", description=main.__doc__.split("\n")[0])
    p.add_argument("bench_dir", type=Path, help="folder of pytest-benchmark JSONs (reports/bench)")
    p.add_argument("--out", type=Path, default=SPEEDS, help="the speeds file to write (default: %(default)s)")
    args = p.parse_args(argv)
    print(f"wrote {write_speeds(args.bench_dir, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
