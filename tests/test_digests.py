"""Refactors keep results bit-identical: the final weights of every CI recipe (and of resumed runs) hash as recorded
in tests/data/ci_digests.json (``python -m benchmarks.record_digests`` rewrites it, on purpose only)."""
import warnings

import pytest
import torch

from benchmarks.record_digests import (DIGESTS, RECIPES, RESUMED, VARIANTS, compute, machine, machine_differences,
                                       read_records, record_for_here)


@pytest.mark.slow
def test_every_ci_recipe_and_a_resumed_run_end_with_the_recorded_weights(tmp_path):
    recorded, differs = record_for_here(read_records(DIGESTS))
    if recorded is None:
        pytest.skip(f"no digests were recorded on this machine (closest record vs here: {differs}); float results "
                    f"differ across CPUs and torch builds")
    expected = {*RECIPES, *VARIANTS, *(f"{n}+resumed" for n in RESUMED)}
    assert set(recorded["runs"]) <= expected, "a CI recipe was removed: record the digests again"
    unguarded = sorted(expected - set(recorded["runs"]))
    if unguarded:  # added after this machine's record: trained below, but nothing to compare with here
        warnings.warn(f"not guarded on this machine: {unguarded}; record them here with "
                      f"python -m benchmarks.record_digests")
    threads = torch.get_num_threads()
    try:
        runs = compute(tmp_path)
    finally:
        torch.set_num_threads(threads)
    for name in RESUMED:  # the resume guarantee, independent of the recording
        assert runs[f"{name}+resumed"] == runs[name], f"{name}: the resumed run's weights differ"
    for name, digests in sorted(recorded["runs"].items()):
        changed = sorted(k for k in digests.keys() | runs[name].keys() if digests.get(k) != runs[name].get(k))
        assert not changed, f"{name}: {len(changed)} tensor(s) differ from the recording, e.g. {changed[:3]}"


def test_the_digest_check_names_what_differs_on_another_machine():
    here = machine()
    assert machine_differences(here) == {}
    assert machine_differences({**here, "torch": "0.1", "cpu": "other"}) == {"torch": ("0.1", here["torch"]),
                                                                           "cpu": ("other", here["cpu"])}


def test_each_machine_has_its_own_record_and_the_closest_one_explains_a_skip(tmp_path):
    here = machine()
    other = {**here, "cpu": "other"}
    records = [{"machine": other, "runs": {}}, {"machine": here, "runs": {"scratch": {}}}]
    assert record_for_here(records)[0] is records[1]
    assert record_for_here(records[:1]) == (None, {"cpu": ("other", here["cpu"])})
    old_form = tmp_path / "one.json"  # a file of one record, as written before machines had their own records
    old_form.write_text('{"machine": {"cpu": "x"}, "runs": {"scratch": {}}}')
    assert read_records(old_form) == [{"machine": {"cpu": "x"}, "runs": {"scratch": {}}}]
    assert all("machine" in r and "runs" in r for r in read_records(DIGESTS))
