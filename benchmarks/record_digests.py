"""The behaviour checks: refactors keep the CI recipes' final weights (and a resumed run's) as they were.

Two records in ``tests/data/``, both written by ``python -m benchmarks.record_digests`` (one thread):

* ``ci_digests.json``: the sha256 of every tensor of the final weights, per machine (:func:`machine`): exact, but
  float results depend on the CPU and the torch build, so ``tests/test_digests.py`` compares only on a machine with
  a record (replacing an earlier record of the same machine keeps the others).
* ``ci_float64.json``: the same recipes trained in float64 (``torch.set_default_dtype``), each tensor kept as three
  numbers (:func:`fingerprint`). In float64 other CPUs' kernels (summation order, vector width, thread split) move
  these runs' weights by ~1e-11 of their size, a behaviour change by far more, so this guard compares with
  :data:`FLOAT64_RTOL` on every CPU; it needs the record's torch, timm and numpy (their initialisation and random
  streams are part of the result).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import tempfile
from pathlib import Path

import numpy
import timm
import torch
from safetensors.torch import load_file

from rbdc.runs import rundir
from rbdc.files import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "configs" / "recipes" / "ci"
DIGESTS = ROOT / "tests" / "data" / "ci_digests.json"
FLOAT64 = ROOT / "tests" / "data" / "ci_float64.json"
RECIPES = sorted(p.stem for p in CI.glob("*.yaml") if p.stem != "base")
# the engine paths the CI recipes leave off (they train without mixup, smoothing or EMA): a variant of one
VARIANTS = {"scratch+mixup-smoothing-ema": ("scratch", ["mixup=0.8", "cutmix=1.0", "smoothing=0.1", "ema=true"])}
RESUMED = ("rbdc", "gradmax")  # run again, interrupted after their first epoch and resumed
INTERRUPT_AFTER = 1
# The float64 guard trains GradMax on batches of 64: at CI's 16 the last block's gradient matrices have rank 16 and
# GradMax asks for 32 directions, so 16 are an arbitrary basis of the null space, which each CPU's SVD picks apart.
FLOAT64_OVERRIDES = {"gradmax": ["batch_size=64"]}
# Measured on a Xeon (AVX-512, AMX): the float64 runs under 2 threads instead of 1, and under the AVX2 and SSE
# kernel paths (ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS, ONEDNN_MAX_CPU_ISA), moved no fingerprint by more than
# 1.9e-12 of its tensor's scale (see :func:`float64_differences`); lr_base x (1 + 1e-6) moves scratch's by 1.9e-7.
FLOAT64_RTOL = 1e-8


def _cpu() -> dict:
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "flags") and key not in info:
                info[key] = value.strip()
    except OSError:
        pass
    return {
        "cpu": info.get("model name", platform.processor()),
        "cpu_flags_sha256": hashlib.sha256(info.get("flags", "").encode()).hexdigest(),
    }


def versions() -> dict:
    """What float64 results depend on besides the code: the libraries that initialise models and draw numbers
    (torch's CUDA or CPU build does not matter on a CPU)."""
    return {"torch": torch.__version__.split("+")[0], "timm": timm.__version__, "numpy": numpy.__version__}


def machine() -> dict:
    """What the digests depend on besides the code: the float kernels (torch, its CPU dispatch) and the libraries
    that draw random numbers or build models."""
    return {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "machine": platform.machine(),
        **_cpu(),
        "threads": 1,
    }


def machine_differences(recorded: dict) -> dict:
    """What differs between the machine the digests were recorded on and this one: ``{key: (recorded, here)}``."""
    here = machine()
    return {k: (v, here.get(k)) for k, v in recorded.items() if here.get(k) != v}


def read_records(path: Path = DIGESTS) -> list[dict]:
    """The file's records ``[{"machine": ..., "runs": ...}, ...]`` (a file of one record, the older form, too)."""
    data = json.loads(path.read_text()) if path.is_file() else {"records": []}
    return data["records"] if "records" in data else [data]


def record_for_here(records: list[dict]) -> tuple[dict | None, dict]:
    """The record made on this machine, or (None, the differences of the closest record)."""
    diffs = [machine_differences(r["machine"]) for r in records]
    for r, d in zip(records, diffs):
        if not d:
            return r, {}
    return None, min(diffs, key=len) if diffs else {"record": ("none", "-")}


def tensor_digests(path: Path) -> dict[str, str]:
    return _digests(load_file(str(path)))


def _interrupted_once(n: int):
    """A preemption (KeyboardInterrupt) right after the n-th write of summary.csv: after an epoch's checkpoint."""
    from unittest import mock

    real, calls = rundir.write_summary, {"n": 0}

    def flaky(path, rows):
        real(path, rows)
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("simulated preemption")

    return mock.patch.object(rundir, "write_summary", flaky)


def run_weights(
    name: str, out: Path, interrupt_after: int | None = None, overrides: list[str] = ()
) -> dict[str, torch.Tensor]:
    """Train CI recipe ``name`` (with ``overrides``) into ``out`` (interrupted after ``interrupt_after`` epochs, then
    resumed) and return its final weights."""
    from rbdc.runs.train import run_recipe

    quiet = lambda *a, **k: None  # noqa: E731
    path = str(CI / f"{name}.yaml")
    if interrupt_after:
        with _interrupted_once(interrupt_after):
            try:
                run_recipe(path, str(out), overrides, log=quiet)
            except KeyboardInterrupt:
                pass
            else:
                raise AssertionError(f"{name}: the run finished before epoch {interrupt_after}'s interruption")
    res = run_recipe(path, str(out), overrides, log=quiet)
    return load_file(str(out / res["name"] / rundir.FINAL))


def run_digests(name: str, out: Path, interrupt_after: int | None = None, overrides: list[str] = ()) -> dict[str, str]:
    """The digests (see :func:`tensor_digests`) of :func:`run_weights`'s final weights."""
    return _digests(run_weights(name, out, interrupt_after, overrides))


def _digests(weights: dict[str, torch.Tensor]) -> dict[str, str]:
    return {
        name: hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
        for name, t in sorted(weights.items())
    }


def _all_runs(tmp: Path, train, extra: dict[str, list[str]] | None = None) -> dict:
    """``train(recipe, out, interrupt_after, overrides)`` for every CI recipe, the variants and the resumed runs."""
    extra = extra or {}
    runs = {name: train(name, tmp / name, None, extra.get(name, [])) for name in RECIPES}
    for name, (recipe, overrides) in VARIANTS.items():
        runs[name] = train(recipe, tmp / name, None, [*extra.get(recipe, []), *overrides])
    for name in RESUMED:
        runs[f"{name}+resumed"] = train(name, tmp / f"{name}+resumed", INTERRUPT_AFTER, extra.get(name, []))
    return runs


def compute(tmp: Path) -> dict:
    """The exact digests of every run of :func:`_all_runs` (one thread, float32)."""
    torch.set_num_threads(1)
    return _all_runs(tmp, run_digests)


def fingerprint(t: torch.Tensor) -> list[float]:
    """A float64 tensor as its sum, its dot product with a fixed probe (uniform in [-1, 1), the same bits on every
    machine: numpy's PCG64), its norm and its size. A change anywhere in the tensor moves the dot product."""
    w = t.detach().double().flatten().cpu()
    probe = torch.from_numpy(numpy.random.default_rng(0).uniform(-1.0, 1.0, w.numel()))
    return [w.sum().item(), (w * probe).sum().item(), w.norm().item(), float(w.numel())]


def compute_float64(tmp: Path) -> dict:
    """Every run of :func:`_all_runs` trained in float64 (one thread): ``{run: weights}``."""
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    try:
        return _all_runs(tmp, run_weights, FLOAT64_OVERRIDES)
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)


