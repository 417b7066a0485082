"""The behaviour check: sha256 of every tensor of the final weights of each CI recipe, and of a resumed run.

``python -m benchmarks.record_digests`` (one thread) records this machine's digests in ``tests/data/ci_digests.json``
(replacing an earlier record of the same machine, keeping the others); ``tests/test_digests.py`` reruns the recipes and
compares with the record of the machine it runs on. Float results depend on the CPU and the torch build, so each
record names its machine (:func:`machine`) and the test skips on a machine with no record, naming the closest one's
differences.
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

from rbdc import rundir
from rbdc.rundir import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "benchmarks" / "recipes" / "ci"
DIGESTS = ROOT / "tests" / "data" / "ci_digests.json"
RECIPES = sorted(p.stem for p in CI.glob("*.yaml") if p.stem != "base")
# the engine paths the CI recipes leave off (they train without mixup, smoothing or EMA): a variant of one
VARIANTS = {"scratch+mixup-smoothing-ema": ("scratch", ["mixup=0.8", "cutmix=1.0", "smoothing=0.1", "ema=true"])}
RESUMED = ("rbdc", "gradmax")  # run again, interrupted after their first epoch and resumed
INTERRUPT_AFTER = 1


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
    return {"cpu": info.get("model name", platform.processor()),
            "cpu_flags_sha256": hashlib.sha256(info.get("flags", "").encode()).hexdigest()}


def machine() -> dict:
    """What the digests depend on besides the code: the float kernels (torch, its CPU dispatch) and the libraries
    that draw random numbers or build models."""
    return {"torch": torch.__version__, "timm": timm.__version__, "numpy": numpy.__version__,
            "machine": platform.machine(), **_cpu(), "threads": 1}


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
    return {name: hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
            for name, t in sorted(load_file(str(path)).items())}


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


def run_digests(name: str, out: Path, interrupt_after: int | None = None, overrides: list[str] = ()) -> dict[str, str]:
    """Train CI recipe ``name`` (with ``overrides``) into ``out`` (interrupted after ``interrupt_after`` epochs, then
    resumed) and return the digests of its final weights."""
    from rbdc.train import run_recipe
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
    return tensor_digests(out / res["name"] / rundir.FINAL)


def compute(tmp: Path) -> dict:
    torch.set_num_threads(1)
    runs = {name: run_digests(name, tmp / name) for name in RECIPES}
    for name, (recipe, overrides) in VARIANTS.items():
        runs[name] = run_digests(recipe, tmp / name, overrides=overrides)
    for name in RESUMED:
        runs[f"{name}+resumed"] = run_digests(name, tmp / f"{name}+resumed", INTERRUPT_AFTER)
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default=str(DIGESTS))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        runs = compute(Path(tmp))
    here = machine()
    records = [r for r in read_records(Path(args.output)) if machine_differences(r["machine"])]
    records.append({"machine": here, "runs": runs})
    out = atomic_write_bytes(args.output, (json.dumps({"records": records}, indent=1, sort_keys=True) + "\n").encode())
    print(f"wrote {out}: {len(runs)} runs of {here['cpu']} ({len(records)} machine record(s))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
