"""First and second moments of the generated samples against a Gaussian's known mean and covariance.

For data N(mu, Sigma) whose parameters the dataset states (``DataInfo.params`` = ``{"kind": "gaussian",
"mean": [...], "cov": [[...]]}``: the datasets ``gaussian`` and ``gaussian_image``), with n generated
samples in D dimensions, sample mean m and sample covariance S = A / (n - 1), A = sum_i (x_i - m)(x_i - m)^T:

- ``moments_mean_err`` = |m - mu|_2 / sqrt(tr Sigma): the mean error in units of the data's RMS spread;
- ``moments_cov_err`` = |S - Sigma|_F / |Sigma|_F: the relative Frobenius covariance error;
- ``moments_mean_p``: the p-value of the Mahalanobis statistic T_mean = n (m - mu)^T Sigma^-1 (m - mu),
  exactly chi-square with D degrees of freedom when the samples are exact (m ~ N(mu, Sigma / n));
- ``moments_cov_p``: the p-value of the modified likelihood-ratio test of Sigma_true = Sigma (mean
  unknown). With nu = n - 1 and the whitened covariance S_w = L^-1 S L^-T (Sigma = L L^T),

      T_cov = rho nu (tr S_w - log det S_w - D),   rho = 1 - (2 D^2 + 3 D - 1) / (6 nu (D + 1)),

  is chi-square with f = D (D + 1) / 2 degrees of freedom up to O(nu^-2) under exact sampling
  (nu S_w ~ Wishart_D(I, nu); Bartlett-corrected null: Anderson, An Introduction to Multivariate
  Statistical Analysis, 3rd ed., section 10.8, and Muirhead, Aspects of Multivariate Statistical Theory,
  Theorem 8.4.7). It sees any departure of the covariance, in scale or in shape, but spreads its power
  over f directions;
- ``moments_var_p``: the two-sided p-value of the overall variance scale, T_var = nu tr S_w = tr(nu S_w),
  exactly chi-square with nu D degrees of freedom under exact sampling (the trace of a Wishart_D(I, nu)
  matrix is a sum of nu D squared standard normals). It sees a common variance excess or deficit (the
  bias of a Langevin sampler's step) with far more power than T_cov: a 3% deficit at n = 2000 in 64-d
  is z = 0.03 sqrt(nu D / 2) = 7.6.

Also logged: ``moments_mean_stat``, ``moments_cov_stat``, ``moments_var_stat`` (T_mean, T_cov, T_var),
``moments_num_samples``; with ``bootstrap`` B > 0, the 95% percentile intervals ``moments_mean_err_ci_lo``/
``_ci_hi`` and ``moments_cov_err_ci_lo``/``_ci_hi`` over B resamples of the generated set (the reference
is the stated Gaussian, not a sample; :mod:`bench_metrics.bootstrap`) and ``moments_boot_n`` = B.
A small p-value (e.g. < 0.001) says the samples are not exact; a p-value is not an effect size (read
the errors for that). The metric skips, with the reason, when the case has no samples, when the dataset
states no Gaussian mean and covariance (e.g. a Gaussian mixture, whose moments are known but whose
sample covariance has another null distribution), or when n <= D (S is then singular).
"""
from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field
from scipy import stats

import torch

from bench.context import MetricSkipped

from . import bootstrap
from .common import flat64, generated, prefixed


def gaussian_truth(params: dict) -> tuple[np.ndarray, np.ndarray]:
    """(mu (D,), Sigma (D, D)) from ``DataInfo.params``, or MetricSkipped when the data are not a stated Gaussian."""
    if params.get("kind") != "gaussian" or "mean" not in params or "cov" not in params:
        raise MetricSkipped("the dataset states no Gaussian mean and covariance (DataInfo.params kind "
                            f"'gaussian'; got {params.get('kind')!r}): use gaussian or gaussian_image")
    return np.asarray(params["mean"], np.float64).reshape(-1), np.asarray(params["cov"], np.float64)


def mean_test(x: np.ndarray, mu: np.ndarray, chol: np.ndarray) -> tuple[float, float]:
    """(T_mean, p) with T_mean = n (m - mu)^T Sigma^-1 (m - mu) ~ chi2_D; ``chol`` = Cholesky factor of Sigma."""
    n, d = x.shape
    z = np.linalg.solve(chol, x.mean(0) - mu)
    t = float(n * z @ z)
    return t, float(stats.chi2.sf(t, d))


