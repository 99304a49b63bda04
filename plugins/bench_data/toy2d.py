"""Generated 2-D toy sets (the FFJORD / score-SDE benchmarks), with a deterministic train/test split.

``8gaussians`` is a Gaussian mixture with known parameters (eight components of std 0.5/sqrt(2)...
see ``_eight_gaussians``); its ``DataInfo.params`` lets an oracle compute the exact score.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from bench.protocols import DataInfo
from bench.rng import derive_seed

Which = Literal["8gaussians", "moons", "checkerboard", "swissroll", "circles", "2spirals"]

EIGHT_RADIUS = 2.0
EIGHT_STD = 0.25


def _eight_gaussians_params() -> dict:
    means = [[EIGHT_RADIUS * math.cos(2 * math.pi * i / 8), EIGHT_RADIUS * math.sin(2 * math.pi * i / 8)]
             for i in range(8)]
    cov = [[EIGHT_STD ** 2, 0.0], [0.0, EIGHT_STD ** 2]]
    return {"kind": "gmm", "weights": [1 / 8] * 8, "means": means, "covs": [cov] * 8}


def generate(which: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points of the named toy set (float64, shape (n, 2))."""
    if which == "8gaussians":
        p = _eight_gaussians_params()
        comp = rng.integers(0, 8, n)
        return np.asarray(p["means"])[comp] + EIGHT_STD * rng.standard_normal((n, 2))
    if which == "moons":
        t = rng.uniform(0, math.pi, n)
        upper = rng.random(n) < 0.5
        x = np.where(upper, np.cos(t), 1 - np.cos(t))
        y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
        pts = np.stack([x, y], 1) + 0.05 * rng.standard_normal((n, 2))
        return (pts - [0.5, 0.25]) * 2.0
    if which == "checkerboard":
        x1 = rng.uniform(-2, 2, n)
        x2 = rng.uniform(0, 1, n) + np.floor(rng.uniform(0, 2, n)) * 2 - 2 + (np.floor(x1) % 2)
        return np.stack([x1, x2], 1) * 1.0
    if which == "swissroll":
        t = 1.5 * math.pi * (1 + 2 * rng.random(n))
        pts = np.stack([t * np.cos(t), t * np.sin(t)], 1) / 5.0
        return pts + 0.1 * rng.standard_normal((n, 2))
    if which == "circles":
        t = rng.uniform(0, 2 * math.pi, n)
        r = np.where(rng.random(n) < 0.5, 1.0, 2.0)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1) + 0.08 * rng.standard_normal((n, 2))
    if which == "2spirals":
        t = np.sqrt(rng.random(n)) * 3 * math.pi
        sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
        pts = sign[:, None] * np.stack([-t * np.cos(t), t * np.sin(t)], 1) / 3.0
        return pts + 0.1 * rng.standard_normal((n, 2))
    raise ValueError(f"unknown toy set {which!r}")


class Toy2D:
    """A 2-D toy set; ``n_train`` and ``n_test`` points drawn with a seed that depends only on the
    set's name and ``data_seed`` (not on the case seed), so every case sees the same data."""

    def __init__(self, which: Which = "8gaussians", n_train: Annotated[int, Field(gt=0)] = 20000,
                 n_test: Annotated[int, Field(gt=0)] = 5000, data_seed: int = 0):
        rng = np.random.default_rng(derive_seed("toy2d", which, data_seed) % (2**32))
        pts = generate(which, n_train + n_test, rng)
        self._splits = {"train": torch.tensor(pts[:n_train], dtype=torch.float32),
                        "test": torch.tensor(pts[n_train:], dtype=torch.float32)}
        params = _eight_gaussians_params() if which == "8gaussians" else {}
        self.info = DataInfo(name=f"toy2d/{which}", shape=(2,), modality="points", levels=None,
                             value_range=None, params=params)

    def split(self, name: str) -> torch.Tensor:
        return self._splits[name]
