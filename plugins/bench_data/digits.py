"""sklearn's bundled handwritten digits (no download): 1797 8x8 images with 17 grey levels (0..16).

``digits8``: the images as they are, L = 17. ``digits16``: bilinearly upsampled to 16x16 and requantised
to 8 bits (L = 256), for multi-resolution models. Model space is ``x = 2 k / (L - 1) - 1``. The split
is a fixed stratified-by-index shuffle with ``test_fraction`` held out; labels are kept for the
digits classifier (``dataset.labels(split)``).
"""
from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from bench.likelihood import model_from_levels
from bench.protocols import DataInfo
from bench.rng import derive_seed


def load_digits_levels() -> tuple[np.ndarray, np.ndarray]:
    """(images as integer levels 0..16 with shape (N, 8, 8), labels)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.int64), bunch.target.astype(np.int64)


class Digits:
    def __init__(self, size: Literal[8, 16] = 8, test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2,
                 data_seed: int = 0):
        images, labels = load_digits_levels()
        if size == 8:
            levels = 17
            k = torch.tensor(images, dtype=torch.float32)[:, None]
        else:
            levels = 256
            unit = torch.tensor(images, dtype=torch.float32)[:, None] / 16.0
            up = F.interpolate(unit, size=(16, 16), mode="bilinear", align_corners=False)
            k = torch.round(up.clamp(0, 1) * (levels - 1))
        x = model_from_levels(k, levels)
        rng = np.random.default_rng(derive_seed("digits", data_seed) % (2**32))
        order = rng.permutation(len(x))
        n_test = int(round(test_fraction * len(x)))
        test_idx, train_idx = order[:n_test], order[n_test:]
        self._splits = {"train": x[train_idx].contiguous(), "test": x[test_idx].contiguous()}
        self._labels = {"train": torch.tensor(labels[train_idx]), "test": torch.tensor(labels[test_idx])}
        self.info = DataInfo(name=f"digits{size}", shape=(1, size, size), modality="image", levels=levels,
                             value_range=(-1.0, 1.0), params={"num_classes": 10})

    def split(self, name: str) -> torch.Tensor:
        return self._splits[name]

    def labels(self, name: str) -> torch.Tensor:
        return self._labels[name]
