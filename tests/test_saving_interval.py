"""rbdc.report.saving: coverage of the test-inversion saving interval in simulated studies, and its invariants.

The simulated study looks like the real ones: scratch at 5 budgets a factor 2 apart, per-group seed stds of 0.3-1.5
top-1 points, a method point between budgets. The true scratch curve is concave and piecewise linear in log FLOPs with
kinks at the budgets, so the curve model holds and a miss is the interval's fault, not interpolation bias.
"""

import math
import statistics

import numpy as np
import pytest

from rbdc.errors import UserError
from rbdc.report import saving as sv
from rbdc.report.stats import matched_flops

UNIT = 1e15
BUDGETS = np.array([4.0, 8.0, 16.0, 32.0, 64.0]) * UNIT
TRUE = np.array([55.0, 60.0, 64.0, 67.0, 69.0])
SDS = (1.5, 1.0, 0.7, 0.5, 0.3)  # seed std per budget: the small budgets are the noisy ones
METHOD_SD = 0.8
F = 20 * UNIT
SAVINGS = (0.0, 0.1, 0.3)  # F_match = F / (1 - s) = 20, 22.2, 28.6 units: inside scratch's range


def _truth(f: float) -> float:
    return float(np.interp(math.log(f), np.log(BUDGETS), TRUE))


def _study(rng, n: int, s_true: float):
    """Scratch groups and method seeds; the method's true mean is scratch's at F / (1 - s_true), i.e. saving s_true."""
    scratch = [(float(f), (t + sd * rng.standard_normal(n)).tolist()) for f, t, sd in zip(BUDGETS, TRUE, SDS)]
    return scratch, (_truth(F / (1 - s_true)) + METHOD_SD * rng.standard_normal(n)).tolist()


def _spread(values, factor):
    mean = statistics.mean(values)
    return [mean + factor * (v - mean) for v in values]


@pytest.mark.parametrize("n", [3, 5])
def test_coverage_of_the_test_inversion_interval(n):
    """The 95% interval holds the true saving in >= 93% of simulated studies, at every true saving.

    Measured with 2000 studies per cell: 0.957 / 0.955 / 0.960 at n=3 and 0.961 / 0.961 / 0.962 at n=5 for s_true
    0 / 0.1 / 0.3 (Welch's dof make it slightly conservative); here 0.961 (n=3) and 0.951 (n=5) pooled. Open ends
    count as covering on their side.
    """
    rng = np.random.default_rng(20260)
    hits = {}
    for s in SAVINGS:
        ivs = [sv.saving_interval(*_study(rng, n, s), F) for _ in range(300)]
        hits[s] = np.mean([iv.contains(s) for iv in ivs])
    assert np.mean(list(hits.values())) >= 0.93, hits
    assert min(hits.values()) >= 0.91, hits  # no true saving is left behind by the pooled number


def _bootstrap(scratch, method, flops, rng, n=200):
    """The percentile bootstrap the report used before (each resample redraws every group's seeds): its 95% ends."""
    samples = []
    for _ in range(n):
        curve = [(f, float(np.mean(rng.choice(v, len(v))))) for f, v in scratch]
        m = matched_flops(curve, float(np.mean(rng.choice(method, len(method)))))
        samples.append(1 - flops / m.flops)
    return np.percentile(samples, [2.5, 97.5])


def test_percentile_bootstrap_undercovers_with_three_seeds():
    """Why the bootstrap was replaced: with 3 seeds its 95% interval covers ~78% (0.76-0.78 measured with 200 studies
    per s_true and 500 resamples, 0.79 with the report's former 4000 at s_true = 0). Here, 200 resamples keep the
    test fast: 0.82 against 0.97 for the test inversion on the same 60 studies."""
    rng, boot_rng = np.random.default_rng(7), np.random.default_rng(0)
    boot, inversion = [], []
    for s in SAVINGS:
        for _ in range(20):
            scratch, method = _study(rng, 3, s)
            lo, hi = _bootstrap(scratch, method, F, boot_rng)
            boot.append(lo <= s <= hi)
            inversion.append(sv.saving_interval(scratch, method, F).contains(s))
    assert np.mean(boot) < 0.93, np.mean(boot)
    assert np.mean(inversion) > np.mean(boot)


def test_estimate_is_the_reports_saving_and_lies_inside_the_interval():
    rng = np.random.default_rng(1)
    for _ in range(40):
        scratch, method = _study(rng, 3, 0.1)
        iv = sv.saving_interval(scratch, method, F)
        m = matched_flops([(f, statistics.mean(v)) for f, v in scratch], statistics.mean(method))
        if m.status != "matched":
            continue
        assert iv.estimate == 1 - F / m.flops  # bit for bit the report's _saving
        assert iv.lo <= iv.estimate <= iv.hi and iv.contains(iv.estimate)


def test_deterministic():
    scratch, method = _study(np.random.default_rng(2), 3, 0.3)
    for fn in (sv.saving_interval, sv.gap_at_equal_flops, sv.curve_spread):
        assert fn(scratch, method, F) == fn(scratch, method, F)
    assert sv.p_value_saving(scratch, method, F, 0.3) == sv.p_value_saving(scratch, method, F, 0.3)


