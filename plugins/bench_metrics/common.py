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


def fixed_subset(x: torch.Tensor, n: int | None, *tag: Any) -> torch.Tensor:
    """``n`` rows of ``x`` picked by a permutation seeded by ``tag`` and ``len(x)`` (all of ``x``, in
    its order, when ``n`` is None or not smaller than ``len(x)``)."""
    if n is None or n >= len(x):
        return x
    gen = torch.Generator().manual_seed(derive_seed("bench_metrics", "subset", *tag, len(x)))
    return x[torch.randperm(len(x), generator=gen)[:n]]


def tensor_digest(x: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (a content hash of data)."""
    t = x.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def generated(ctx: Any, num_samples: int | None) -> torch.Tensor:
    """The case's generated samples (the first ``num_samples``), or MetricSkipped if there are none."""
    if ctx.samples is None:
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
              reference_num_samples: int | None = None, log=None) -> RealSets:
    """Reference = ``reference_split`` (a fixed subset of ``reference_num_samples`` if given); floor
    sample = ``n`` rows of the other split. If the other split is smaller than ``n`` the floor uses
    all of it and says so in the log (its count is logged with the metric)."""
    if reference_split not in OTHER_SPLIT:
        raise ValueError(f"reference_split must be 'train' or 'test', got {reference_split!r}")
    floor_split = OTHER_SPLIT[reference_split]
    ref = fixed_subset(dataset.split(reference_split), reference_num_samples, "reference", reference_split)
    pool = dataset.split(floor_split)
    if len(pool) < n and log is not None:
        log(f"noise floor: the {floor_split} split has {len(pool)} < {n} samples; the floor uses all of them")
    floor = fixed_subset(pool, n, "floor", floor_split)
    out = RealSets(ref, floor, reference_split, floor_split)
    if hasattr(dataset, "labels"):  # the same subsets of the labels (same seeds, same lengths)
        out.reference_labels = fixed_subset(dataset.labels(reference_split), reference_num_samples, "reference",
                                            reference_split)
        out.floor_labels = fixed_subset(dataset.labels(floor_split), n, "floor", floor_split)
    return out


def flat64(x: torch.Tensor) -> torch.Tensor:
    """``(N, ...)`` -> ``(N, D)`` float64."""
    return x.detach().reshape(len(x), -1).to(torch.float64)


def prefixed(key: str | None, default: str) -> str:
    return key or default
