"""Dynamics networks f(v, t | c) for CNFs (flows-math.md sections 1.5 and 2.1-2.2).

- ``ODEMLP`` (vectors): ConcatLinear layers, the time t appended to every layer's input.
- ``ODEConvNet`` (images): the FFJORD/RNODE ODEnet, 3x3 ``ConcatConv2d`` layers with t as an extra
  constant input channel at every layer, softplus, widths (C_s + C_c) -> hidden... -> C_s, the
  conditioning image (C_c channels, MRCNF section 1.8) concatenated at the first layer only, the last
  layer zero-initialised (``zero_last``) so that f starts at 0. Its parameter count is the closed
  form of section 2.2: P = [(C_s+C_c+1) h 9 + h] + (n-1)[(h+1) h 9 + h] + [(h+1) C_s 9 + C_s].
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

ACTIVATIONS = {"softplus": nn.Softplus, "tanh": nn.Tanh, "elu": nn.ELU, "swish": nn.SiLU}


class ConcatLinear(nn.Module):
    """y = W [x, t] + b."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in + 1, dim_out)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = t.to(x).expand(x.shape[0], 1)
        return self.linear(torch.cat([x, tt], dim=1))


class ConcatConv2d(nn.Module):
    """y = conv([x, t 1]) with a constant time channel (FFJORD ``ConcatConv2d``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(c_in + 1, c_out, kernel, padding=kernel // 2)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = t.to(x).expand(x.shape[0], 1, *x.shape[2:])
        return self.conv(torch.cat([x, tt], dim=1))


class ODEMLP(nn.Module):
    """f(v, t | c) for vectors of dimension ``dim`` (conditioning vector of ``cond_dim`` optional)."""

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 64, 64), cond_dim: int = 0,
                 activation: str = "softplus", zero_last: bool = False):
        super().__init__()
        widths = [dim + cond_dim, *hidden, dim]
        self.layers = nn.ModuleList(ConcatLinear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.act = ACTIVATIONS[activation]()
        if zero_last:
            nn.init.zeros_(self.layers[-1].linear.weight)
            nn.init.zeros_(self.layers[-1].linear.bias)

    def forward(self, t: torch.Tensor, v: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = v if cond is None else torch.cat([v, cond], dim=1)
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h


class ODEConvNet(nn.Module):
    """f(v, t | c) for images (C_s channels) conditioned on an image of C_c channels (same H, W)."""

    def __init__(self, channels: int, hidden: Sequence[int] = (64, 64, 64), cond_channels: int = 0,
                 activation: str = "softplus", zero_last: bool = True):
        super().__init__()
        widths = [channels + cond_channels, *hidden, channels]
        self.layers = nn.ModuleList(ConcatConv2d(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.act = ACTIVATIONS[activation]()
        if zero_last:
            nn.init.zeros_(self.layers[-1].conv.weight)
            nn.init.zeros_(self.layers[-1].conv.bias)

    def forward(self, t: torch.Tensor, v: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = v if cond is None else torch.cat([v, cond], dim=1)
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h


def odeconv_param_count(channels: int, cond_channels: int, hidden: Sequence[int]) -> int:
    """Closed-form parameter count of ``ODEConvNet`` (flows-math.md section 2.2)."""
    widths = [channels + cond_channels, *hidden, channels]
    return sum((a + 1) * b * 9 + b for a, b in zip(widths[:-1], widths[1:]))


def build_dynamics(shape: tuple[int, ...], hidden: Sequence[int], cond_channels: int = 0,
                   activation: str = "softplus", zero_last: bool = True) -> nn.Module:
    """An ``ODEMLP`` for (D,) states, an ``ODEConvNet`` for (C, H, W) states."""
    if len(shape) == 1:
        return ODEMLP(shape[0], hidden, cond_channels, activation, zero_last)
    if len(shape) == 3:
        return ODEConvNet(shape[0], hidden, cond_channels, activation, zero_last)
    raise ValueError(f"no dynamics network for states of shape {shape}")
