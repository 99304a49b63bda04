"""Shared pieces of the metrics: fixed data subsets, the reference set and its noise-floor sample.

Every distance d(generated, reference) is logged next to its noise floor d(real, reference), where
``real`` is a sample of held-out real data of the *same size* as the generated set, disjoint from
the reference (it comes from the other split). A model cannot be told apart from the data by this
metric when its distance is at the floor; the gap above the floor is what the number says.

Subsets are drawn with seeds that depend on the split and its size only, not on the case seed, so
every case of a suite is compared with the same reference and the same floor sample (and the
cached reference statistics are shared).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from bench.context import MetricSkipped
from bench.rng import derive_seed

OTHER_SPLIT = {"test": "train", "train": "test"}


def subset_index(length: int, n: int | None, *tag: Any) -> torch.Tensor | None:
    """The row indices :func:`fixed_subset` picks from ``length`` rows (None: all, in order)."""
    if n is None or n >= length:
        return None
    gen = torch.Generator().manual_seed(derive_seed("bench_metrics", "subset", *tag, length))
    return torch.randperm(length, generator=gen)[:n]


def fixed_subset(x: torch.Tensor, n: int | None, *tag: Any) -> torch.Tensor:
    """``n`` rows of ``x`` picked by a permutation seeded by ``tag`` and ``len(x)`` (all of ``x``, in
    its order, when ``n`` is None or not smaller than ``len(x)``)."""
    index = subset_index(len(x), n, *tag)
    return x if index is None else x[index]


@dataclass
class Rows:
    """Rows ``data[index]`` (all of ``data`` when ``index`` is None), read chunk by chunk so that a
    large subset is never copied at once (the 50,000-row floor sample of a full-size FID)."""

    data: torch.Tensor
    index: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.data) if self.index is None else len(self.index)

    def chunks(self, size: int):
        for lo in range(0, len(self), size):
            yield self.data[lo:lo + size] if self.index is None else self.data[self.index[lo:lo + size]]

    def tensor(self) -> torch.Tensor:
        return self.data if self.index is None else self.data[self.index]


def subset_rows(x: torch.Tensor, n: int | None, *tag: Any) -> Rows:
    """:func:`fixed_subset` as lazy :class:`Rows` (the same rows in the same order)."""
    return Rows(x, subset_index(len(x), n, *tag))


def tensor_digest(x: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (a content hash of data)."""
    t = x.detach().cpu().contiguous()
    h = digest_start(t.dtype, tuple(t.shape))
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def digest_start(dtype: torch.dtype, shape: tuple[int, ...]):
    """The sha256 state :func:`tensor_digest` starts from; update it with the bytes of row chunks,
    in order, to get the same digest without holding the whole tensor."""
    return hashlib.sha256(f"{dtype}{tuple(shape)}".encode())


def generated(ctx: Any, num_samples: int | None) -> torch.Tensor:
    """The case's generated samples (the first ``num_samples``), or MetricSkipped if there are none."""
    if ctx.samples is None:
        if getattr(ctx, "num_samples", None):
            raise MetricSkipped("the generated samples were streamed, not held (eval.hold_samples); this metric "
                                "has no streaming form")
        raise MetricSkipped("the case has no generated samples (no sampler)")
    x = ctx.samples
    return x if num_samples is None else x[:num_samples]


@dataclass
class RealSets:
    """The reference set and the floor sample (same size as the generated set, other split)."""

    reference: torch.Tensor
    floor: torch.Tensor
    reference_split: str
    floor_split: str
    reference_labels: torch.Tensor | None = None  # row-aligned class labels (labelled datasets only)
    floor_labels: torch.Tensor | None = None

    def counts(self, key: str) -> dict[str, float]:
        return {f"{key}_ref_num_samples": float(len(self.reference)),
                f"{key}_floor_num_samples": float(len(self.floor))}


def real_sets(dataset: Any, n: int, reference_split: str = "test",
              reference_num_samples: int | None = None, log=None, lazy: bool = False) -> RealSets:
    """Reference = ``reference_split`` (a fixed subset of ``reference_num_samples`` if given); floor
    sample = ``n`` rows of the other split. If the other split is smaller than ``n`` the floor uses
    all of it and says so in the log (its count is logged with the metric). With ``lazy`` the two
    sets are :class:`Rows` (the same rows, read chunk by chunk)."""
    pick = subset_rows if lazy else fixed_subset
    if reference_split not in OTHER_SPLIT:
        raise ValueError(f"reference_split must be 'train' or 'test', got {reference_split!r}")
    floor_split = OTHER_SPLIT[reference_split]
    ref = pick(dataset.split(reference_split), reference_num_samples, "reference", reference_split)
    pool = dataset.split(floor_split)
    if len(pool) < n and log is not None:
        log(f"noise floor: the {floor_split} split has {len(pool)} < {n} samples; the floor uses all of them")
    floor = pick(pool, n, "floor", floor_split)
    out = RealSets(ref, floor, reference_split, floor_split)
    if has_labels(dataset):  # the same subsets of the labels (same seeds, same lengths)
        out.reference_labels = fixed_subset(dataset.labels(reference_split), reference_num_samples, "reference",
                                            reference_split)
        out.floor_labels = fixed_subset(dataset.labels(floor_split), n, "floor", floor_split)
    return out


def has_labels(dataset: Any) -> bool:
    """Whether ``dataset.labels(split)`` gives labels (a loader of optionally labelled data, such as
    ``npz`` without ``y``, has the method and raises ValueError)."""
    if not hasattr(dataset, "labels"):
        return False
    try:
        dataset.labels("test")
    except ValueError:
        return False
    return True


def flat64(x: torch.Tensor) -> torch.Tensor:
    """``(N, ...)`` -> ``(N, D)`` float64."""
    return x.detach().reshape(len(x), -1).to(torch.float64)


def prefixed(key: str | None, default: str) -> str:
    return key or default
