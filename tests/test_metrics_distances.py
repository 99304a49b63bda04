"""SWD, MMD and energy distance against closed forms on Gaussians and against scipy."""
import math

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.special
import scipy.stats
import torch

from bench.protocols import DataInfo
from bench_metrics.digits_classifier import threads
from bench_metrics.kernels import MMD, Energy, energy_distance, median_bandwidth, mmd2_unbiased
from bench_metrics.swd import SlicedWasserstein, random_directions, sliced_wasserstein, wasserstein_1d_pp
from bench_metrics.testing import metric_context


def gauss(n, mean, std, seed):
    g = torch.Generator().manual_seed(seed)
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
    return mean + torch.as_tensor(std, dtype=torch.float64) * torch.randn(n, mean.shape[1], generator=g, dtype=torch.float64)


class PointsData:
    """N(0, I) train/test points in ``dim`` dimensions."""

    def __init__(self, dim=2, n_train=6000, n_test=3000):
        self.info = DataInfo("gauss-test", (dim,), "points")
        self._s = {"train": gauss(n_train, [0.0] * dim, 1.0, 1).float(), "test": gauss(n_test, [0.0] * dim, 1.0, 2).float()}

    def split(self, name):
        return self._s[name]


# ------------------------------------------------------------------------------------------ SWD
@pytest.mark.parametrize("n,m", [(7, 5), (100, 37), (64, 64)])
def test_1d_wasserstein_matches_scipy_for_unequal_sizes(n, m):
    g = np.random.default_rng(n * m)
    x, y = g.normal(size=n), g.exponential(size=m) + 0.3
    ours = float(wasserstein_1d_pp(torch.tensor(x)[None], torch.tensor(y)[None], p=1.0))
    assert ours == pytest.approx(scipy.stats.wasserstein_distance(x, y), rel=1e-10)


def test_1d_w2_with_unequal_sizes_matches_quantile_integral():
    # W2^2 = int_0^1 (F^-1(u) - G^-1(u))^2 du, integrated numerically on a fine grid
    g = np.random.default_rng(0)
    x, y = np.sort(g.normal(size=6)), np.sort(g.normal(size=4) + 1)
    u = (np.arange(240000) + 0.5) / 240000
    direct = np.mean((x[np.floor(u * 6).astype(int)] - y[np.floor(u * 4).astype(int)]) ** 2)
    ours = float(wasserstein_1d_pp(torch.tensor(x)[None], torch.tensor(y)[None], p=2.0))
    assert ours == pytest.approx(direct, rel=1e-9)


def test_swd_of_1d_gaussians_is_the_closed_form_w2():
    m1, s1, m2, s2 = 0.0, 1.0, 1.0, 2.0
    x, y = gauss(40000, [m1], s1, 1), gauss(30000, [m2], s2, 2)
    swd = sliced_wasserstein(x, y, random_directions(1, 8, 0))  # in 1-D every direction is +-1
    assert swd == pytest.approx(math.sqrt((m1 - m2) ** 2 + (s1 - s2) ** 2), abs=0.02)


def test_swd_of_isotropic_gaussians_matches_closed_form():
    # theta.X ~ N(theta.m, s^2) for unit theta, so SW2^2 = E(theta.dm)^2 + (s1-s2)^2 = |dm|^2/d + (s1-s2)^2
    d, dm = 5, torch.tensor([2.0, -1.0, 0.5, 0.0, 1.0], dtype=torch.float64)
    x, y = gauss(4000, [0.0] * d, 1.0, 3), gauss(4000, dm.tolist(), 1.5, 4)
    swd = sliced_wasserstein(x, y, random_directions(d, 2000, 0))
    assert swd == pytest.approx(math.sqrt(float(dm @ dm) / d + 0.25), rel=0.03)


def test_directions_are_unit_and_fixed_by_seed():
    a, b = random_directions(7, 50, 3), random_directions(7, 50, 3)
    assert torch.equal(a, b) and torch.allclose(a.norm(dim=1), torch.ones(50, dtype=torch.float64))
    assert not torch.equal(a, random_directions(7, 50, 4))


def test_swd_metric_logs_floor_and_separates_a_shifted_model():
    data = PointsData()
    good = gauss(2000, [0.0, 0.0], 1.0, 10).float()
    bad = gauss(2000, [0.5, 0.0], 1.0, 10).float()
    out_good = SlicedWasserstein().compute(metric_context(data, good))
    out_bad = SlicedWasserstein().compute(metric_context(data, bad))
    assert out_good["swd_num_samples"] == 2000 and out_good["swd_floor_num_samples"] == 2000
    assert out_good["swd_ref_num_samples"] == 3000
    assert out_good["swd_floor"] == out_bad["swd_floor"]  # same reference, floor sample and directions
    # a model from the data distribution sits at the floor; a shifted one is far above it
    assert out_good["swd"] < 2.5 * out_good["swd_floor"]
    assert out_bad["swd"] > 4 * out_bad["swd_floor"]
    # |dm|^2 / d = 0.125 -> SW2 ~ 0.354
    assert out_bad["swd"] == pytest.approx(math.sqrt(0.25 / 2), rel=0.15)


# ------------------------------------------------------------------------------------------ MMD
def rbf_expectation(m1, c1, m2, c2, h):
    """E exp(-|X-Y|^2 / (2 h^2)) for independent X ~ N(m1, c1), Y ~ N(m2, c2)."""
    d = len(m1)
    s = c1 + c2
    dm = m1 - m2
    return np.linalg.det(np.eye(d) + s / h ** 2) ** -0.5 * np.exp(-0.5 * dm @ np.linalg.solve(s + h ** 2 * np.eye(d), dm))


