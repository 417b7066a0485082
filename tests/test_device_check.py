"""benchmarks/device_check.sh (the GPU figures in one prepared run) and the report pieces it relies on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import perf_report

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "device_check.sh"


def _run(tmp_path, *args, **env):
    full = dict(
        os.environ,
        OUT=str(tmp_path / "out"),
        PYTHON=sys.executable,
        RBDC_WHEELS=str(tmp_path / "no-wheels"),
        RBDC_DATA=str(tmp_path / "no-data"),
        OMP_NUM_THREADS="1",
        **env,
    )
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full, cwd=tmp_path, check=False, timeout=600
    )


def test_unknown_argument_is_refused_with_the_options(tmp_path):
    r = _run(tmp_path, "--gpu")
    assert r.returncode == 2
    assert "unknown argument '--gpu'" in r.stderr and "--dry-run" in r.stderr


def test_steps_past_the_time_budget_are_skipped_and_reported(tmp_path):
    r = _run(tmp_path, "--dry-run", RBDC_DEVICE_BUDGET_S="5")
    assert r.returncode == 1
    for step in ("gpu-tests", "bench-train-step", "bench-packed", "bench-compile-deit-base"):
        assert f"== {step}: skipped" in r.stdout
    assert "not complete: gpu-tests (no time left)" in r.stdout
    assert "== bench-packed: skipped" in (tmp_path / "out" / "device_check.log").read_text()


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_the_committed_format(tmp_path):
    r = _run(tmp_path, "--dry-run")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "out"
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {f for f in files if not f.endswith(".png") and not f.startswith("bench/costmodel-")} == {
        "bench/dry-run.json",
        "bench/diffusionblocks-memory-dry-run.json",
        "perf.md",
        "env.txt",
        "gpu-tests.xml",
        "device_check.log",
    }
    assert "perf-time-dry-run.png" in files and any(f.startswith("bench/costmodel-") for f in files)
    (run,) = perf_report.load(out / "bench")
    benches = run["benchmarks"]
    cases = {(b["group"], b["extra_info"].get("case"), b["extra_info"].get("impl")) for b in benches}
    for model in ("deit_small_patch16_224", "deit_base_patch16_224", "resnet50"):
        for impl in ("bare", "harness"):
            assert ("train-step", f"cuda-{model}-224px-b256", impl) in cases
    for model in ("deit_base_patch16_224", "resnet50"):
        assert ("train-step", f"cuda-{model}-224px-b256-compile", "harness") in cases
    packed = [b for b in benches if b["group"] == "train-paths"]
    assert len(packed) == 4 and {b["extra_info"]["procs"] for b in packed} == {1, 2}  # toy: 8 runs capped at 2
    for b in packed:
        assert len(b["extra_info"]["gemm_flops_per_s"]) == b["stats"]["rounds"]
        assert 0 < perf_report.gemm_fraction(b) < 10
    assert any(b["group"] == "forward" for b in benches)
    split = [b for b in benches if b["group"] == "time-split"]  # the per-width table: DeiT-Ti/S/B, toy-sized
    assert sorted(b["extra_info"]["width"] for b in split) == ["192", "384", "768"]
    assert all(b["extra_info"]["split_s"]["forward"] and b["extra_info"]["split_s"]["backward"] for b in split)
    levers = [b for b in benches if b["group"] == "levers"]  # a level's parts batched vs separate
    assert {(b["extra_info"]["lever"], b["extra_info"]["k"]) for b in levers} == {("batched", 4), ("batched", 2)}
    report = (out / "perf.md").read_text()
    assert "reports/bench/dry-run.json" in report and "reports/bench/cpu.json" in report
    assert "reports/bench/diffusionblocks-memory-dry-run.json" in report
    assert "### Training paths" in report and "fraction of GEMM" in report
    assert "### Where the time goes" in report and "k parts as one batched model" in report
    assert "tests" in (out / "gpu-tests.xml").read_text()


def _bench(times, gemm, images=100, fpi=1e9):
    return {
        "stats": {"data": times, "median": sorted(times)[len(times) // 2]},
        "extra_info": {"images_per_round": images, "train_flops_per_image": fpi, "gemm_flops_per_s": gemm},
    }


def test_gemm_fraction_pairs_each_round_with_its_own_probe():
    # round i: 100 images x 1 GFLOP in t_i seconds against probe g_i; a slow round under a slow probe is no outlier
    times, gemm = [1.0, 2.0, 1.0, 1.0], [200e9, 100e9, 200e9, 250e9]
    assert perf_report.gemm_fraction(_bench(times, gemm)) == pytest.approx(0.5)
    # a probe before and after the rounds: the median round against the probes' mean
    assert perf_report.gemm_fraction(_bench([1.0, 1.0, 3.0], [100e9, 300e9])) == pytest.approx(0.5)
    assert perf_report.gemm_fraction(_bench([1.0], [])) is None


def test_merge_keeps_every_part_in_order_and_skips_missing_ones(tmp_path, capsys):
    parts = []
    for i in range(2):
        parts.append(tmp_path / f"{i}.json")
        parts[-1].write_text(json.dumps({"datetime": f"d{i}", "benchmarks": [{"name": f"b{i}"}]}))
    out = tmp_path / "bench" / "gpu.json"
    assert perf_report.main(["merge", str(out), str(parts[0]), str(tmp_path / "missing.json"), str(parts[1])]) == 0
    merged = json.loads(out.read_text())
    assert [b["name"] for b in merged["benchmarks"]] == ["b0", "b1"] and merged["datetime"] == "d0"
    assert perf_report.main(["merge", str(out), str(tmp_path / "missing.json")]) == 2
    assert "nothing to merge" in capsys.readouterr().err
