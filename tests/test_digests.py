"""Refactors keep results: the final weights of every CI recipe (and of resumed runs) hash as recorded in
tests/data/ci_digests.json on the machines recorded there, and their float64 twins agree with
tests/data/ci_float64.json to 1e-8 on every CPU (``python -m benchmarks.record_digests`` rewrites both, on purpose
only)."""

import json
import warnings

import pytest
import torch

from benchmarks.record_digests import (
    DIGESTS,
    FLOAT64,
    FLOAT64_RTOL,
    RECIPES,
    RESUMED,
    VARIANTS,
    compute,
    compute_float64,
    fingerprint,
    float64_differences,
    float64_record,
    machine,
    machine_differences,
    read_records,
    record_for_here,
    run_weights,
    versions,
)


@pytest.mark.slow
def test_every_ci_recipe_and_a_resumed_run_end_with_the_recorded_weights(tmp_path):
    recorded, differs = record_for_here(read_records(DIGESTS))
    if recorded is None:
        pytest.skip(
            f"no digests were recorded on this machine (closest record vs here: {differs}); float results "
            f"differ across CPUs and torch builds"
        )
    expected = {*RECIPES, *VARIANTS, *(f"{n}+resumed" for n in RESUMED)}
    assert set(recorded["runs"]) <= expected, "a CI recipe was removed: record the digests again"
    unguarded = sorted(expected - set(recorded["runs"]))
    if unguarded:  # added after this machine's record: trained below, but nothing to compare with here
        warnings.warn(
            f"not guarded on this machine: {unguarded}; record them here with python -m benchmarks.record_digests",
            stacklevel=2,
        )
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
    assert machine_differences({**here, "torch": "0.1", "cpu": "other"}) == {
        "torch": ("0.1", here["torch"]),
        "cpu": ("other", here["cpu"]),
    }


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


@pytest.mark.slow
def test_every_ci_recipe_in_float64_ends_with_the_recorded_weights_on_any_cpu(tmp_path):
    recorded = json.loads(FLOAT64.read_text())
    differ = {k: (v, versions()[k]) for k, v in recorded["versions"].items() if k != "numpy" and versions()[k] != v}
    if differ:
        pytest.skip(
            f"the float64 record was made with other libraries ({differ}): their initialisation and random "
            f"streams are part of the result; record them with python -m benchmarks.record_digests"
        )
    runs = compute_float64(tmp_path)
    for name in RESUMED:  # the resume guarantee holds in float64 too, bit for bit
        assert all(torch.equal(runs[f"{name}+resumed"][k], t) for k, t in runs[name].items()), name
    here = float64_record(runs)
    assert set(here["runs"]) == set(recorded["runs"]), "a CI recipe was added or removed: record the guard again"
    changed = float64_differences(recorded["runs"], here["runs"])
    assert not changed, (
        f"{len(changed)} run(s) moved by more than {FLOAT64_RTOL:g} of a tensor's scale, e.g. "
        f"{dict(list(changed.items())[:2])} (numpy: recorded {recorded['versions']['numpy']}, here "
        f"{versions()['numpy']})"
    )


@pytest.mark.slow
def test_the_float64_guard_sees_a_one_in_a_million_change_of_the_learning_rate(tmp_path):
    recorded = json.loads(FLOAT64.read_text())["runs"]["scratch"]
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        weights = run_weights("scratch", tmp_path, overrides=["lr_base=2.000002e-3"])  # ci/base.yaml: 2e-3
    finally:
        torch.set_default_dtype(dtype)
    assert float64_differences({"scratch": recorded}, {"scratch": {k: fingerprint(t) for k, t in weights.items()}})


def test_float64_fingerprints_compare_by_the_tensor_scale():
    t = torch.linspace(-1, 1, 100, dtype=torch.float64)
    a = {"run": {"w": fingerprint(t)}}
    assert float64_differences(a, {"run": {"w": fingerprint(t * (1 + 1e-12))}}) == {}
    moved = t.clone()
    moved[37] += 1e-6  # one element: the sum and the probe's dot product move
    assert float64_differences(a, {"run": {"w": fingerprint(moved)}}) == {"run": ["w"]}
    assert float64_differences(a, {"run": {"w": fingerprint(t[:99])}}) == {"run": ["w"]}  # another size
    assert float64_differences(a, {"run": {}, "new": {}}) == {"run": ["w"]}
    assert float64_differences(a, {}) == {"run": ["w"]}
    assert fingerprint(t) == fingerprint(t.clone())  # the probe is fixed