def test_method_beyond_scratchs_range_gives_open_bounds():
    scratch, _ = _study(np.random.default_rng(3), 3, 0.0)
    above = sv.saving_interval(scratch, [80.0, 81.0, 82.0], F)
    assert (above.status, above.estimate, above.hi_open, above.lo_open) == ("above_range", None, True, False)
    assert above.lo == pytest.approx(1 - F / BUDGETS[-1]) and above.contains(0.99) and above.text().startswith("≥")
    below = sv.saving_interval(scratch, [40.0, 41.0, 42.0], F)
    assert (below.status, below.estimate, below.lo_open, below.hi_open) == ("below_range", None, True, False)
    assert below.hi == pytest.approx(1 - F / BUDGETS[0]) and below.text().startswith("≤")
    # at the edge but not significantly beyond it: still open above, with a measured lower bound
    near = sv.saving_interval(scratch, _spread([69.2, 70.2, 71.2], 2.0), F)
    assert near.status == "above_range" and near.hi_open and not near.lo_open and near.lo < 1 - F / BUDGETS[-1]


def test_larger_seed_spread_widens_the_interval():
    scratch, method = _study(np.random.default_rng(4), 5, 0.0)
    narrow = sv.saving_interval(scratch, method, F)
    wide = sv.saving_interval([(f, _spread(v, 1.5)) for f, v in scratch], _spread(method, 1.5), F)
    assert not (narrow.lo_open or narrow.hi_open)
    assert wide.estimate == pytest.approx(narrow.estimate)  # same means: same estimate
    assert wide.lo < narrow.lo and wide.hi > narrow.hi


def test_p_value_of_a_saving():
    scratch, method = _study(np.random.default_rng(5), 3, 0.1)
    iv = sv.saving_interval(scratch, method, F)
    assert sv.p_value_saving(scratch, method, F, iv.estimate) > 0.999
    assert sv.p_value_saving(scratch, method, F, iv.lo) == pytest.approx(0.05, abs=1e-3)  # the bounds are where
    assert sv.p_value_saving(scratch, method, F, iv.hi) == pytest.approx(0.05, abs=1e-3)  # the test turns
    assert sv.p_value_saving(scratch, method, F, iv.hi + 0.2) < 0.01
    assert sv.p_value_saving(scratch, method, F, -3.0) < 0.01
    assert sv.p_value_saving(scratch, method, F, 0.9) is None  # F / 0.1 is beyond scratch's largest budget
    assert sv.combined_p([1.0, 1.0]) == pytest.approx(1.0)
    assert sv.combined_p([0.01, 0.02]) < 0.01 < sv.combined_p([0.01, 0.9])


def test_gap_at_equal_flops_is_welch_at_a_budget_and_combines():
    from scipy import stats

    scratch, method = _study(np.random.default_rng(6), 3, 0.0)
    g = sv.gap_at_equal_flops(scratch, method, BUDGETS[2])  # at a budget the curve is that budget's mean
    welch = stats.ttest_ind(method, scratch[2][1], equal_var=False).confidence_interval(0.95)
    assert g.gap == pytest.approx(statistics.mean(method) - statistics.mean(scratch[2][1]))
    assert (g.lo, g.hi) == pytest.approx((welch.low, welch.high))
    assert sv.gap_at_equal_flops(scratch, method, 100 * UNIT) is None
    both = sv.combined_gap([(g.gap, g.se, g.dof), (g.gap, g.se, g.dof)])
    assert both.gap == pytest.approx(g.gap) and both.se == pytest.approx(g.se / math.sqrt(2))
    assert both.dof == pytest.approx(2 * g.dof) and both.hi - both.lo < g.hi - g.lo
    assert sv.combined_gap([(1.0, 1.0, 5), (3.0, 0.5, 5)]).gap == pytest.approx((1 + 4 * 3) / 5)


def test_curve_spread_models(caplog):
    def power(f):  # a saturating power law: the power model recovers it, the others interpolate it
        return 80.0 - 40.0 * (f / BUDGETS[0]) ** -0.4

    scratch = [(float(f), [power(f) - 0.5, power(f) + 0.5]) for f in BUDGETS]
    f_match = 24 * UNIT
    method = [power(f_match) - 0.3, power(f_match) + 0.3]
    spread = sv.curve_spread(scratch, method, F)
    assert set(spread) == {"loglinear", "pchip", "power"}
    assert spread["power"] == pytest.approx(1 - F / f_match, abs=1e-4)
    assert spread["pchip"] == pytest.approx(1 - F / f_match, abs=0.02)
    assert spread["loglinear"] == sv.saving_interval(scratch, method, F).estimate
    two = sv.curve_spread(scratch[1:3], [power(12 * UNIT) - 0.3, power(12 * UNIT) + 0.3], F)
    assert two["power"] is None and "power law skipped" in caplog.text
    assert two["loglinear"] is not None and two["pchip"] is not None


@pytest.mark.parametrize(
    "scratch, method, words",
    [
        ([(4.0, [50.0, 51.0])], [50.0, 51.0], "2 or more budgets"),
        ([(8.0, [50.0, 51.0]), (4.0, [55.0, 56.0])], [50.0, 51.0], "sorted"),
        ([(4.0, [50.0]), (8.0, [55.0, 56.0])], [50.0, 51.0], "scratch budget 4 has 1 seed"),
        ([(4.0, [50.0, 51.0]), (8.0, [55.0, 56.0])], [52.0], "the method has 1 seed"),
        ([(0.0, [50.0, 51.0]), (8.0, [55.0, 56.0])], [52.0, 53.0], "positive"),
    ],
)
def test_bad_inputs_raise_user_error(scratch, method, words):
    with pytest.raises(UserError, match=words):
        sv.saving_interval(scratch, method, 6.0)
