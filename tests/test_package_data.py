"""The installed package is self-sufficient: what the library reads at run time ships inside it (package data, read
through importlib.resources), and no module reads the git checkout it came from (issue 32 item 6)."""

import ast
import json
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from rbdc import recipe as recipes
from rbdc.cost import costmodel, estimate
from rbdc.runs.rundir import code_version

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "rbdc"
# Modules that name their own file, each for a reason that is not a read of the checkout: the package's own source
# folder (the commit a run records, when that folder is a git work tree) and the folder that holds the imported
# package (the PYTHONPATH of the pool's children).
OWN_FILE = {"rbdc/runs/rundir.py", "rbdc/studies/pool.py"}


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_reads_the_checkout(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "CHECKOUT" not in names, f"{path.relative_to(REPO)} names the checkout: read package data instead"
    if str(path.relative_to(REPO)) not in OWN_FILE:
        assert "__file__" not in names, f"{path.relative_to(REPO)} locates files from its own path: use package_data"


def test_pyproject_ships_every_package_data_file():
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["rbdc"]
    shipped = {p for g in globs for p in PACKAGE.glob(g)}
    data = {p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix in (".json", ".yaml")}
    assert data == shipped and shipped


def test_the_cost_model_loads_from_package_resources():
    fitted = resources.files("rbdc.cost").joinpath("fitted")
    names = [f.name for f in fitted.iterdir() if f.name.startswith("costmodel-")]
    assert names and Path(str(fitted)) == costmodel.FITTED
    kind = costmodel.CostModel.from_dict(json.loads(fitted.joinpath(names[0]).read_text())).kind
    model, why = costmodel.for_this_machine(kind=kind)  # what the estimator reads, found by the machine kind
    assert model is not None and names[0] in why


def test_the_quickstart_recipes_load_from_package_resources():
    from rbdc.quickstart import RECIPES

    folder = resources.files("rbdc").joinpath("quickstart_recipes")
    assert Path(str(folder)) == RECIPES
    for name in ("rbdc", "scratch"):
        rec = recipes.resolve(RECIPES / f"{name}.yaml")  # inherits base.yaml beside it
        assert rec.name == f"quickstart/{'rbdc-d1' if name == 'rbdc' else name}" and rec.data.source == "digits"


def test_the_packaged_train_step_speeds_match_the_committed_benchmarks():
    packaged = json.loads(estimate.SPEEDS.read_text())
    assert packaged == estimate.train_step_speeds(REPO / "reports" / "bench"), (
        "rbdc/cost/fitted/train-step.json differs from reports/bench: run python -m rbdc.cost.estimate reports/bench"
    )
    assert estimate.bench_train_flops_per_s("AMD EPYC", "rbdc_vit_mini_patch8_64") == packaged[0]["flops_per_s"]


def test_code_version_outside_a_work_tree_is_the_installed_version(tmp_path):
    (tmp_path / "__init__.py").write_text("")
    assert code_version(tmp_path) == {"commit": None, "dirty": None, "version": "0.1.0"}
    here = code_version()  # this checkout: the commit, as before
    assert len(here["commit"]) == 40 and set(here) == {"commit", "dirty"}


def test_pool_children_import_the_same_rbdc():
    from rbdc.studies import pool

    env = pool.child_env(1, 0, 1)
    root = env["PYTHONPATH"].split(":")[0]
    code = "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('rbdc').origin).resolve())"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd="/", capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()) == PACKAGE / "__init__.py" and Path(root) == REPO
