"""bench.stats against scipy (t tests), a hand-computed Benjamini-Hochberg example, the exact
noncentral-t power, and coverage by simulation."""
import math

import numpy as np
import pytest
from scipy import stats as st

from bench.stats import (Z95, benjamini_hochberg, normal_seeds, paired_difference, paired_power,
                         sd_at_samples, seeds_for_power, t_interval, welch_difference)

X = [3.1, 2.7, 3.6, 3.3, 2.9]
Y = [2.8, 2.9, 3.0, 2.7, 2.6]


def test_t_interval_matches_scipy_and_single_value():
    iv = t_interval(X)
    lo, hi = st.t.interval(0.95, len(X) - 1, loc=np.mean(X), scale=st.sem(X))
    assert (iv.n, iv.kind) == (5, "t")
    assert iv.mean == pytest.approx(np.mean(X)) and iv.lo == pytest.approx(lo) and iv.hi == pytest.approx(hi)
    one = t_interval([2.0])
    assert one.kind == "single" and one.n == 1 and math.isnan(one.lo)


def test_paired_difference_matches_ttest_rel():
    d = paired_difference(X, Y)
    ref = st.ttest_rel(X, Y)
    ci = ref.confidence_interval(0.95)
    assert d.kind == "paired" and d.n == 5
    assert d.mean == pytest.approx(np.mean(np.subtract(X, Y)))
    assert d.p == pytest.approx(ref.pvalue) and d.lo == pytest.approx(ci.low) and d.hi == pytest.approx(ci.high)


def test_welch_difference_matches_ttest_ind():
    b = Y + [3.4, 2.2]
    d = welch_difference(X, b)
    ref = st.ttest_ind(X, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert d.kind == "welch" and d.n == 12
    assert d.p == pytest.approx(ref.pvalue) and d.lo == pytest.approx(ci.low) and d.hi == pytest.approx(ci.high)


def test_constant_differences_give_a_point_interval():
    d = paired_difference([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert (d.mean, d.lo, d.hi, d.p) == (1.0, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError):
        paired_difference([1.0], [2.0])


def test_benjamini_hochberg_hand_example_and_scipy():
    p = [0.01, 0.04, 0.03, 0.005, 0.20]
    # sorted: 0.005 0.01 0.03 0.04 0.20 -> m p/j: 0.025 0.025 0.05 0.05 0.20 (already monotone)
    q = benjamini_hochberg(p)
    assert q == pytest.approx([0.025, 0.05, 0.05, 0.025, 0.20])
    # a step-up case: 0.04 at rank 4 of 4 pulls rank 3 (0.039 * 4/3 = 0.052) down to 0.04
    assert benjamini_hochberg([0.039, 0.04, 0.001, 0.002]) == pytest.approx([0.04, 0.04, 0.004, 0.004])
    rng = np.random.default_rng(0)
    many = rng.uniform(0, 0.2, size=37)
    if hasattr(st, "false_discovery_control"):
        assert benjamini_hochberg(many) == pytest.approx(st.false_discovery_control(many))
    assert benjamini_hochberg([]).size == 0


def test_seeds_for_power_against_normal_approximation_and_exact_power():
    for sd, delta in [(1.0, 1.0), (0.3, 0.2), (2.0, 0.5), (1.0, 3.0)]:
        n = seeds_for_power(sd, delta)
        assert n >= normal_seeds(sd, delta)
        assert n <= math.ceil(normal_seeds(sd, delta)) + 3  # the t correction adds a few seeds
        # the t approximation lands on the exact (noncentral t) 80% boundary, within a seed
        assert paired_power(n, sd, delta) >= 0.78
        assert paired_power(max(n - 2, 2), sd, delta) < 0.8
    assert seeds_for_power(1.0, 1.0) == 10  # (1.96 + 0.84)^2 = 7.85 -> t correction -> 10
    assert seeds_for_power(1.0, -1.0) == 10
    with pytest.raises(ValueError):
        seeds_for_power(1.0, 0.0)


def test_seeds_for_power_by_simulation():
    sd, delta = 1.0, 0.8
    n = seeds_for_power(sd, delta)
    rng = np.random.default_rng(1)
    d = rng.normal(delta, sd, size=(4000, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    power = np.mean(np.abs(t) > st.t.ppf(0.975, n - 1))
    assert 0.77 < power < 0.86


def test_t_interval_coverage_by_simulation():
    """95% t intervals of a known-distribution metric (normal, mean 2.5, 5 seeds) cover the truth
    in 93-97% of 400 repetitions."""
    rng = np.random.default_rng(17)
    draws = rng.normal(2.5, 0.4, size=(400, 5))
    covered = 0
    for row in draws:
        iv = t_interval(row)
        covered += iv.lo <= 2.5 <= iv.hi
    assert 0.93 <= covered / 400 <= 0.97


def test_paired_interval_coverage_by_simulation():
    """The paired difference's 95% interval covers the true difference in 93-97% of 400 repetitions,
    with a seed effect shared by both conditions (which the pairing removes)."""
    rng = np.random.default_rng(4)  # 20000 repetitions of this design cover 94.9%
    covered = 0
    for _ in range(400):
        seed_effect = rng.normal(0, 1.0, size=4)
        a = 1.0 + seed_effect + rng.normal(0, 0.1, size=4)
        b = 0.7 + seed_effect + rng.normal(0, 0.1, size=4)
        d = paired_difference(a, b)
        covered += d.lo <= 0.3 <= d.hi
    assert 0.93 <= covered / 400 <= 0.97


def test_sd_at_samples_splits_training_and_sampling_noise():
    assert sd_at_samples(0.5, 0.3, 1000, 1000) == pytest.approx(0.5)
    assert sd_at_samples(0.5, 0.3, 1000, 4000) == pytest.approx(math.sqrt(0.16 + 0.09 / 4))
    assert sd_at_samples(0.2, 0.3, 1000, 1000) == pytest.approx(0.3)  # sampling noise larger than total
    assert Z95 == pytest.approx(1.959964, abs=1e-6)
