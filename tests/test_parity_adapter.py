"""benchmarks/parity/diffusionblocks_official.py: a one-line refusal without the official code, and a tiny run.

The tiny run needs ``$DIFFUSIONBLOCKS_REPO`` (a checkout of the official DiffusionBlocks code) and an interpreter with
the ``parity`` extra: this one, or ``$DIFFUSIONBLOCKS_PYTHON`` (e.g. ``.tox/parity/bin/python``, see
benchmarks/parity/README.md). It trains on the synthetic source, so it needs no data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE = "benchmarks.parity.diffusionblocks_official"
ENV = "DIFFUSIONBLOCKS_REPO"


def _run(args: list[str], env: dict[str, str], python: str = sys.executable, timeout: int = 120):
    full = {k: v for k, v in os.environ.items() if k != ENV}
    full.update(env, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run(
        [python, "-m", MODULE, *args], cwd=REPO, env=full, capture_output=True, text=True, timeout=timeout
    )


def _assert_one_line_refusal(r, tmp_path: Path, *words: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert not (tmp_path / "out" / "results.json").exists()
    return lines[0]


@pytest.mark.parametrize("value", [None, "", "not-there"])
def test_without_the_official_code_it_exits_2_with_one_line(tmp_path, value):
    env = {} if value is None else {ENV: str(tmp_path / value) if value else ""}
    line = _assert_one_line_refusal(_run(["--out", str(tmp_path / "out")], env), tmp_path, ENV, f"export {ENV}=")
    assert ("is not set" in line) if not value else ("is not a DiffusionBlocks checkout" in line)


def test_a_folder_that_is_not_the_official_code_is_refused(tmp_path):
    (tmp_path / "model.py").write_text("x = 1\n")  # no vit.py, dblock_modules.py
    _assert_one_line_refusal(
        _run(["--out", str(tmp_path / "out")], {ENV: str(tmp_path)}),
        tmp_path,
        "vit.py",
        "dblock_modules.py",
        f"export {ENV}=",
    )


def test_missing_dependencies_of_the_official_code_name_the_extra(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "model.py").write_text("import a_package_that_is_not_installed_xyz  # noqa\n")
    (fake / "vit.py").write_text("")
    (fake / "dblock_modules.py").write_text("")
    _assert_one_line_refusal(
        _run(["--out", str(tmp_path / "out")], {ENV: str(fake)}),
        tmp_path,
        "a_package_that_is_not_installed_xyz",
        ".[parity]",
    )


def test_a_tiny_run_writes_results(tmp_path):
    repo = os.environ.get(ENV)
    if not repo:
        pytest.skip(
            f"{ENV} is unset: set it to a checkout of the official DiffusionBlocks code (and "
            f"DIFFUSIONBLOCKS_PYTHON to an interpreter with the parity extra) to run the parity adapter"
        )
    python = os.environ.get("DIFFUSIONBLOCKS_PYTHON", sys.executable)
    probe = subprocess.run(
        [python, "-c", "import lightning, torchmetrics, transformers"], capture_output=True, text=True
    )
    if probe.returncode:
        pytest.skip(
            f"{python} lacks the official code's dependencies (pip install -e '.[parity]', or set "
            f"DIFFUSIONBLOCKS_PYTHON): {probe.stderr.strip().splitlines()[-1]}"
        )
    out = tmp_path / "out"
    args = ["--out", str(out), "--budget-epochs", "0.5", "--seed", "3", "--set", "data.source=synthetic"]
    r = _run(args, {ENV: repo}, python, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert {"eval_top1", "total_train_flops", "img_size", "budget_epochs", "seed", "command", "official"} <= set(res)
    assert res["official"]["commit"] is None or len(res["official"]["commit"]) == 40
    assert set(res["official"]["sha256"]) == {"model.py", "vit.py", "dblock_modules.py"}
    assert (res["seed"], res["img_size"], res["budget_epochs"]) == (3, 32, 0.5)
    assert 0.0 <= res["eval_top1"] <= 100.0 and res["eval_images"] == 160  # synthetic val: 10 classes x 16
    assert "--budget-epochs 0.5" in res["command"] and MODULE in res["command"]
    # the official model mapped to our sizes costs what ours costs, so the budget buys the steps ours would take
    assert res["train_flops_per_image"] == res["ours"]["train_flops_per_image"]
    assert res["official"]["params"] == res["ours"]["params"]
    assert res["steps"] == res["ours"]["steps"] == sum(res["steps_by_block"]) >= 1
    step = res["batch_size"] * res["train_flops_per_image"]
    assert res["total_train_flops"] == res["steps"] * step
    assert abs(res["total_train_flops"] - res["budget_flops"]) <= step / 2