def float64_record(runs: dict) -> dict:
    return {
        "versions": versions(),
        "runs": {name: {k: fingerprint(t) for k, t in sorted(w.items())} for name, w in sorted(runs.items())},
    }


def float64_differences(recorded: dict, here: dict, rtol: float = FLOAT64_RTOL) -> dict[str, list[str]]:
    """``{run: [tensors]}`` whose :func:`fingerprint` differs by more than ``rtol`` of the tensor's scale (its norm
    times the square root of its size, which bounds its sum and dot product) or in size; a tensor or run missing on
    one side differs."""
    out = {}
    for name in sorted(recorded.keys() | here.keys()):
        rec, now = recorded.get(name, {}), here.get(name, {})
        bad = [
            key
            for key in sorted(rec.keys() | now.keys())
            if key not in rec or key not in now or _differ(rec[key], now[key], rtol)
        ]
        if bad:
            out[name] = bad
    return out


def _differ(a: list[float], b: list[float], rtol: float) -> bool:
    scale = a[2] * a[3] ** 0.5
    return a[3] != b[3] or any(abs(x - y) > rtol * scale for x, y in zip(a[:3], b[:3]))


def _write(path: Path, obj: dict) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default=str(DIGESTS), help="the exact digests' file")
    ap.add_argument("--float64-output", default=str(FLOAT64), help="the float64 guard's file")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        runs = compute(Path(tmp) / "exact")
        float64 = float64_record(compute_float64(Path(tmp) / "float64"))
    here = machine()
    records = [r for r in read_records(Path(args.output)) if machine_differences(r["machine"])]
    records.append({"machine": here, "runs": runs})
    out = _write(Path(args.output), {"records": records})
    print(f"wrote {out}: {len(runs)} runs of {here['cpu']} ({len(records)} machine record(s))")
    out = _write(Path(args.float64_output), float64)
    print(f"wrote {out}: {len(float64['runs'])} float64 runs (torch {float64['versions']['torch']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
