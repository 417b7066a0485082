"""MixtureGrowth's growth step against the reference (chaudatascience/mixturegrowth, models/layers.py).

Needs ``$MIXTUREGROWTH_REPO`` (a checkout of the reference); skipped without it. The comparison itself lives in
benchmarks/parity/mixturegrowth_reference.py (its docstring says what is built and compared); the numbers are
recorded in reports/mixturegrowth-reference.md.
"""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.parity import mixturegrowth_reference as mgr

FAMILIES = mgr.FAMILIES


@pytest.fixture(scope="module")
def ref():
    repo = mgr.reference_repo()
    if repo is None:
        pytest.skip(
            f"{mgr.ENV} is unset: set it to a checkout of chaudatascience/mixturegrowth to compare "
            f"MixtureGrowth's growth step with the reference"
        )
    return mgr.load_reference_layers(repo)


def _assert_round_off(rows, weights=True, outputs=True):
    for r in rows:
        if weights:  # fp32 round-off of a 2-term combination (the codes sum in different orders)
            assert r["max_dw"] <= 1e-6 * max(1.0, r["max_w"]), r
        if outputs:
            assert r["max_dy"] <= 1e-5 * max(1.0, r["max_y"]), r


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_off_diagonal_growth_is_the_reference(ref, family):
    rows = mgr.compare(ref, family, "zero")
    assert {r["kind"] for r in rows} == {"stem", "hidden", "classifier"}
    _assert_round_off(rows)
    assert all(r["tr"] == 0 and r["bl"] == 0 for r in rows if r["kind"] == "hidden")


@pytest.mark.parametrize("family", FAMILIES)
def test_orthogonal_growth_is_the_reference_given_the_same_c2(ref, family):
    """With the reference's coefs_member_2 set to ours, its c3 (svd of [c0; c1; c2]), layout, stem and head agree."""
    rows = mgr.compare(ref, family, "orthogonal-same-c2")
    _assert_round_off(rows)
    for r in (r for r in rows if r["kind"] == "hidden"):
        assert torch.allclose(torch.tensor(r["ref_c3"]), torch.tensor(r["ours_c3"]), atol=1e-5), r


@pytest.mark.parametrize("family", FAMILIES)
def test_orthogonal_growth_differs_only_by_the_references_untouched_c2(ref, family):
    """The one difference (mgr.REFERENCE_C2_RULE): the reference keeps coefs_member_2 at its initial value, ours
    sets it to the last right-singular vector of [c0; c1]; so the top-right block differs, and the bottom-left one
    through c3 = svd([c0; c1; c2]).Vh[-1]. Stem, head and the diagonal blocks are the same."""
    rows = mgr.compare(ref, family, "orthogonal")
    _assert_round_off([r for r in rows if r["kind"] != "hidden"])
    hidden = [r for r in rows if r["kind"] == "hidden"]
    assert hidden
    for r in hidden:
        scale = max(1.0, r["max_w"])
        assert max(r["tl"], r["br"]) <= 1e-6 * scale, r
        assert r["ref_c2"] == r["ref_c2_before"], r  # the reference's growth leaves c2 as it was initialised
        c0, c1 = (torch.tensor(c) for c in mgr.GIVEN_COEFS)
        ours_c2 = torch.linalg.svd(torch.stack([c0, c1]).double()).Vh[-1].float()
        assert torch.allclose(torch.tensor(r["ours_c2"]), ours_c2, atol=1e-6), r
        ref_c3 = torch.linalg.svd(torch.stack([c0, c1, torch.tensor(r["ref_c2"])])).Vh[-1]
        assert torch.allclose(torch.tensor(r["ref_c3"]), ref_c3, atol=1e-5), r
        assert r["tr"] > 1e-3 * r["max_w"], r  # a different c2 gives a different top-right block
        assert not math.isclose(r["ref_c2"][0], r["ours_c2"][0], abs_tol=1e-3)


def test_batchnorm_growth_is_the_reference(ref):
    assert mgr.compare_batchnorm(ref) == 0.0
