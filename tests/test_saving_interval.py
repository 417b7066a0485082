"""rbdc.report.saving: coverage of the test-inversion saving interval in simulated studies, and its invariants.

The simulated study looks like the real ones: scratch at 5 budgets a factor 2 apart, per-group seed stds of 0.3-1.5
top-1 points, a method point between budgets. The true scratch curve is concave and piecewise linear in log FLOPs with
kinks at the budgets, so the curve model holds and a miss is the interval's fault, not interpolation bias.
"""

import math
import statistics
from dataclasses import astuple

import numpy as np
import pytest
from scipy import stats

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


def _study(rng, n: int, s_true: float, n_method: int | None = None):
    """Scratch groups of ``n`` seeds and the method's ``n_method`` (default ``n``); the method's true mean is
    scratch's at F / (1 - s_true), i.e. saving s_true."""
    scratch = [(float(f), (t + sd * rng.standard_normal(n)).tolist()) for f, t, sd in zip(BUDGETS, TRUE, SDS)]
    return scratch, (_truth(F / (1 - s_true)) + METHOD_SD * rng.standard_normal(n_method or n)).tolist()


def _spread(values, factor):
    mean = statistics.mean(values)
    return [mean + factor * (v - mean) for v in values]


# Seed counts (scratch's, the method's) the report may meet: every study's design (3 or 5) and a point still
# running beside finished ones, from sv.MIN_SEEDS up (a 2-seed point beside 5-seed ones under-covered: 0.89-0.91).
SEED_COUNTS = [(3, 3), (5, 5), (4, 4), (5, 3), (3, 5), (5, 4)]


@pytest.mark.parametrize("n, n_method", SEED_COUNTS)
def test_coverage_of_the_test_inversion_interval(n, n_method):
    """The 95% interval holds the true saving in >= 93% of simulated studies, at every true saving.

    Measured with 2000 studies per cell: 0.957 / 0.955 / 0.960 at n=3 and 0.961 / 0.961 / 0.962 at n=5 for s_true
    0 / 0.1 / 0.3 (Welch's dof make it slightly conservative); with 1000 (seed 1): 0.942-0.959 at 5 scratch seeds
    and 3 or 4 for the method, 0.944-0.971 at 3 and 5. Open ends count as covering on their side.
    """
    rng = np.random.default_rng(20260)
    hits = {}
    for s in SAVINGS:
        ivs = [sv.saving_interval(*_study(rng, n, s, n_method), F) for _ in range(300)]
        hits[s] = np.mean([iv.contains(s) for iv in ivs])
    assert np.mean(list(hits.values())) >= 0.93, hits
    assert min(hits.values()) >= 0.91, hits  # no true saving is left behind by the pooled number


def test_a_group_under_the_tested_seed_count_gets_no_interval():
    """Below sv.MIN_SEEDS seeds the coverage is not what the report claims (2 method seeds beside 5 scratch seeds:
    about 0.90), so the library refuses by name, and the report shows the point's mean without an interval."""
    scratch, method = _study(np.random.default_rng(3), 5, 0.1, n_method=2)
    with pytest.raises(UserError, match=r"the method has 2 seed\(s\): an interval here needs 3 or more"):
        sv.saving_interval(scratch, method, F)
    assert sv.pair_over_budgets([(method, scratch[2][1]), (scratch[1][1], scratch[2][1])]) is None
    assert sv.enough_seeds(method[:2] + [0.0], scratch[0][1]) and not sv.enough_seeds(method, scratch[0][1])


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


def test_gap_at_equal_flops_is_welch_at_a_budget():
    scratch, method = _study(np.random.default_rng(6), 3, 0.0)
    g = sv.gap_at_equal_flops(scratch, method, BUDGETS[2])  # at a budget the curve is that budget's mean
    welch = stats.ttest_ind(method, scratch[2][1], equal_var=False).confidence_interval(0.95)
    assert g.gap == pytest.approx(statistics.mean(method) - statistics.mean(scratch[2][1]))
    assert (g.lo, g.hi) == pytest.approx((welch.low, welch.high))
    assert sv.gap_at_equal_flops(scratch, method, 100 * UNIT) is None


