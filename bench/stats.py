"""Statistics for comparisons: intervals over seeds, differences against a baseline, the false
discovery rate over many differences, and the number of seeds a difference needs.

All intervals are two-sided at ``level`` (default 95%). Seeds are the replicates: a cell's value
for one seed is one observation ``x_i``; ``n`` seeds give

- the Student-t interval ``mean +- t_{1-a/2, n-1} * s / sqrt(n)`` (``s`` the sample standard
  deviation, ddof=1);
- the paired difference of two cells observed on the same seeds: the t interval of
  ``d_i = x_i - y_i`` and the p-value ``2 P(T_{n-1} > |mean(d)| sqrt(n) / s_d)`` (as
  ``scipy.stats.ttest_rel``);
- Welch's unpaired difference when the seeds cannot be matched: standard error
  ``sqrt(s_x^2/n_x + s_y^2/n_y)`` and Welch-Satterthwaite degrees of freedom (as
  ``scipy.stats.ttest_ind(equal_var=False)``);
- Benjamini-Hochberg adjusted p-values ``q_(i) = min_{j >= i} m p_(j) / j`` over ``m`` tests,
  which keep the expected false discovery rate at or below ``q`` when ``q_(i) <= q`` is declared;
- the seeds needed to detect a difference ``delta`` with a paired t test at power ``1 - b``:
  the smallest ``n`` with ``n >= ((t_{1-a/2, n-1} + t_{1-b, n-1}) s_d / delta)^2``, the t
  version of the normal approximation ``n ~ ((z_{1-a/2} + z_{1-b}) s_d / delta)^2``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as _st

Z95 = float(_st.norm.ppf(0.975))


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval: ``kind`` is ``t`` (over seeds), ``bootstrap`` or ``sem``
    (the run's own per-case interval, n = 1) or ``single`` (n = 1, no interval)."""

    mean: float
    lo: float
    hi: float
    n: int
    kind: str = "t"

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2


@dataclass(frozen=True)
class Difference:
    """``mean`` of ``x - baseline`` with its interval, the p-value, the test (``paired`` or
    ``welch``) and the number of seeds (pairs for ``paired``, ``n_x + n_y`` for ``welch``)."""

    mean: float
    lo: float
    hi: float
    p: float
    n: int
    kind: str


def _quantile(level: float, df: float) -> float:
    return float(_st.t.ppf(1 - (1 - level) / 2, df))


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Student-t interval of the mean of ``values`` (n >= 2); n = 1 gives ``kind='single'``."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, "single")
    half = _quantile(level, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, "t")


def _t_test(mean: float, se: float, df: float, level: float) -> tuple[float, float, float]:
    if se == 0:  # all differences equal: the interval is a point, p is 0 unless it is 0
        return mean, mean, (1.0 if mean == 0 else 0.0)
    half = _quantile(level, df) * se
    p = float(2 * _st.t.sf(abs(mean) / se, df))
    return mean - half, mean + half, p


def paired_difference(x: Sequence[float], baseline: Sequence[float], level: float = 0.95) -> Difference:
    """Paired t: ``x[i]`` and ``baseline[i]`` come from the same seed (n >= 2 pairs)."""
    d = np.asarray(x, dtype=float) - np.asarray(baseline, dtype=float)
    n = len(d)
    if n < 2:
        raise ValueError("a paired difference needs at least two pairs")
    mean = float(d.mean())
    lo, hi, p = _t_test(mean, float(d.std(ddof=1)) / math.sqrt(n), n - 1, level)
    return Difference(mean, lo, hi, p, n, "paired")


def welch_difference(x: Sequence[float], baseline: Sequence[float], level: float = 0.95) -> Difference:
    """Welch's unpaired t for ``mean(x) - mean(baseline)`` (each with n >= 2)."""
    a, b = np.asarray(x, dtype=float), np.asarray(baseline, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("a Welch difference needs at least two values on each side")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if se > 0 else len(a) + len(b) - 2
    mean = float(a.mean() - b.mean())
    lo, hi, p = _t_test(mean, se, df, level)
    return Difference(mean, lo, hi, p, len(a) + len(b), "welch")


def benjamini_hochberg(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (``q_(i) = min_{j >= i} m p_(j) / j``, at most 1), in
    the input order; declaring ``q <= 0.05`` keeps the false discovery rate at or below 5%."""
    p = np.asarray(pvalues, dtype=float)
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def seeds_for_power(sd: float, delta: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Seeds (pairs) a two-sided paired t test at level ``alpha`` needs to detect a mean
    difference ``delta`` with probability ``power`` when the per-seed difference has standard
    deviation ``sd``: the smallest n >= 2 with n >= ((t_{1-alpha/2,n-1} + t_{power,n-1}) sd/delta)^2."""
    if delta == 0:
        raise ValueError("delta must be non-zero")
    ratio = abs(sd / delta)
    n = max(2, math.ceil(normal_seeds(sd, delta, alpha, power)))
    for n in range(n, n + 100000):  # the answer is a few above the normal approximation
        if ((_st.t.ppf(1 - alpha / 2, n - 1) + _st.t.ppf(power, n - 1)) * ratio) ** 2 <= n:
            return n
    raise ValueError(f"no seed count found (sd/delta = {ratio:.3g})")


def normal_seeds(sd: float, delta: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The normal approximation ``((z_{1-alpha/2} + z_power) sd / delta)^2`` (a lower bound)."""
    return float(((_st.norm.ppf(1 - alpha / 2) + _st.norm.ppf(power)) * sd / delta) ** 2)


def paired_power(n: int, sd: float, delta: float, alpha: float = 0.05) -> float:
    """Exact power of the two-sided paired t test with n pairs: the noncentral t with
    ``n - 1`` degrees of freedom and noncentrality ``delta sqrt(n) / sd`` beyond ``+-t_{1-alpha/2}``."""
    df, nc = n - 1, delta * math.sqrt(n) / sd
    crit = _st.t.ppf(1 - alpha / 2, df)
    return float(_st.nct.sf(crit, df, nc) + _st.nct.cdf(-crit, df, nc))


def sd_at_samples(sd_total: float, sd_sampling: float, n0: float, n: float) -> float:
    """Per-seed standard deviation at sample count ``n`` when, at the pilot's ``n0``, it is
    ``sd_total`` of which ``sd_sampling`` comes from the finite sample set (scaling as
    ``1/sqrt(n)``); the rest (training noise) does not depend on ``n``:
    ``sd(n)^2 = max(sd_total^2 - sd_sampling^2, 0) + sd_sampling^2 n0 / n``."""
    return math.sqrt(max(sd_total ** 2 - sd_sampling ** 2, 0.0) + sd_sampling ** 2 * n0 / n)