def covariance_test(x: np.ndarray, chol: np.ndarray) -> tuple[float, float]:
    """(T_cov, p): Bartlett-corrected modified LRT of Cov = L L^T with unknown mean (module docstring)."""
    n, d = x.shape
    nu = n - 1
    w = np.linalg.solve(chol, (x - x.mean(0)).T)  # whitened, centred: (D, n)
    s_w = w @ w.T / nu
    _, logdet = np.linalg.slogdet(s_w)
    rho = 1.0 - (2 * d * d + 3 * d - 1) / (6.0 * nu * (d + 1))
    t = float(rho * nu * (np.trace(s_w) - logdet - d))
    return t, float(stats.chi2.sf(t, d * (d + 1) // 2))


def variance_test(x: np.ndarray, chol: np.ndarray) -> tuple[float, float]:
    """(T_var, two-sided p) with T_var = nu tr S_w = tr W, W ~ Wishart_D(I, nu), so T_var ~ chi2_{nu D} exactly."""
    n, d = x.shape
    w = np.linalg.solve(chol, (x - x.mean(0)).T)
    t = float(np.sum(w * w))
    f = (n - 1) * d
    return t, float(min(1.0, 2 * min(stats.chi2.cdf(t, f), stats.chi2.sf(t, f))))


def moments(x: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> dict[str, float]:
    """All ``moments_*`` values (unprefixed names) for samples ``x`` (n, D) against N(mu, cov)."""
    n, d = x.shape
    if n <= d:
        raise MetricSkipped(f"moments needs more samples than dimensions (n = {n} <= D = {d})")
    chol = np.linalg.cholesky(cov)
    t_mean, p_mean = mean_test(x, mu, chol)
    t_cov, p_cov = covariance_test(x, chol)
    t_var, p_var = variance_test(x, chol)
    s = np.cov(x, rowvar=False).reshape(d, d)
    return {"mean_err": float(np.linalg.norm(x.mean(0) - mu) / np.sqrt(np.trace(cov))),
            "cov_err": float(np.linalg.norm(s - cov) / np.linalg.norm(cov)),
            "mean_p": p_mean, "cov_p": p_cov, "var_p": p_var,
            "mean_stat": t_mean, "cov_stat": t_cov, "var_stat": t_var,
            "num_samples": float(n)}


class Moments:
    """Metric ``moments``. Parameters: ``num_samples`` (generated samples used, default all),
    ``key`` (metric key prefix, default ``moments``), ``bootstrap`` (resamples of the intervals, 0: none)."""

    def __init__(self, num_samples: Annotated[int, Field(gt=1)] | None = None, key: str | None = None,
                 bootstrap: Annotated[int, Field(ge=0)] = 200):
        self.num_samples = num_samples
        self.key = prefixed(key, "moments")
        self.bootstrap = bootstrap

    def compute(self, ctx) -> dict[str, float]:
        mu, cov = gaussian_truth(ctx.data.params)
        x = flat64(generated(ctx, self.num_samples)).numpy()
        if x.shape[1] != len(mu):
            raise MetricSkipped(f"samples of dimension {x.shape[1]} but the stated mean has {len(mu)}")
        out = {f"{self.key}_{k}": v for k, v in moments(x, mu, cov).items()}
        if self.bootstrap and bootstrap.affordable(self.key, float(self.bootstrap) * x.shape[0] * x.shape[1] ** 2,
                                                   ctx.log):
            out.update(error_intervals(x, mu, cov, self.bootstrap, self.key, out))
        return out


def error_intervals(x: np.ndarray, mu: np.ndarray, cov: np.ndarray, num: int, key: str,
                    values: dict[str, float]) -> dict[str, float]:
    """95% percentile intervals of ``<key>_mean_err`` and ``<key>_cov_err`` (estimates in ``values``)
    over ``num`` resamples of ``x``."""
    xt = torch.from_numpy(x)
    (r,) = bootstrap.draw(num, len(xt), tag=key)
    mean_err, cov_err = bootstrap.moment_errors(xt, r.counts, torch.from_numpy(mu), torch.from_numpy(cov))
    return {**bootstrap.interval(f"{key}_mean_err", mean_err, values[f"{key}_mean_err"]),
            **bootstrap.interval(f"{key}_cov_err", cov_err, values[f"{key}_cov_err"]),
            f"{key}_boot_n": float(num)}
