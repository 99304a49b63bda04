"""``gaussian_image``: an image-shaped Gaussian with known mean and covariance, for the oracle under
GFF noise (samplers-oracle suite) and closed-form tests.

Covariance S = scale^2 (0.5 G + 0.5 R) with G the GFF covariance of exponent ``gamma`` (smooth,
image-like correlations, diag 1) and R a random SPD matrix with eigenvalues log-spaced over
``condition`` (trace-normalised to mean variance 1), so S is neither isotropic nor diagonal in the
GFF basis; mean = mean_scale * N(0, I). Everything is drawn from ``data_seed``. Model space is the
raw Gaussian (no quantisation: ``levels = None``, no value range).
"""
from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from bench.protocols import DataInfo
from bench.rng import derive_seed

from .noise import GFF, dense_matrix


class GaussianImage:
    def __init__(self, size: Annotated[int, Field(ge=2, le=32)] = 8, channels: Annotated[int, Field(ge=1, le=4)] = 1,
                 scale: Annotated[float, Field(gt=0)] = 0.5, mean_scale: Annotated[float, Field(ge=0)] = 0.3,
                 gamma: Annotated[float, Field(ge=0, le=4)] = 1.5, condition: Annotated[float, Field(ge=1)] = 10.0,
                 n_train: Annotated[int, Field(gt=0)] = 10000, n_test: Annotated[int, Field(gt=0)] = 5000,
                 data_seed: int = 0):
        shape = (channels, size, size)
        d = channels * size * size
        rng = np.random.default_rng(derive_seed("gaussian_image", shape, data_seed) % (2 ** 32))
        g = dense_matrix(GFF(shape, gamma, 1.0).cov, shape).numpy()
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        eig = np.logspace(0, -np.log10(condition), d)
        r = (q * (eig / eig.mean())) @ q.T
        cov = scale ** 2 * (0.5 * g + 0.5 * r)
        cov = 0.5 * (cov + cov.T)
        mean = mean_scale * rng.standard_normal(d)
        chol = np.linalg.cholesky(cov)
        pts = mean + rng.standard_normal((n_train + n_test, d)) @ chol.T
        pts = torch.tensor(pts, dtype=torch.float32).reshape(-1, *shape)
        self._splits = {"train": pts[:n_train], "test": pts[n_train:]}
        self.info = DataInfo(name=f"gaussian_image{channels}x{size}x{size}", shape=shape, modality="image",
                             levels=None, value_range=None,
                             params={"kind": "gaussian", "mean": mean.tolist(), "cov": cov.tolist()})

    def split(self, name: str) -> torch.Tensor:
        return self._splits[name]
