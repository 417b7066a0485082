"""``rbdc study``: a study file expands to named runs, runs them in a local pool or through submitit, and resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rbdc.cli import main
from rbdc.errors import UserError
from rbdc.studies.study import planned_flops
from rbdc.studies.spec import load_study
from rbdc.runs.rundir import code_version

REPO = Path(__file__).resolve().parents[1]
CI = REPO / "configs" / "recipes" / "ci"


def _study(tmp_path: Path, points: list, **extra) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(
        yaml.safe_dump({"name": "tiny", "seeds": [0, 1], "jobs": 2, "threads": 1, "points": points, **extra})
    )
    return path


TINY = [
    {"id": "scratch", "recipe": str(CI / "scratch.yaml"), "set": {"epochs": 1}},
    {"id": "rbdc", "recipe": str(CI / "rbdc.yaml"), "set": {"rbdc.epochs": [1, 1]}},
]


def test_a_study_expands_points_grids_budgets_and_seeds_in_order(tmp_path):
    path = _study(
        tmp_path,
        [
            {"id": "s", "recipe": str(CI / "scratch.yaml"), "budgets": [1, 2.5]},
            {
                "id": "r-ratio{rbdc.ratio}",
                "recipe": str(CI / "rbdc.yaml"),
                "budgets": [2],
                "grid": {"rbdc.ratio": [1.0, 3]},
                "set": {"rbdc.schedule": "continue"},
            },
        ],
    )
    study = load_study(path)
    names = [(r.name, r.seed) for r in study.runs]
    assert names == [
        ("tiny/s/b1", 0),
        ("tiny/s/b1", 1),
        ("tiny/s/b2.5", 0),
        ("tiny/s/b2.5", 1),
        ("tiny/r-ratio1/b2", 0),
        ("tiny/r-ratio1/b2", 1),
        ("tiny/r-ratio3/b2", 0),
        ("tiny/r-ratio3/b2", 1),
    ]
    assert study.runs[4].overrides == ("rbdc.schedule=continue", "rbdc.ratio=1.0", "budget_epochs=2")
    assert study.points == ["s", "r-ratio1", "r-ratio3"]
    # the planned FLOPs follow the budget: 2.5 target epochs cost 2.5x one epoch (to within a step)
    assert planned_flops(study.runs[2]) / planned_flops(study.runs[0]) == pytest.approx(2.5, rel=0.05)


@pytest.mark.parametrize(
    "points, extra, message",
    [
        ([{"id": "a", "recipe": "nope.yaml"}], {}, "not found"),
        ([{"id": "a", "recipe": str(CI / "scratch.yaml"), "budgets": [0]}], {}, "positive numbers"),
        ([{"id": "a", "recipe": str(CI / "scratch.yaml"), "budget": [1]}], {}, "unknown key"),
        ([{"id": "a{x}", "recipe": str(CI / "scratch.yaml"), "grid": {"epochs": [1, 2]}}], {}, "not a grid key"),
        (
            [{"id": "a", "recipe": str(CI / "scratch.yaml")}, {"id": "a", "recipe": str(CI / "rbdc.yaml")}],
            {},
            "used twice",
        ),
        ([{"id": "a", "recipe": str(CI / "scratch.yaml")}], {"jobs": 0}, "positive integer"),
        ([{"id": "a", "recipe": str(CI / "scratch.yaml")}], {"seed": [1]}, "unknown study key"),
    ],
)
def test_bad_study_files_are_refused_with_the_reason(tmp_path, points, extra, message):
    with pytest.raises(UserError, match=message):
        load_study(_study(tmp_path, points, **extra))


def test_every_committed_study_expands_and_plans():
    from rbdc.detection.study import load_study as load_detection_study

    for path in sorted((REPO / "configs" / "studies").glob("*.yaml")):
        if "kind: detection" in path.read_text():
            with pytest.raises(UserError, match="is a detection study: run it with rbdc det-study"):
                load_study(path)
            det = load_detection_study(path)
            assert det.runs and det.config.is_file(), path
            continue
        study = load_study(path)
        assert study.runs, path
        assert len({(r.name, r.seed) for r in study.runs}) == len(study.runs)
        assert planned_flops(study.runs[0]) > 0


def _final_digest(run_dir: Path) -> dict:
    import hashlib
    from safetensors.torch import load_file

    return {
        k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in load_file(run_dir / "final.safetensors").items()
    }


@pytest.mark.slow
def test_a_study_runs_resumes_after_a_kill_and_skips_finished_runs(tmp_path):
    """Kill the study (its whole process group) mid-way; the same command finishes it, with the weights of an
    uninterrupted run; a third call trains nothing."""
    path = _study(tmp_path, TINY)
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "rbdc.cli", "study", str(path), "-o", str(out), "--jobs", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    # wait until the second run (scratch seed 1) has written a checkpoint, then kill everything
    deadline = time.time() + 300
    second = out / "tiny" / "scratch" / "seed1"
    while time.time() < deadline and not (second / "stages").is_dir() and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "tiny" / "scratch" / "seed0" / "results.json").read_text())["seed"] == 0  # finished
    assert not (out / "tiny" / "rbdc" / "seed1" / "results.json").is_file()

    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 runs, 1 done, 3 to run" in done.stdout
    for name in ("scratch", "rbdc"):
        for seed in (0, 1):
            res = json.loads((out / "tiny" / name / f"seed{seed}" / "results.json").read_text())
            assert res["group"] == f"tiny/{name}" and res["seed"] == seed
    # the killed run resumed to the weights of the same run trained without interruption
    ref = tmp_path / "ref"
    subprocess.run(
        cmd[:-4] + ["-o", str(ref), "--only", "scratch"],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert _final_digest(ref / "tiny" / "scratch" / "seed1") == _final_digest(second)

    again = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "4 runs, 4 done, 0 to run" in again.stdout
    # every run records the commit of the code that produced it
    info = (second / "command.txt").read_text()
    assert json.dumps(code_version()["commit"]) in info


def test_a_failing_run_is_reported_and_the_others_go_on(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("IMAGENET_ROOT", raising=False)  # planned from ImageNet's known size, fails to load it
    path = _study(
        tmp_path,
        [
            {"id": "bad", "recipe": str(CI / "scratch.yaml"), "set": {"data.source": "imagenet"}},
            {"id": "ok", "recipe": str(CI / "scratch.yaml"), "set": {"epochs": 1}},
        ],
        seeds=[0],
    )
    assert main(["study", str(path), "-o", str(tmp_path / "runs")]) == 1
    out = capsys.readouterr()
    assert "tiny/bad seed 0: FAILED (exit 2)" in out.out and "1 run(s) failed: tiny/bad seed 0" in out.err
    assert json.loads((tmp_path / "runs" / "tiny" / "ok" / "seed0" / "results.json").read_text())["group"] == "tiny/ok"


def test_a_point_that_cannot_be_planned_stops_the_study_before_any_run(tmp_path, capsys):
    path = _study(
        tmp_path,
        [
            {"id": "ok", "recipe": str(CI / "scratch.yaml"), "set": {"epochs": 1}},
            {"id": "bad", "recipe": str(CI / "scratch.yaml"), "set": {"batch_size": 100000}},
        ],
    )
    assert main(["study", str(path), "-o", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "tiny/bad seed 0" in err and "lower batch_size" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("executor", ["debug", pytest.param("local", marks=pytest.mark.slow)])
def test_the_cluster_path_submits_one_job_per_run_through_submitit(tmp_path, executor, capsys, monkeypatch):
    pytest.importorskip("submitit")
    for key, value in dict(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500"
    ).items():
        monkeypatch.setenv(key, value)  # the job sets the distributed environment (in-process for `debug`)
    path = _study(tmp_path, TINY[:1], seeds=[0, 1])
    out = tmp_path / "runs"
    assert main(["study", str(path), "-o", str(out), "--executor", executor, "--wait"]) == 0
    assert "submitted 2 runs of tiny" in capsys.readouterr().out
    for seed in (0, 1):
        assert json.loads((out / "tiny" / "scratch" / f"seed{seed}" / "results.json").read_text())["seed"] == seed
    # resubmitting submits nothing that is done
    assert main(["study", str(path), "-o", str(out), "--executor", executor]) == 0
    assert "submitted 0 runs" in capsys.readouterr().out


def test_a_run_marked_failed_is_skipped_until_retried(tmp_path, capsys):
    path = _study(tmp_path, TINY[:1], seeds=[0])
    out = tmp_path / "runs"
    run_dir = out / "tiny" / "scratch" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "failed.json").write_text(json.dumps({"stage": "scratch", "step": 3, "reason": "loss is nan"}))
    assert main(["study", str(path), "-o", str(out)]) == 0
    assert "skipping tiny/scratch seed 0: failed earlier (loss is nan)" in capsys.readouterr().out
    assert not (run_dir / "results.json").exists()
    assert main(["study", str(path), "-o", str(out), "--retry-failed"]) == 0
    assert (run_dir / "results.json").is_file() and not (run_dir / "failed.json").exists()


def test_study_wide_overrides_and_processes_per_run(tmp_path):
    path = _study(tmp_path, TINY[:1], seeds=[0], nproc=2, set={"amp": "fp32", "model_kwargs": {"num_heads": 2}})
    study = load_study(path)
    assert study.nproc == 2
    assert study.runs[0].overrides == ("amp=fp32", 'model_kwargs={"num_heads": 2}', "epochs=1")


def test_a_run_records_its_cpu_and_how_bf16_matmuls_ran_there(tmp_path, capsys, monkeypatch):
    """On a CPU without bf16 kernels a bf16 run emulates them (rbdc.training.bf16), says so, and records it in
    command.txt."""
    import torch

    from rbdc.training import bf16
    from rbdc.cost import perf

    monkeypatch.setattr(perf, "cpu_bf16_fast", lambda: False)
    assert (
        main(["train", "-c", str(CI / "scratch.yaml"), "-o", str(tmp_path), "--set", "epochs=1", "--set", "amp=bf16"])
        == 0
    )
    assert bf16.installed()
    out = capsys.readouterr().out
    assert "this CPU has no bf16 matmul kernels: bf16 autocast runs its matmuls as fp32 GEMMs" in out
    command = (tmp_path / "ci" / "scratch" / "seed0" / "command.txt").read_text()
    assert '"capability": ' in command and '"bf16_fast": false' in command
    assert '"bf16_matmul": "fp32-rounded"' in command
    from rbdc.runs.run import _env_info

    assert "bf16_matmul" not in _env_info(torch.device("cpu"), "fp32")["cpu"]  # only bf16 runs have a bf16 path
    from rbdc.cost import machine

    kind = machine.cpu_kind()  # the model, not only the capability: AVX512 spans machines 3x apart in speed
    assert _env_info(torch.device("cpu"), "fp32")["cpu"]["model"] == f"{kind['name']} ({kind['family_model']})"