def test_mmd_matches_the_gaussian_closed_form():
    m1, m2 = np.zeros(2), np.array([1.0, 0.5])
    c1, c2 = np.diag([1.0, 0.5]), np.array([[1.0, 0.3], [0.3, 0.8]])
    h = 1.3
    closed = rbf_expectation(m1, c1, m1, c1, h) + rbf_expectation(m2, c2, m2, c2, h) - 2 * rbf_expectation(m1, c1, m2, c2, h)
    g = np.random.default_rng(0)
    x = torch.tensor(g.multivariate_normal(m1, c1, 3000))
    y = torch.tensor(g.multivariate_normal(m2, c2, 2500))
    assert closed > 0.1
    assert mmd2_unbiased(x, y, h) == pytest.approx(closed, abs=0.01)


def test_mmd_estimate_is_unbiased_on_equal_distributions():
    h, n, reps = 1.0, 60, 200

    def v_statistic(a, b):  # includes the k(x, x) = 1 diagonal terms
        k = lambda u, v: torch.exp(-torch.cdist(u, v).pow(2) / (2 * h * h)).mean()
        return float(k(a, a) + k(b, b) - 2 * k(a, b))

    unbiased, biased = [], []
    with threads(1):  # hundreds of tiny ops
        for r in range(reps):
            x, y = gauss(n, [0.0, 0.0], 1.0, 2 * r), gauss(n, [0.0, 0.0], 1.0, 2 * r + 1)
            unbiased.append(mmd2_unbiased(x, y, h))
            biased.append(v_statistic(x, y))
    se = np.std(unbiased) / math.sqrt(reps)
    assert abs(np.mean(unbiased)) < 3 * se
    assert np.mean(biased) > 10 * se


def test_median_heuristic_is_the_median_pairwise_distance():
    x, y = gauss(40, [0.0, 0.0, 0.0], 1.0, 0), gauss(30, [1.0, 0.0, 0.0], 2.0, 1)
    assert median_bandwidth(x, y) == pytest.approx(np.median(scipy.spatial.distance.pdist(torch.cat([x, y]).numpy())))


def test_mmd_metric_uses_one_bandwidth_for_value_and_floor():
    data = PointsData()
    out = MMD(bandwidth=1.0).compute(metric_context(data, gauss(1000, [0.7, 0.0], 1.0, 5).float()))
    closed = 2 * rbf_expectation(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), 1.0) - 2 * rbf_expectation(
        np.zeros(2), np.eye(2), np.array([0.7, 0.0]), np.eye(2), 1.0)
    assert out["mmd"] == pytest.approx(closed, abs=0.006)
    assert abs(out["mmd_floor"]) < 0.006 and out["mmd_bandwidth"] == 1.0
    auto = MMD().compute(metric_context(data, gauss(1000, [0.7, 0.0], 1.0, 5).float()))
    assert 1.0 < auto["mmd_bandwidth"] < 3.0 and auto["mmd"] > 5 * abs(auto["mmd_floor"])


# ------------------------------------------------------------------------------------------ energy
def mean_abs_normal(mu, sigma):
    """E|Z|, Z ~ N(mu, sigma^2)."""
    return sigma * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * sigma * sigma)) + mu * (1 - 2 * scipy.stats.norm.cdf(-mu / sigma))


def mean_norm_isotropic(mu_norm, sigma, d):
    """E|Z|, Z ~ N(mu, sigma^2 I_d): sigma sqrt(2) Gamma((d+1)/2)/Gamma(d/2) 1F1(-1/2; d/2; -|mu|^2/(2 sigma^2))."""
    return sigma * math.sqrt(2) * math.exp(math.lgamma((d + 1) / 2) - math.lgamma(d / 2)) * \
        scipy.special.hyp1f1(-0.5, d / 2, -mu_norm ** 2 / (2 * sigma ** 2))


def test_energy_distance_matches_1d_closed_form():
    m1, s1, m2, s2 = 0.0, 1.0, 0.8, 1.5
    closed = 2 * mean_abs_normal(m2 - m1, math.hypot(s1, s2)) - mean_abs_normal(0, s1 * math.sqrt(2)) \
        - mean_abs_normal(0, s2 * math.sqrt(2))
    est = energy_distance(gauss(3000, [m1], s1, 0), gauss(3000, [m2], s2, 1))
    assert est == pytest.approx(closed, abs=0.02) and closed > 0.2


def test_energy_distance_matches_3d_isotropic_closed_form():
    d, s1, s2, dm = 3, 1.0, 1.3, 1.0
    closed = 2 * mean_norm_isotropic(dm, math.hypot(s1, s2), d) - mean_norm_isotropic(0, s1 * math.sqrt(2), d) \
        - mean_norm_isotropic(0, s2 * math.sqrt(2), d)
    est = energy_distance(gauss(3000, [0.0] * d, s1, 2), gauss(3000, [dm, 0.0, 0.0], s2, 3))
    assert est == pytest.approx(closed, abs=0.03) and closed > 0.3


def test_energy_metric_logs_value_and_floor():
    data = PointsData()
    out = Energy().compute(metric_context(data, gauss(1500, [0.0, 0.0], 1.0, 7).float()))
    assert abs(out["energy"]) < 0.02 and abs(out["energy_floor"]) < 0.02
    assert out["energy_num_samples"] == 1500 and out["energy_floor_num_samples"] == 1500
