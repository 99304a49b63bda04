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
with ``*_num_samples``, ``*_ref_num_samples``, ``*_floor_num_samples``. Images are flattened in model
space. Up to ``max_samples`` per set are used (pairwise matrices).
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

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


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """Unbiased MMD^2 with the RBF kernel exp(-|a-b|^2 / (2 h^2)), h = ``bandwidth``."""
    x, y = flat64(x), flat64(y)
    g = -1.0 / (2 * bandwidth ** 2)
    kxx = torch.exp(g * torch.cdist(x, x).pow(2))
    kyy = torch.exp(g * torch.cdist(y, y).pow(2))
    kxy = torch.exp(g * torch.cdist(x, y).pow(2))
    return float(_offdiag_mean(kxx) + _offdiag_mean(kyy) - 2 * kxy.mean())


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """2 E|X-Y| - E|X-X'| - E|Y-Y'| with U-statistics for the within-set terms."""
    x, y = flat64(x), flat64(y)
    return float(2 * torch.cdist(x, y).mean() - _offdiag_mean(torch.cdist(x, x)) - _offdiag_mean(torch.cdist(y, y)))


class _TwoSample:
    default_key = "?"

    def __init__(self, num_samples: Annotated[int, Field(gt=1)] | None = None,
                 reference_split: Literal["train", "test"] = "test",
                 max_samples: Annotated[int, Field(gt=1)] = 2000, key: str | None = None):
        self.num_samples, self.reference_split, self.max_samples = num_samples, reference_split, max_samples
        self.key = prefixed(key, self.default_key)

    def sets(self, ctx):
        n = min(self.num_samples or self.max_samples, self.max_samples)
        x = generated(ctx, n)
        sets = real_sets(ctx.dataset, len(x), self.reference_split, self.max_samples, ctx.log)
        return x, sets


class MMD(_TwoSample):
    """Metric ``mmd``: params ``num_samples``, ``reference_split``, ``max_samples``, ``bandwidth``
    (None: median heuristic), ``key``."""

    default_key = "mmd"

    def __init__(self, num_samples: Annotated[int, Field(gt=1)] | None = None,
                 reference_split: Literal["train", "test"] = "test",
                 max_samples: Annotated[int, Field(gt=1)] = 2000,
                 bandwidth: Annotated[float, Field(gt=0)] | None = None, key: str | None = None):
        super().__init__(num_samples, reference_split, max_samples, key)
        self.bandwidth = bandwidth

    def compute(self, ctx) -> dict[str, float]:
        x, sets = self.sets(ctx)
        h = self.bandwidth or median_bandwidth(x, sets.reference)
        k = self.key
        return {k: mmd2_unbiased(x, sets.reference, h), f"{k}_floor": mmd2_unbiased(sets.floor, sets.reference, h),
                f"{k}_bandwidth": h, f"{k}_num_samples": float(len(x)), **sets.counts(k)}


class Energy(_TwoSample):
    """Metric ``energy``: params ``num_samples``, ``reference_split``, ``max_samples``, ``key``."""

    default_key = "energy"

    def compute(self, ctx) -> dict[str, float]:
        x, sets = self.sets(ctx)
        k = self.key
        return {k: energy_distance(x, sets.reference), f"{k}_floor": energy_distance(sets.floor, sets.reference),
                f"{k}_num_samples": float(len(x)), **sets.counts(k)}
