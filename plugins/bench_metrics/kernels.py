"""Kernel and energy two-sample distances between generated samples and held-out data.

MMD (Gretton et al. 2012), RBF kernel k(a, b) = exp(-|a - b|^2 / (2 h^2)), unbiased estimate of MMD^2
from X (n) and Y (m):

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (n (n-1)) + sum_{i != j} k(y_i, y_j) / (m (m-1))
              - 2 sum_{i, j} k(x_i, y_j) / (n m)

(it can be slightly negative when the distributions are close). Bandwidth h: the median heuristic,
h = median of the pairwise distances |a - b| (a != b) in the pooled sample (at most 1000 points of
each set; fixed seed), unless ``bandwidth`` is given. The floor uses the same h.

Energy distance (Szekely and Rizzo), with U-statistics:

    E(X, Y) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|      (>= 0, = 0 iff X and Y are equal in law)

Logged: ``mmd`` (the unbiased MMD^2), ``mmd_floor``, ``mmd_bandwidth``; ``energy``, ``energy_floor``;
with ``*_num_samples``, ``*_ref_num_samples``, ``*_floor_num_samples``; with ``bootstrap`` B > 0, the
95% percentile interval ``*_ci_lo``/``*_ci_hi`` over resamples of the generated and reference sets
(kernel and distance matrices computed once, the MMD bandwidth held fixed;
:mod:`bench_metrics.bootstrap`) and ``*_boot_n`` = B. Images are flattened in model
space. Up to ``max_samples`` per set are used (pairwise matrices).
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from . import bootstrap
from .common import fixed_subset, flat64, generated, prefixed, real_sets


def _offdiag_mean(k: torch.Tensor) -> torch.Tensor:
    n = k.shape[0]
    return (k.sum() - k.diagonal().sum()) / (n * (n - 1))


def median_bandwidth(x: torch.Tensor, y: torch.Tensor, max_points: int = 1000) -> float:
    """Median pairwise Euclidean distance of the pooled sample (distinct pairs)."""
    z = torch.cat([fixed_subset(flat64(x), max_points, "mmd-median-x"), fixed_subset(flat64(y), max_points, "mmd-median-y")])
    d = torch.cdist(z, z)
    iu = torch.triu_indices(len(z), len(z), offset=1)
    return float(d[iu[0], iu[1]].median())


def rbf_kernels(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> tuple[torch.Tensor, ...]:
    """(K_xx, K_yy, K_xy) of the RBF kernel exp(-|a-b|^2 / (2 h^2)), h = ``bandwidth``."""
    x, y = flat64(x), flat64(y)
    g = -1.0 / (2 * bandwidth ** 2)
    return tuple(torch.exp(g * torch.cdist(a, b).pow(2)) for a, b in ((x, x), (y, y), (x, y)))


def distances(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(|x_i - x_j|, |y_i - y_j|, |x_i - y_j|) matrices."""
    x, y = flat64(x), flat64(y)
    return torch.cdist(x, x), torch.cdist(y, y), torch.cdist(x, y)


def mmd2_from_kernels(kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor) -> float:
    return float(_offdiag_mean(kxx) + _offdiag_mean(kyy) - 2 * kxy.mean())


def energy_from_distances(dxx: torch.Tensor, dyy: torch.Tensor, dxy: torch.Tensor) -> float:
    return float(2 * dxy.mean() - _offdiag_mean(dxx) - _offdiag_mean(dyy))


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """Unbiased MMD^2 with the RBF kernel exp(-|a-b|^2 / (2 h^2)), h = ``bandwidth``."""
    return mmd2_from_kernels(*rbf_kernels(x, y, bandwidth))


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """2 E|X-Y| - E|X-X'| - E|Y-Y'| with U-statistics for the within-set terms."""
    return energy_from_distances(*distances(x, y))


class _TwoSample:
    default_key = "?"

    def __init__(self, num_samples: Annotated[int, Field(gt=1)] | None = None,
                 reference_split: Literal["train", "test"] = "test",
                 max_samples: Annotated[int, Field(gt=1)] = 2000, key: str | None = None,
                 bootstrap: Annotated[int, Field(ge=0)] = 200):
        self.num_samples, self.reference_split, self.max_samples = num_samples, reference_split, max_samples
        self.key = prefixed(key, self.default_key)
        self.bootstrap = bootstrap

    def sets(self, ctx):
        n = min(self.num_samples or self.max_samples, self.max_samples)
        x = generated(ctx, n)
        sets = real_sets(ctx.dataset, len(x), self.reference_split, self.max_samples, ctx.log)
        return x, sets

    def value(self, matrices, statistic, replicates) -> dict[str, float]:
        """``<key>`` = ``statistic(*matrices)``; with bootstrap B > 0 also ``<key>_ci_lo``/``_ci_hi``
        from ``replicates(*matrices, rx, ry)`` on the same matrices, and ``<key>_boot_n``."""
        k = self.key
        out = {k: statistic(*matrices)}
        if self.bootstrap:
            rx, ry = bootstrap.draw(self.bootstrap, matrices[0].shape[0], matrices[1].shape[0], tag=k)
            out.update({**bootstrap.interval(k, replicates(*matrices, rx, ry)), f"{k}_boot_n": float(self.bootstrap)})
        return out


class MMD(_TwoSample):
    """Metric ``mmd``: params ``num_samples``, ``reference_split``, ``max_samples``, ``bandwidth``
    (None: median heuristic), ``key``, ``bootstrap`` (resamples of the interval, 0: none)."""

    default_key = "mmd"

    def __init__(self, num_samples: Annotated[int, Field(gt=1)] | None = None,
                 reference_split: Literal["train", "test"] = "test",
                 max_samples: Annotated[int, Field(gt=1)] = 2000,
                 bandwidth: Annotated[float, Field(gt=0)] | None = None, key: str | None = None,
                 bootstrap: Annotated[int, Field(ge=0)] = 200):
        super().__init__(num_samples, reference_split, max_samples, key, bootstrap)
        self.bandwidth = bandwidth

    def compute(self, ctx) -> dict[str, float]:
        x, sets = self.sets(ctx)
        h = self.bandwidth or median_bandwidth(x, sets.reference)
        k = self.key
        return {**self.value(rbf_kernels(x, sets.reference, h), mmd2_from_kernels, bootstrap.mmd2_replicates),
                f"{k}_floor": mmd2_unbiased(sets.floor, sets.reference, h),
                f"{k}_bandwidth": h, f"{k}_num_samples": float(len(x)), **sets.counts(k)}


class Energy(_TwoSample):
    """Metric ``energy``: params ``num_samples``, ``reference_split``, ``max_samples``, ``key``,
    ``bootstrap`` (resamples of the interval, 0: none)."""

    default_key = "energy"

    def compute(self, ctx) -> dict[str, float]:
        x, sets = self.sets(ctx)
        k = self.key
        return {**self.value(distances(x, sets.reference), energy_from_distances, bootstrap.energy_replicates),
                f"{k}_floor": energy_distance(sets.floor, sets.reference),
                f"{k}_num_samples": float(len(x)), **sets.counts(k)}
