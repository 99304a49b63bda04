"""CIFAR-10 and CIFAR-100 from a local copy of the "python version" (nothing is downloaded).

Layout (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html): pickled dicts with bytes keys,

- ``cifar10``: ``data_batch_1`` .. ``data_batch_5`` (train, 50,000), ``test_batch`` (10,000) and
  ``batches.meta``; each batch has ``b"data"``, uint8 (N, 3072), and ``b"labels"`` (10 classes);
- ``cifar100``: ``train`` (50,000), ``test`` (10,000) and ``meta``; ``b"data"`` as above and
  ``b"fine_labels"`` (100 classes; the 20 coarse labels are not used).

A row of ``b"data"`` is the 1024 red, then green, then blue values of a 32x32 image in row-major
order, so it reshapes to (3, 32, 32). 8-bit: L = 256 and model space x = 2 k / 255 - 1. ``root`` is
the directory holding the files, or its parent (``cifar-10-batches-py`` / ``cifar-100-python``).
The train and test splits are the files' own, in file order; ``labels(split)`` gives the classes.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from bench.errors import UserError
from bench.protocols import DataInfo

from .cifar_layout import LAYOUTS, find_root, root_of
from .common import LEVELS_8BIT, Labelled, levels_to_model

def unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as e:  # corrupt or not a pickle: one line naming the file
        raise UserError(f"cannot read {path} as a CIFAR pickle: {type(e).__name__}: {e}") from None


def read_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, 3, 32, 32), int64 labels (N,)) of one pickled batch, validated."""
    d = unpickle(path)
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        keys = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise UserError(f"{path}: expected a dict with keys b'data' and {label_key!r}, found {keys}")
    data, labels = np.asarray(d[b"data"]), np.asarray(d[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"{path}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),) or labels.min(initial=0) < 0 or labels.max(initial=0) >= num_classes:
        raise UserError(f"{path}: {label_key!r} must be {len(data)} integers in 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


class CIFAR(Labelled):
    """The reader; ``cifar10`` and ``cifar100`` are the subclasses below (param ``root``)."""

    def __init__(self, root: Path, which: Literal["cifar10", "cifar100"]):
        lay = LAYOUTS[which]
        try:
            where = find_root(Path(root), which)
        except ValueError as e:  # built outside a suite
            raise UserError(str(e)) from None
        self._splits, self._labels = {}, {}
        for split in ("train", "test"):
            parts = [read_batch(where / f, lay["label_key"], lay["num_classes"]) for f in lay[split]]
            self._splits[split] = levels_to_model(np.concatenate([p[0] for p in parts])).contiguous()
            self._labels[split] = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        names = unpickle(where / lay["meta"]).get(lay["names_key"], [])
        self.class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        self.info = DataInfo(name=which, shape=(3, 32, 32), modality="image", levels=LEVELS_8BIT,
                             value_range=(-1.0, 1.0), params={"num_classes": lay["num_classes"]})

    def split(self, name: str) -> torch.Tensor:
        return self._splits[name]


class CIFAR10(CIFAR):
    def __init__(self, root: root_of("cifar10")):
        super().__init__(root, "cifar10")


class CIFAR100(CIFAR):
    def __init__(self, root: root_of("cifar100")):
        super().__init__(root, "cifar100")
