"""The ``moments`` metric: its statistics have their stated null distributions under exact Gaussian
sampling (uniform p-values, Kolmogorov-Smirnov against U(0, 1)) and reject a 5% covariance error."""
import numpy as np
import pytest
import scipy.stats
import torch

from bench.context import MetricSkipped
from bench.protocols import DataInfo
from bench_metrics.moments import Moments, moments
from bench_metrics.testing import metric_context


def truth(d, seed=0):
    g = np.random.default_rng(seed)
    q, _ = np.linalg.qr(g.standard_normal((d, d)))
    cov = (q * np.logspace(0, -1, d)) @ q.T
    return 0.5 * g.standard_normal(d), cov


def draw(n, mu, cov, g):
    return mu + g.standard_normal((n, len(mu))) @ np.linalg.cholesky(cov).T


class GaussData:
    def __init__(self, mu, cov, kind="gaussian"):
        self.info = DataInfo("g", (len(mu),), "points", params={"kind": kind, "mean": mu.tolist(), "cov": cov.tolist()})

    def split(self, name):
        return torch.zeros(10, len(self.info.params["mean"]))


@pytest.mark.parametrize("d,n", [(4, 2000), (16, 300)])
def test_p_values_are_uniform_under_exact_sampling(d, n):
    """400 repetitions: both p-values pass KS against U(0, 1) at the 1% level (the Bartlett-corrected
    covariance null is accurate to O(n^-2) even at n = 300 in 16-d, f = 136 degrees of freedom)."""
    mu, cov = truth(d)
    g = np.random.default_rng(d)
    ps = np.array([[moments(draw(n, mu, cov, g), mu, cov)[k] for k in ("mean_p", "cov_p", "var_p")]
                   for _ in range(400)])
    for j in range(3):
        assert scipy.stats.kstest(ps[:, j], "uniform").pvalue > 0.01, ps[:, j].mean()


def test_the_uncorrected_covariance_statistic_would_not_be_uniform():
    """Power of the uniformity check: without the Bartlett factor rho the 16-d, n = 100 statistic is
    too large and KS rejects (so the test above can fail)."""
    d, n = 16, 100
    mu, cov = truth(d)
    g = np.random.default_rng(1)
    rho = 1 - (2 * d * d + 3 * d - 1) / (6 * (n - 1) * (d + 1))
    p_raw = [scipy.stats.chi2.sf(moments(draw(n, mu, cov, g), mu, cov)["cov_stat"] / rho, d * (d + 1) // 2)
             for _ in range(400)]
    assert scipy.stats.kstest(p_raw, "uniform").pvalue < 1e-3


def scaled(cov, factors):
    """L diag(factors) L^T (Sigma = L L^T): the variance along whitened direction i multiplied by factors[i]."""
    chol = np.linalg.cholesky(cov)
    return (chol * factors) @ chol.T


def test_a_five_percent_covariance_error_gives_tiny_p_values():
    """n = 2000 in 64-d (the gaussian_image8 oracle): a 5% variance excess and a 3% deficit (CAS's former
    default) give var_p < 1e-6 (z = 12.6 and 7.6 expected). A change of shape that keeps the trace
    (half the whitened directions up, half down) is seen by cov_p only: +-10% gives cov_p < 1e-6 in 64-d
    and +-15% in 4-d (+-5% in 64-d gave p from 1e-4 to 0.07 over five draws: low power, see docs/metrics.md)."""
    g = np.random.default_rng(5)
    mu, cov = truth(64)
    sign = np.where(np.arange(64) % 2 == 0, 1.0, -1.0)
    for f in (1.05, 0.97):
        out = moments(draw(2000, mu, f * cov, g), mu, cov)
        assert out["var_p"] < 1e-6, (f, out)
    assert moments(draw(2000, mu, scaled(cov, 1 + 0.10 * sign), g), mu, cov)["cov_p"] < 1e-6
    mu4, cov4 = truth(4)
    assert moments(draw(2000, mu4, scaled(cov4, 1 + 0.15 * sign[:4]), g), mu4, cov4)["cov_p"] < 1e-6
    shifted = moments(draw(2000, mu4 + 0.1 * np.sqrt(np.diag(cov4)), cov4, g), mu4, cov4)
    assert shifted["mean_p"] < 1e-4, shifted


def test_errors_are_the_stated_relative_norms():
    mu, cov = truth(3)
    x = draw(500, mu, cov, np.random.default_rng(2))
    out = moments(x, mu, cov)
    assert out["mean_err"] == pytest.approx(np.linalg.norm(x.mean(0) - mu) / np.sqrt(np.trace(cov)), rel=1e-12)
    assert out["cov_err"] == pytest.approx(np.linalg.norm(np.cov(x.T) - cov) / np.linalg.norm(cov), rel=1e-12)
    assert out["mean_stat"] == pytest.approx(500 * (x.mean(0) - mu) @ np.linalg.solve(cov, x.mean(0) - mu), rel=1e-9)


def test_metric_through_the_context_and_its_skips():
    mu, cov = truth(4)
    x = torch.tensor(draw(2000, mu, cov, np.random.default_rng(3)))
    out = Moments().compute(metric_context(GaussData(mu, cov), x))
    assert set(out) == {f"moments_{k}" for k in ("mean_err", "cov_err", "mean_p", "cov_p", "var_p", "mean_stat",
                                                   "cov_stat", "var_stat", "num_samples", "boot_n", "mean_err_ci_lo",
                                                   "mean_err_ci_hi", "cov_err_ci_lo", "cov_err_ci_hi")}
    assert out["moments_num_samples"] == 2000
    with pytest.raises(MetricSkipped, match="states no Gaussian"):
        Moments().compute(metric_context(GaussData(mu, cov, kind="gmm"), x))
    with pytest.raises(MetricSkipped, match="more samples than dimensions"):
        Moments().compute(metric_context(GaussData(mu, cov), x[:4]))
    with pytest.raises(MetricSkipped, match="no generated samples"):
        Moments().compute(metric_context(GaussData(mu, cov), None))


def test_registered_for_the_oracle_datasets():
    from bench.plugins import get_manager

    assert "moments" in get_manager().registries["metric"]
