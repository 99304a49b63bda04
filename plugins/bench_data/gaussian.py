"""Gaussian and Gaussian-mixture data with known parameters, in any dimension.

``DataInfo.params`` holds the ground truth: ``{"kind": "gaussian", "mean": [...], "cov": [[...]]}`` or
``{"kind": "gmm", "weights": [...], "means": [[...]], "covs": [[[...]]]}``, so oracles and closed-form
tests (exact score, exact NLL, Frechet distance) can use it.
"""
from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from bench.protocols import DataInfo
from bench.rng import derive_seed


def random_covariance(dim: int, rng: np.random.Generator, condition: float) -> np.ndarray:
    """A random SPD matrix with eigenvalues log-spaced in [1/condition, 1] (scaled to mean 1-ish)."""
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    eig = np.logspace(0, -np.log10(condition), dim) if dim > 1 else np.ones(1)
    return (q * eig) @ q.T


class GaussianData:
    """N(mean, cov) with ``mean`` drawn from N(0, mean_scale^2 I) and a random covariance of the
    given condition number (scaled by ``scale``^2), all from ``data_seed``."""

    def __init__(self, dim: Annotated[int, Field(gt=0, le=4096)] = 2,
                 scale: Annotated[float, Field(gt=0)] = 1.0,
                 mean_scale: Annotated[float, Field(ge=0)] = 0.5,
                 condition: Annotated[float, Field(ge=1)] = 10.0,
                 n_train: Annotated[int, Field(gt=0)] = 20000, n_test: Annotated[int, Field(gt=0)] = 5000,
                 data_seed: int = 0):
        rng = np.random.default_rng(derive_seed("gaussian", dim, data_seed) % (2**32))
        mean = mean_scale * rng.standard_normal(dim)
        cov = scale ** 2 * random_covariance(dim, rng, condition)
        chol = np.linalg.cholesky(cov)
        pts = mean + rng.standard_normal((n_train + n_test, dim)) @ chol.T
        self._splits = {"train": torch.tensor(pts[:n_train], dtype=torch.float32),
                        "test": torch.tensor(pts[n_train:], dtype=torch.float32)}
        self.info = DataInfo(name=f"gaussian{dim}", shape=(dim,), modality="points",
                             params={"kind": "gaussian", "mean": mean.tolist(), "cov": cov.tolist()})

    def split(self, name: str) -> torch.Tensor:
        return self._splits[name]


class MixtureData:
    """A mixture of ``components`` Gaussians with means on a sphere of radius ``radius`` and
    isotropic covariances ``std^2 I``."""

    def __init__(self, dim: Annotated[int, Field(gt=0, le=4096)] = 2,
                 components: Annotated[int, Field(gt=0, le=64)] = 4,
                 radius: Annotated[float, Field(ge=0)] = 2.0, std: Annotated[float, Field(gt=0)] = 0.3,
                 n_train: Annotated[int, Field(gt=0)] = 20000, n_test: Annotated[int, Field(gt=0)] = 5000,
                 data_seed: int = 0):
        rng = np.random.default_rng(derive_seed("gmm", dim, components, data_seed) % (2**32))
        dirs = rng.standard_normal((components, dim))
        means = radius * dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
        comp = rng.integers(0, components, n_train + n_test)
        pts = means[comp] + std * rng.standard_normal((n_train + n_test, dim))
        self._splits = {"train": torch.tensor(pts[:n_train], dtype=torch.float32),
                        "test": torch.tensor(pts[n_train:], dtype=torch.float32)}
        cov = (std ** 2 * np.eye(dim)).tolist()
        self.info = DataInfo(name=f"gmm{dim}x{components}", shape=(dim,), modality="points",
                             params={"kind": "gmm", "weights": [1 / components] * components,
                                     "means": means.tolist(), "covs": [cov] * components})

    def split(self, name: str) -> torch.Tensor:
        return self._splits[name]
