"""Training batches through a ``torch.utils.data.DataLoader`` (DESIGN.md section 5, the training loop).

Step s of a training reads the rows ``idx_s = randint(N, (batch_size,))`` of the training split, drawn
in step order from one CPU generator seeded with ``derive_seed(seed, "train-batches")``: the batches
are a function of (seed, N, batch_size) only. The indices are drawn in the main process (the
DataLoader's sampler) and only the reading of rows goes to the ``num_workers`` worker processes, whose
batches the DataLoader returns in sampler order, so any ``num_workers`` gives the same batches; 0
reads them in the training process (bench's behaviour before workers existed, bit for bit).

Rows come from ``dataset.rows("train")`` when the dataset has it (an indexable that reads only the
rows asked for, e.g. from a memory map: docs/plugins.md, "Datasets") and from ``dataset.split("train")``
otherwise. A family with the attribute ``wants_labels = True`` gets the rows' class labels:
:func:`batches` then yields ``(x, y)`` with ``y = dataset.labels("train")[idx_s]``, else ``(x, None)``.
"""
from __future__ import annotations

import multiprocessing
import warnings
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from .errors import CaseFailed
from .rng import derive_seed


class SeededBatchIndices(Sampler):
    """The row indices of steps ``start .. steps - 1``: each an int64 ``(batch_size,)`` tensor from
    ``torch.randint(n, ...)`` on the seeded generator; the skipped steps' draws are made and dropped,
    so that step s gets the same rows whatever ``start`` is (a resumed training)."""

    def __init__(self, n: int, batch_size: int, steps: int, seed: int, start: int = 0):
        self.n, self.batch_size, self.steps, self.seed, self.start = n, batch_size, steps, seed, start

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self) -> Iterator[torch.Tensor]:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "train-batches"))
        for step in range(self.steps):
            idx = torch.randint(self.n, (self.batch_size,), generator=gen)
            if step >= self.start:
                yield idx


class RowReader:
    """``reader[idx]`` is ``(data[idx], labels[idx] or None)``; a tensor split is indexed on its own
    device. Pickled into DataLoader workers with the dataset's rows (a tensor, or a picklable view)."""

    def __init__(self, data: Any, labels: torch.Tensor | None):
        self.data, self.labels = data, labels

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: torch.Tensor) -> tuple[Any, torch.Tensor | None]:
        x = self.data[idx.to(self.data.device)] if isinstance(self.data, torch.Tensor) else self.data[idx]
        y = None if self.labels is None else self.labels[idx.to(self.labels.device)]
        return x, y


def batches(dataset: Any, family: Any, cfg: dict[str, Any], seed: int, device: str = "cpu",
            start: int = 0) -> Iterator[tuple[Any, torch.Tensor | None]]:
    """``(x, y)`` for training steps ``start .. cfg["steps"] - 1``, on ``device``; ``y`` is None unless
    ``family.wants_labels``. ``cfg["num_workers"]`` (default 0) worker processes read the rows; with 0
    a tensor split is moved to ``device`` once and indexed there."""
    workers = int(cfg.get("num_workers") or 0)
    if workers and multiprocessing.current_process().daemon:
        warnings.warn(f"train.num_workers={workers} ignored: this case runs in a daemonic worker process "
                      "(the process executor), which cannot start DataLoader workers; the batches are the same")
        workers = 0
    data = dataset.rows("train") if hasattr(dataset, "rows") else dataset.split("train")
    labels = None
    if getattr(family, "wants_labels", False):
        if not hasattr(dataset, "labels") or "num_classes" not in dataset.info.params:
            raise CaseFailed(f"family {type(family).__name__} trains on class labels (wants_labels) but dataset "
                             f"{dataset.info.name} has none")
        labels = dataset.labels("train")
    if workers == 0:  # read in this process: the split on the device, as before workers existed
        data = data.to(device) if isinstance(data, torch.Tensor) else data
        labels = None if labels is None else labels.to(device)
    sampler = SeededBatchIndices(len(data), cfg["batch_size"], cfg["steps"], seed, start)
    # a generator of its own: an iterator draws its workers' base seed from it, and from torch's global
    # generator otherwise, which would shift the global stream (dropout) against a run without a loader
    # and against a resumed run (bench.train_state restores the global state)
    loader = DataLoader(RowReader(data, labels), sampler=sampler, batch_size=None, num_workers=workers,
                        pin_memory=workers > 0 and torch.device(device).type == "cuda",
                        generator=torch.Generator().manual_seed(derive_seed(seed, "train-loader")))
    return ((x.to(device) if isinstance(x, torch.Tensor) else x, None if y is None else y.to(device))
            for x, y in loader)
