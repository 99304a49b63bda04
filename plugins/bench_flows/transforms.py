"""Invertible pre-transforms with their log-determinants (flows-math.md sections 1.7, 1.8, 1.11).

Logit (section 1.8, FFJORD ``LogitTransform``): for model-space x in [-1, 1], u = (x + 1) / 2,
s = alpha + (1 - 2 alpha) u, v = log s - log(1 - s), and per dimension

    log |dv/dx| = log(1 - 2 alpha) - log s - log(1 - s) + log(1/2).

2x2 multi-resolution split (eq. 4.3.2 / 4.3.4, reconstructed matrices of section 1.7). Per 2x2 patch
(x1 = x[::2, ::2], x2 = x[::2, 1::2], x3 = x[1::2, ::2], x4 = x[1::2, 1::2]) and channel,

    (y1, y2, y3) = d * H (x1, x2, x3, x4),   x_bar = mean(x1..x4),
    H = [[1, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]],

with d = 1/2 (``haar``, log|det M^-1| = log(1/2) per patch) or d = 1/c, c = 2^(2/3)
(``unimodular``, det 1). In general log|det M^-1| = log(4 d^3) per patch and channel, so a level
contributes dim(x_{s+1}) log(4 d^3) (eq. 4.3.8 / 4.3.9). The inverse is x = H^T y / (4 d) + x_bar.
y = (y1, y2, y3) is stacked along channels (3C channels at half resolution).

Multi-resolution noise (section 1.11): unit-variance white noise at the reference side R splits into
independent parts with variances 4 d^2 (r/R)^2 for the details of a side-r image (c (r/R)^2 for the
unimodular map) and (r_S/R)^2 for the coarsest image of side r_S.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

Transform = Literal["haar", "unimodular"]
C_UNIMODULAR = 2.0 ** (2.0 / 3.0)


def detail_scale(transform: str) -> float:
    """d of the detail rows: 1/2 (Haar, eq. 4.3.2) or 1/c (unimodular, eq. 4.3.4)."""
    if transform == "haar":
        return 0.5
    if transform == "unimodular":
        return 1.0 / C_UNIMODULAR
    raise ValueError(f"unknown transform '{transform}'")


def patch_logdet(transform: str) -> float:
    """log |det M^-1| of one 2x2 patch: log(4 d^3)."""
    return math.log(4.0 * detail_scale(transform) ** 3)


def split2d(x: torch.Tensor, transform: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y (B, 3C, H/2, W/2), x_bar (B, C, H/2, W/2), log|det M^-1| per sample)."""
    d = detail_scale(transform)
    x1, x2, x3, x4 = x[..., ::2, ::2], x[..., ::2, 1::2], x[..., 1::2, ::2], x[..., 1::2, 1::2]
    y1 = d * (x1 + x2 - x3 - x4)
    y2 = d * (x1 - x2 + x3 - x4)
    y3 = d * (x1 - x2 - x3 + x4)
    xbar = (x1 + x2 + x3 + x4) / 4
    logdet = torch.full((x.shape[0],), xbar[0].numel() * patch_logdet(transform), dtype=x.dtype, device=x.device)
    return torch.cat([y1, y2, y3], dim=1), xbar, logdet


def combine2d(y: torch.Tensor, xbar: torch.Tensor, transform: str) -> torch.Tensor:
    """The inverse of ``split2d``: x = H^T y / (4 d) + x_bar on each 2x2 patch."""
    k = 1.0 / (4.0 * detail_scale(transform))
    y1, y2, y3 = y.chunk(3, dim=1)
    b, c, h, w = xbar.shape
    x = xbar.new_empty(b, c, 2 * h, 2 * w)
    x[..., ::2, ::2] = k * (y1 + y2 + y3) + xbar
    x[..., ::2, 1::2] = k * (y1 - y2 - y3) + xbar
    x[..., 1::2, ::2] = k * (-y1 + y2 - y3) + xbar
    x[..., 1::2, 1::2] = k * (-y1 - y2 + y3) + xbar
    return x


def decompose(x: torch.Tensor, levels: int, transform: str):
    """x -> ([y_1, ..., y_{S-1}] finest first, x_S, sum of log dets) with S = ``levels`` (eq. 4.3.1)."""
    details, logdet = [], torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for _ in range(levels - 1):
        y, x, ld = split2d(x, transform)
        details.append(y)
        logdet = logdet + ld
    return details, x, logdet


def compose(details: list[torch.Tensor], coarse: torch.Tensor, transform: str) -> torch.Tensor:
    """The inverse of ``decompose``: x_s = M(y_s, x_{s+1}) from s = S-1 down to 1 (eq. 4.3.16)."""
    x = coarse
    for y in reversed(details):
        x = combine2d(y, x, transform)
    return x


def pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """[x_1 = x, x_2, ..., x_S]: 2x2 means (section 1.7), the conditioning images."""
    out = [x]
    for _ in range(levels - 1):
        out.append(torch.nn.functional.avg_pool2d(out[-1], 2))
    return out


def multires_stds(side: int, levels: int, transform: str, reference: int) -> list[float]:
    """Base-noise std of each CNF, finest detail level first, coarsest image last (section 1.11)."""
    stds, r = [], side
    for _ in range(levels - 1):
        stds.append(math.sqrt(4 * detail_scale(transform) ** 2) * r / reference)
        r //= 2
    stds.append(r / reference)
    return stds


class Logit:
    """The logit pre-transform on model-space [-1, 1] data (section 1.8)."""

    def __init__(self, alpha: float):
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(v, log|dv/dx| summed per sample)."""
        a = self.alpha
        s = a + (1 - 2 * a) * (x + 1) / 2
        v = torch.log(s) - torch.log1p(-s)
        ld = math.log(1 - 2 * a) + math.log(0.5) - torch.log(s) - torch.log1p(-s)
        return v, ld.flatten(1).sum(1)

    def inverse(self, v: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(v)
        return 2 * (s - self.alpha) / (1 - 2 * self.alpha) - 1
