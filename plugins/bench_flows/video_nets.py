"""Per-frame encoder and decoder for the latent neural ODE (flows-math.md section 4.1).

"The encoder and decoder have inverted architectures with the same number of channels in their
respective orders" (thesis ch. 3): the encoder is stride-2 3x3 convolutions with widths
``channels`` and a linear map to ``out_dim``; the decoder mirrors it with transposed convolutions and
ends in a linear 3x3 conv (no tanh: a tanh saturated at the black background stalls training).
Its output is a mean in model space or a per-pixel logit, as the family's likelihood reads it. The
encoder takes any number of input channels, so several frames stacked as channels give one z_0.
``LatentDynamics`` is the latent ODE f(z, t): an MLP with t appended to every layer's input.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .nets import ODEMLP


class FrameEncoder(nn.Module):
    def __init__(self, in_channels: int, side: int, channels: Sequence[int], out_dim: int):
        super().__init__()
        layers, c = [], in_channels
        for width in channels:
            layers += [nn.Conv2d(c, width, 3, stride=2, padding=1), nn.SiLU()]
            c, side = width, (side + 1) // 2
        self.convs = nn.Sequential(*layers)
        self.head = nn.Linear(c * side * side, out_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, out_dim)."""
        return self.head(self.convs(frames).flatten(1))


class FrameDecoder(nn.Module):
    def __init__(self, out_channels: int, side: int, channels: Sequence[int], latent_dim: int):
        super().__init__()
        widths = list(channels)[::-1]
        self.start = side // 2 ** len(widths)
        if self.start * 2 ** len(widths) != side:
            raise ValueError(f"frame side {side} must be divisible by 2^{len(widths)}")
        self.first = widths[0]
        self.head = nn.Linear(latent_dim, widths[0] * self.start * self.start)
        layers = []
        for a, b in zip(widths, widths[1:] + [widths[-1]]):
            layers += [nn.SiLU(), nn.ConvTranspose2d(a, b, 4, stride=2, padding=1)]
        layers += [nn.SiLU(), nn.Conv2d(widths[-1], out_channels, 3, padding=1)]
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(N, latent_dim) -> (N, C, H, W), unbounded (a mean in model space [-1, 1], or logits)."""
        h = self.head(z).view(z.shape[0], self.first, self.start, self.start)
        return self.deconvs(h)


class LatentDynamics(nn.Module):
    """dz/dt = f(z, t): ``torchdiffeq`` signature ``forward(t, z)``."""

    def __init__(self, latent_dim: int, hidden: Sequence[int]):
        super().__init__()
        self.net = ODEMLP(latent_dim, hidden, activation="tanh", zero_last=False)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(t, z)
