"""Sinusoidal embedding of a scalar noise-level input (Vaswani et al. 2017; Ho et al. 2020).

``emb(t)_i = sin(t * w_i)`` and ``cos(t * w_i)`` with ``w_i = max_period^(-i / (d/2))``, i < d/2.
Suited to inputs in roughly [0, 1000] (a timestep index, 1000 * continuous time, or a scaled log sigma).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


class LabelEmbedding(nn.Module):
    """A learned vector per class, K + 1 rows: row K is the null class ("no label"), which a network
    uses when it gets no labels ``y`` and which classifier-free guidance trains by label dropout
    (Ho & Salimans 2022, section 3.2). Its output is added to the time embedding."""

    def __init__(self, num_classes: int, out_dim: int):
        super().__init__()
        self.num_classes = int(num_classes)
        self.table = nn.Embedding(self.num_classes + 1, out_dim)

    def forward(self, y: torch.Tensor | None, batch: int, device=None) -> torch.Tensor:
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        return self.table(y.long())


def label_term(label: "LabelEmbedding | None", y: torch.Tensor | None, batch: int, device=None):
    """The label embedding to add to the time embedding (0 for a network without one; passing labels
    to such a network is an error)."""
    if label is None:
        if y is not None:
            raise ValueError("this network has no class embedding: build it with num_classes to pass labels y")
        return 0.0
    return label(y, batch, device)


class TimeEmbedding(nn.Module):
    """Sinusoidal features followed by a two-layer MLP."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(1)
        return self.mlp(sinusoidal(t.reshape(-1), self.dim))
