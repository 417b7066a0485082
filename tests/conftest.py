import os
from pathlib import Path

import pytest
import torch

import rbdc  # noqa: F401  (registers the test_rbdc_* variants)

REPO = Path(__file__).resolve().parents[1]
CI = REPO / "configs" / "recipes" / "ci"
QUIET = {"log": lambda *a, **k: None}
# The project's datasets lie in ../shared/data beside the checkout (tox.ini and .ci/run say so too); the library reads
# only RBDC_DATA, so a bare `pytest` sets it here unless it names another folder.
os.environ.setdefault("RBDC_DATA", str(REPO.parent / "shared" / "data"))


def data_root() -> Path | None:
    """Real datasets: $RBDC_DATA (default ../shared/data beside the checkout), if it is a folder."""
    root = Path(os.environ["RBDC_DATA"])
    return root if root.is_dir() else None


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _torch_autocast_kernels():
    """A bf16 run on a CPU without bf16 kernels installs rbdc.training.bf16 for the process: no test inherits it."""
    yield
    from rbdc.training import bf16

    bf16.uninstall()


@pytest.fixture(scope="session")
def ci_reference(tmp_path_factory):
    """``ci_reference(name, overrides=())``: the run directory and results of CI recipe ``name`` trained without
    interruption, once per session for every module that needs it. Tests copy it before changing anything in it."""
    import rbdc.runs.train as train

    cache = {}

    def get(name: str, overrides=()) -> tuple[Path, dict]:
        key = (name, tuple(overrides))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"ref-{name}")
            results = train.run_recipe(str(CI / f"{name}.yaml"), str(out), list(overrides), **QUIET)
            cache[key] = out / results["name"], results
        return cache[key]

    return get


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def preempt_after(monkeypatch, n: int) -> None:
    """Ask for a stop (as a signal's handler does) right after the n-th optimizer step of the process; the request is
    cleared when the test ends."""
    from rbdc.training import engine, preempt

    real, calls = engine.train_step, {"n": 0}

    def counting(*a, **k):
        out = real(*a, **k)
        calls["n"] += 1
        if calls["n"] == n:
            preempt.request("SIGUSR1")
        return out

    monkeypatch.setattr(engine, "train_step", counting)
    monkeypatch.setitem(preempt._state, "requested", None)


def interrupt_after(monkeypatch, n: int) -> None:
    """Simulate a preemption: raise KeyboardInterrupt right after the n-th epoch's checkpoint and summary write."""
    from rbdc.runs import rundir

    calls = {"n": 0}
    real = rundir.write_summary

    def flaky(path, rows):
        real(path, rows)
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("simulated preemption")

    monkeypatch.setattr(rundir, "write_summary", flaky)
