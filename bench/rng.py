"""Per-sample random streams (as in EDM's ``generate.py``).

Sample i of a case draws all of its randomness from its own generator seeded by (case seed, i), so
the samples do not depend on the batch size or on how batches are split across workers.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts (stable across runs and machines)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class PerSampleRNG:
    """One ``torch.Generator`` per sample; draws are stacked along a new batch dimension."""

    def __init__(self, seeds: Sequence[int], device: str | torch.device = "cpu"):
        self.seeds = list(seeds)
        self.device = torch.device(device)
        self.generators = [torch.Generator(device=self.device).manual_seed(int(s)) for s in self.seeds]

    @classmethod
    def for_indices(cls, seed: int, indices: Sequence[int], stream: str = "sample",
                    device: str | torch.device = "cpu") -> "PerSampleRNG":
        return cls([derive_seed(seed, stream, i) for i in indices], device)

    @property
    def batch_size(self) -> int:
        return len(self.generators)

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal draws of shape ``(batch, *shape)``."""
        return torch.stack([torch.randn(shape, generator=g, dtype=dtype, device=self.device)
                            for g in self.generators])

    def rand(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform [0, 1) draws of shape ``(batch, *shape)``."""
        return torch.stack([torch.rand(shape, generator=g, dtype=dtype, device=self.device)
                            for g in self.generators])

    def rademacher(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """+-1 draws of shape ``(batch, *shape)`` (Hutchinson probes)."""
        return self.rand(*shape, dtype=dtype).lt(0.5).to(dtype) * 2 - 1

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        return torch.stack([torch.randint(high, shape, generator=g, device=self.device)
                            for g in self.generators])


class BatchRNG:
    """A single generator with the same interface, for training (where per-sample streams are not
    needed and would be slow)."""

    def __init__(self, seed: int, batch_size: int, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self.batch_size = batch_size

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn((self.batch_size, *shape), generator=self.generator, dtype=dtype, device=self.device)

    def rand(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.rand((self.batch_size, *shape), generator=self.generator, dtype=dtype, device=self.device)

    def rademacher(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.rand(*shape, dtype=dtype).lt(0.5).to(dtype) * 2 - 1

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        return torch.randint(high, (self.batch_size, *shape), generator=self.generator, device=self.device)

    def with_batch(self, batch_size: int) -> "BatchRNG":
        self.batch_size = batch_size
        return self