SERIES_F = np.array([6.0, 12.0, 24.0]) * UNIT  # a series' points (b8/b16/b32-like): F and F / 0.7 inside scratch


def _series(rng, n: int, s_true: float, n_method: int | None = None):
    """Scratch groups and a series of method points, each with true saving ``s_true``."""
    scratch = [(float(f), (t + sd * rng.standard_normal(n)).tolist()) for f, t, sd in zip(BUDGETS, TRUE, SDS)]
    return scratch, [
        ((_truth(f / (1 - s_true)) + METHOD_SD * rng.standard_normal(n_method or n)).tolist(), float(f))
        for f in SERIES_F
    ]


def test_over_budgets_of_one_point_is_that_points_test():
    scratch, method = _study(np.random.default_rng(7), 3, 0.1)
    one = sv.over_budgets(scratch, [(method, F)], 0.3)
    assert one.p == pytest.approx(sv.p_value_saving(scratch, method, F, 0.3)) and one.used == (0,)
    at_equal = sv.over_budgets(scratch, [(method, F)], 0.0).gap
    assert astuple(at_equal) == pytest.approx(astuple(sv.gap_at_equal_flops(scratch, method, F)))
    assert sv.over_budgets(scratch, [(method, 100 * UNIT)], 0.0) is None  # outside scratch's range: nothing tested
    assert sv.over_budgets(scratch, [(method, 100 * UNIT), (method, F)], 0.0).used == (1,)


def test_over_budgets_counts_the_shared_scratch_curve_once():
    """Two points at the same FLOPs: their mean has the method's variance halved but scratch's whole (one curve),
    where treating the two tests as independent (Fisher, inverse-variance) would halve it all."""
    scratch, method = _study(np.random.default_rng(8), 5, 0.1)
    g = sv.gap_at_equal_flops(scratch, method, BUDGETS[2])
    two = sv.over_budgets(scratch, [(method, BUDGETS[2]), (method, BUDGETS[2])], 0.0).gap
    u_method, u_scratch = np.var(method, ddof=1) / 5, np.var(scratch[2][1], ddof=1) / 5
    assert two.gap == pytest.approx(g.gap) and g.se**2 == pytest.approx(u_method + u_scratch)
    assert two.se**2 == pytest.approx(u_method / 2 + u_scratch) and two.se > g.se / math.sqrt(2)


@pytest.mark.parametrize("n, n_method", SEED_COUNTS)
def test_coverage_of_the_over_budgets_test(n, n_method):
    """With every point of a series at true saving s_true, "saving = s_true at every budget" is rejected in <= 7% of
    simulated studies, and the equal-FLOPs gap's 95% interval holds the true mean gap in >= 93%.

    Measured with 2000 studies per cell (seed 1): the test rejects 0.035 / 0.035 (n=3) and 0.044 / 0.043 (n=5) for
    s_true 0 / 0.3; the gap's interval covers 0.965 / 0.959 (n=3) and 0.957 / 0.961 (n=5)."""
    rng = np.random.default_rng(20261)
    for s in (0.0, 0.3):
        truth = statistics.mean(_truth(f / (1 - s)) - _truth(f) for f in SERIES_F)
        tests, gaps = [], []
        for _ in range(400):
            scratch, points = _series(rng, n, s, n_method)
            tests.append(sv.over_budgets(scratch, points, s).p < 0.05)
            g = sv.over_budgets(scratch, points, 0.0).gap
            gaps.append(g.lo <= truth <= g.hi)
        assert np.mean(tests) <= 0.07 and np.mean(gaps) >= 0.93, (n, n_method, s, np.mean(tests), np.mean(gaps))


