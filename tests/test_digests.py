"""Refactors keep results bit-identical: the final weights of every CI recipe (and of resumed runs) hash as recorded
in tests/data/ci_digests.json (``python -m benchmarks.record_digests`` rewrites it, on purpose only)."""
import json

import pytest
import torch

from benchmarks.record_digests import DIGESTS, RECIPES, RESUMED, compute, machine


@pytest.mark.slow
def test_every_ci_recipe_and_a_resumed_run_end_with_the_recorded_weights(tmp_path):
    recorded = json.loads(DIGESTS.read_text())
    assert sorted(recorded["runs"]) == sorted([*RECIPES, *(f"{n}+resumed" for n in RESUMED)]), \
        "a CI recipe was added or removed: record the digests again (python -m benchmarks.record_digests)"
    here = machine()
    differs = {k: (v, here.get(k)) for k, v in recorded["machine"].items() if here.get(k) != v}
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
