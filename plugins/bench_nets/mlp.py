"""An MLP ``f(x, t)`` for vector data: ``x`` (B, D) and a time/noise-level input ``t`` (B,).

Each hidden layer receives the time embedding additively (h <- act(W h + b + E t)). The output has
the input's shape unless ``out_dim`` is given. The last layer starts at zero so an untrained
epsilon- or score-network predicts 0 (a common stabiliser). With ``num_classes = K`` a learned label
embedding (:class:`bench_nets.embedding.LabelEmbedding`, row K the null class) is added to the time
embedding; ``forward(x, t, y=labels)``.
"""
from __future__ import annotations

from typing import Annotated, Sequence

import torch
from pydantic import Field
from torch import nn

from bench.types import OmitAtDefault

from .embedding import LabelEmbedding, TimeEmbedding, label_term


class TimeMLP(nn.Module):
    def __init__(self, in_shape: Sequence[int], hidden: Annotated[int, Field(gt=0)] = 256,
                 layers: Annotated[int, Field(ge=1, le=16)] = 3, time_embed: Annotated[int, Field(gt=1)] = 64,
                 out_dim: int | None = None, cond_dim: int = 0, zero_init: bool = True,
                 num_classes: Annotated[int, Field(ge=1), OmitAtDefault()] | None = None):
        super().__init__()
        self.in_shape = tuple(in_shape)
        d = 1
        for s in self.in_shape:
            d *= s
        self.dim = d
        self.out_dim = out_dim or d
        self.time = TimeEmbedding(time_embed, hidden)
        self.num_classes = num_classes
        self.label = LabelEmbedding(num_classes, hidden) if num_classes else None
        self.inp = nn.Linear(d + cond_dim, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 1))
        self.act = nn.SiLU()
        self.out = nn.Linear(hidden, self.out_dim)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        h = x.reshape(b, -1)
        if cond is not None:
            h = torch.cat([h, cond.reshape(b, -1)], 1)
        if t.dim() == 0:
            t = t.expand(b)
        emb = self.time(t) + label_term(self.label, y, b, x.device)
        h = self.act(self.inp(h) + emb)
        for layer in self.hidden:
            h = self.act(layer(h) + emb)
        out = self.out(h)
        return out.reshape(b, *self.in_shape) if self.out_dim == self.dim else out