def test_a_pair_over_budgets_of_one_budget_is_welchs_test():
    a, b = [60.0, 61.5, 59.0], [58.0, 58.4, 57.9, 58.8, 58.1]
    one = sv.pair_over_budgets([(a, b)])
    assert one.gap.gap == pytest.approx(statistics.mean(a) - statistics.mean(b))
    assert one.gap.se**2 == pytest.approx(statistics.variance(a) / 3 + statistics.variance(b) / 5)
    assert one.p == pytest.approx(2 * stats.t.sf(one.gap.gap / one.gap.se, one.gap.dof))
    assert sv.pair_over_budgets([(a, b), (a, [58.0])]) is None  # a group of one seed has no variance


@pytest.mark.parametrize("n, n_method", SEED_COUNTS)
def test_coverage_of_the_pair_over_budgets_interval(n, n_method):
    """Two series at three budgets, unequal seed spreads and true differences +0.5, -0.2, +1.0: the 95% interval of
    the mean difference over budgets holds the truth in >= 93% of 400 simulated studies.

    Measured with 2000 studies per cell (seed 1): 0.956 (n=3), 0.949 (n=5)."""
    rng = np.random.default_rng(20262)
    sd_a, sd_b, diff = (1.5, 0.8, 0.3), (0.5, 1.0, 0.7), (0.5, -0.2, 1.0)
    covered = []
    for _ in range(400):
        pairs = [
            ((d + a * rng.standard_normal(n_method)).tolist(), (b * rng.standard_normal(n)).tolist())
            for a, b, d in zip(sd_a, sd_b, diff)
        ]
        g = sv.pair_over_budgets(pairs).gap
        covered.append(g.lo <= statistics.mean(diff) <= g.hi)
    assert np.mean(covered) >= 0.93, (n, n_method, np.mean(covered))


def test_curve_spread_models(caplog):
    def power(f):  # a saturating power law: the power model recovers it, the others interpolate it
        return 80.0 - 40.0 * (f / BUDGETS[0]) ** -0.4

    scratch = [(float(f), [power(f) - 0.5, power(f), power(f) + 0.5]) for f in BUDGETS]
    f_match = 24 * UNIT
    method = [power(f_match) - 0.3, power(f_match), power(f_match) + 0.3]
    spread = sv.curve_spread(scratch, method, F)
    assert set(spread) == {"loglinear", "pchip", "power"}
    assert spread["power"] == pytest.approx(1 - F / f_match, abs=1e-4)
    assert spread["pchip"] == pytest.approx(1 - F / f_match, abs=0.02)
    assert spread["loglinear"] == sv.saving_interval(scratch, method, F).estimate
    two = sv.curve_spread(scratch[1:3], [power(12 * UNIT) - 0.3, power(12 * UNIT), power(12 * UNIT) + 0.3], F)
    assert two["power"] is None and "power law skipped" in caplog.text
    assert two["loglinear"] is not None and two["pchip"] is not None


@pytest.mark.parametrize(
    "scratch, method, words",
    [
        ([(4.0, [50.0, 51.0])], [50.0, 51.0], "2 or more budgets"),
        ([(8.0, [50.0, 51.0]), (4.0, [55.0, 56.0])], [50.0, 51.0], "sorted"),
        ([(4.0, [50.0]), (8.0, [55.0, 56.0])], [50.0, 51.0], "scratch budget 4 has 1 seed"),
        ([(4.0, [50.0, 51.0, 50.5]), (8.0, [55.0, 56.0, 55.2])], [52.0], "the method has 1 seed"),
        ([(4.0, [50.0, 51.0, 50.5]), (8.0, [55.0, 56.0, 55.2])], [52.0, 53.0], "the method has 2 seed.s.: an interval"),
        ([(0.0, [50.0, 51.0]), (8.0, [55.0, 56.0])], [52.0, 53.0], "positive"),
    ],
)
def test_bad_inputs_raise_user_error(scratch, method, words):
    with pytest.raises(UserError, match=words):
        sv.saving_interval(scratch, method, 6.0)
