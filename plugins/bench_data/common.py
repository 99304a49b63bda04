"""Pieces the on-disk loaders share: 8-bit levels to model space, a seeded train/test split, labels.

Model space of quantised data (DESIGN.md, ``bench.protocols.DataInfo``): x = 2 k / (L - 1) - 1 for the
integer level k in 0 .. L - 1; 8-bit data have L = 256.
"""
from __future__ import annotations

import numpy as np
import torch

from bench.likelihood import model_from_levels
from bench.rng import derive_seed

LEVELS_8BIT = 256


def levels_to_model(k: np.ndarray | torch.Tensor, levels: int = LEVELS_8BIT) -> torch.Tensor:
    """Integer levels k (any integer or float dtype) -> float32 x = 2 k / (L - 1) - 1."""
    k = torch.as_tensor(np.asarray(k) if not isinstance(k, torch.Tensor) else k).to(torch.float32)
    return model_from_levels(k, levels)


def shuffle_split(n: int, test_fraction: float, *tag: object) -> dict[str, np.ndarray]:
    """Row indices of a fixed shuffled split of ``n`` rows, ``test_fraction`` (at least one row) held
    out; the permutation depends on ``tag`` only."""
    order = np.random.default_rng(derive_seed(*tag) % (2**32)).permutation(n)
    n_test = max(1, int(round(test_fraction * n)))
    return {"train": order[n_test:], "test": order[:n_test]}


class Labelled:
    """Mixin of a dataset with class labels: ``labels(split)``, a ``(N,)`` int64 tensor aligned with
    ``split(split)``, and ``info.params["num_classes"]`` (callers check that key first). Subclasses set
    ``self._labels = {"train": ..., "test": ...}`` or None when the data carry no labels."""

    _labels: dict[str, torch.Tensor] | None = None

    def labels(self, name: str) -> torch.Tensor:
        if self._labels is None:
            raise ValueError(f"dataset {self.info.name} has no labels")
        return self._labels[name]
