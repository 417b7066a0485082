"""Refactors keep results bit-identical: the final weights of every CI recipe (and of resumed runs) hash as recorded
in tests/data/ci_digests.json (``python -m benchmarks.record_digests`` rewrites it, on purpose only)."""
import json

import pytest
import torch

from benchmarks.record_digests import DIGESTS, RECIPES, RESUMED, VARIANTS, compute, machine, machine_differences


@pytest.mark.slow
def test_every_ci_recipe_and_a_resumed_run_end_with_the_recorded_weights(tmp_path):
    recorded = json.loads(DIGESTS.read_text())
    assert sorted(recorded["runs"]) == sorted([*RECIPES, *VARIANTS, *(f"{n}+resumed" for n in RESUMED)]), \
        "a CI recipe was added or removed: record the digests again (python -m benchmarks.record_digests)"
    differs = machine_differences(recorded["machine"])
    if differs:
        pytest.skip(f"digests were recorded on another machine (recorded vs here: {differs}); float results differ "
                    f"across CPUs and torch builds")
    threads = torch.get_num_threads()
    try:
        runs = compute(tmp_path)
    finally:
        torch.set_num_threads(threads)
    for name in RESUMED:  # the resume guarantee, independent of the recording
        assert runs[f"{name}+resumed"] == runs[name], f"{name}: the resumed run's weights differ"
    for name, digests in recorded["runs"].items():
        changed = sorted(k for k in digests.keys() | runs[name].keys() if digests.get(k) != runs[name].get(k))
        assert not changed, f"{name}: {len(changed)} tensor(s) differ from the recording, e.g. {changed[:3]}"


def test_the_digest_check_names_what_differs_on_another_machine():
    here = machine()
    assert machine_differences(here) == {}
    assert machine_differences({**here, "torch": "0.1", "cpu": "other"}) == {"torch": ("0.1", here["torch"]),
                                                                           "cpu": ("other", here["cpu"])}
