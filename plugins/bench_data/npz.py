"""Images from a NumPy ``.npz`` file: key ``x`` (N, C, H, W) and optional integer labels ``y`` (N,).

``x`` is either uint8 levels 0..255 (8-bit, L = 256, model space x = 2 k / 255 - 1) or floating point
already in model space, every value in [-1, 1] (continuous: ``levels`` None). C is 1 or 3. Labels ``y``
are integers 0..K-1 with K = max(y) + 1 classes (``labels(split)``, ``params["num_classes"]``). The
train/test split is a fixed shuffle with ``test_fraction`` held out (seeded by ``data_seed``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import Field, FilePath

from bench.errors import UserError
from bench.protocols import DataInfo

from .common import LEVELS_8BIT, Labelled, levels_to_model, shuffle_split


def load_arrays(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(x, y or None) of an ``.npz`` file, or a UserError naming what is wrong."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # not a zip, pickled objects, truncated: one line naming the file
        raise UserError(f"npz: cannot read {path}: {type(e).__name__}: {e}") from None
    if "x" not in arrays:
        raise UserError(f"npz: {path} has no array 'x' (found: {', '.join(sorted(arrays)) or 'none'})")
    return arrays["x"], arrays.get("y")


def check_images(x: np.ndarray, path: Path) -> None:
    if x.ndim != 4 or x.shape[1] not in (1, 3) or len(x) < 2:
        hint = "; channels last? store x.transpose(0, 3, 1, 2)" if x.ndim == 4 and x.shape[-1] in (1, 3) else ""
        raise UserError(f"npz: {path}: x must have shape (N >= 2, C in {{1, 3}}, H, W), got {x.shape}{hint}")
    if x.dtype == np.uint8:
        return
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"npz: {path}: x must be uint8 (levels 0..255) or float in [-1, 1], got {x.dtype}")
    if not np.isfinite(x).all():
        raise UserError(f"npz: {path}: float x has {int((~np.isfinite(x)).sum())} non-finite values")
    if x.min() < -1 or x.max() > 1:
        raise UserError(f"npz: {path}: float x must be in [-1, 1] (model space), "
                        f"got values in [{x.min():.4g}, {x.max():.4g}]")


def check_labels(y: np.ndarray, n: int, path: Path) -> None:
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise UserError(f"npz: {path}: y must be {n} non-negative integers (one label per image), "
                        f"got {y.dtype} {y.shape}")


class NPZImages(Labelled):
    def __init__(self, path: FilePath, test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1,
                 data_seed: int = 0):
        path = Path(path)
        x, y = load_arrays(path)
        check_images(x, path)
        levels = LEVELS_8BIT if x.dtype == np.uint8 else None
        xt = levels_to_model(x) if levels else torch.from_numpy(x.astype(np.float32))
        idx = shuffle_split(len(x), test_fraction, "npz", data_seed)
        self._splits = {s: xt[i].contiguous() for s, i in idx.items()}
        params = {}
        if y is not None:
            check_labels(y, len(x), path)
            self._labels = {s: torch.from_numpy(y[i].astype(np.int64)) for s, i in idx.items()}
            params["num_classes"] = int(y.max()) + 1
        self.info = DataInfo(name=f"npz:{path.stem}", shape=tuple(int(s) for s in x.shape[1:]), modality="image",
                             levels=levels, value_range=(-1.0, 1.0), params=params)

    def split(self, name: str) -> torch.Tensor:
        return self._splits[name]
