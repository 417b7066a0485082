"""Resume, for every protocol: a run interrupted after an epoch's checkpoint and rerun with the same command ends as
the uninterrupted run: bit-identical weights of every stage, the same ledger and results, and the same summary.csv in
every column but the timing ones (rbdc.runs.rundir.TIMING_COLUMNS)."""

import json

import pytest
import torch
from conftest import CI, QUIET, interrupt_after  # tests/conftest.py
from safetensors.torch import load_file

from rbdc.runs import rundir, train

GROWTH = ("net2net", "mixturegrowth", "gradmax")
# (protocol, interrupted after this many summary.csv writes); rbdc: inside L0.0, inside L0.1, inside L1 after its
# pre-training evaluation (after its last epoch: its checkpoint written, the stage not yet closed)
CASES = [
    ("scratch", 1),
    ("rbdc", 1),
    ("rbdc", 3),
    ("rbdc", 5),
    ("net2net", 2),
    ("mixturegrowth", 2),
    ("gradmax", 2),
    ("diffusionblocks", 1),
]


def overrides(protocol: str, ci_reference) -> list[str]:
    if protocol in GROWTH:  # the growth baselines as a study trains them: at the FLOPs of the rbdc run
        return ["rbdc.epochs=null", f"match={ci_reference('rbdc')[0]}"]
    return []


def summary(run_dir) -> list[dict]:
    """summary.csv's rows without the timing columns and without blanks (a column no row of a prefix has yet)."""
    _, rows = rundir.read_summary(run_dir / rundir.SUMMARY)
    return [{k: v for k, v in r.items() if v != "" and k not in rundir.TIMING_COLUMNS} for r in rows]


def untimed(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in rundir.TIMING_COLUMNS}


def test_the_timing_columns_are_summary_columns_and_the_rest_are_compared():
    assert set(rundir.TIMING_COLUMNS) < set(rundir.SUMMARY_COLUMNS)
    assert {"train_loss", "eval_loss", "eval_top1", "eval_top5", "lr", "cum_train_flops"}.isdisjoint(
        rundir.TIMING_COLUMNS
    )


@pytest.mark.parametrize("protocol, stop_at", CASES, ids=[f"{p}-after-{n}" for p, n in CASES])
def test_an_interrupted_run_resumes_to_the_uninterrupted_one(protocol, stop_at, ci_reference, tmp_path, monkeypatch):
    over = overrides(protocol, ci_reference)
    reference, results = ci_reference(protocol, over)
    recipe = str(CI / f"{protocol}.yaml")
    interrupt_after(monkeypatch, stop_at)
    with pytest.raises(KeyboardInterrupt):
        train.run_recipe(recipe, str(tmp_path), over, **QUIET)
    monkeypatch.undo()
    run_dir = tmp_path / results["name"]
    done = summary(run_dir)
    assert done and done == summary(reference)[: len(done)]  # the rows before the interruption, as they will be

    assert untimed(train.run_recipe(recipe, str(tmp_path), over, **QUIET)) == untimed(results)
    assert summary(run_dir) == summary(reference)
    for name in (rundir.LEDGER, rundir.RESULTS):
        a, b = (json.loads((d / name).read_text()) for d in (run_dir, reference))
        assert untimed(a) == untimed(b), name
    # every stage's weights (and carried optimizer state), by the sha256 the manifest records
    a, b = (json.loads((d / rundir.MANIFEST).read_text())["stages"] for d in (run_dir, reference))
    assert a == b
    x, y = (load_file(str(d / rundir.FINAL)) for d in (run_dir, reference))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
