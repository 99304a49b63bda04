"""``spatin_unet``: the small UNet with SPATIN-style conditioning (MCVD, thesis section 7.2.4; Voleti et
al. 2022; diffusion-math.md section 6.2.2), ``f(x, t, cond)`` for (C, H, W) inputs.

The conditioning frames ``cond`` (concatenated along channels) are NOT part of the input. They go through
a small convolutional embedding e(cond) (two 3x3 convolutions with SiLU), resized to each block's
resolution; every group norm of the network is then modulated per pixel, as in SPADE (Park et al. 2019):

    SPATIN(h) = GroupNorm(h) * (1 + gamma(e)) + beta(e),

gamma and beta being 3x3 convolutions of e with zero initial weights (so an untrained network is the
plain UNet). The noisy frames are the direct input. The MCVD paper's network is far larger (multi-head
attention, 64-256 channels, 4 resolutions; docs/video.md); this one has the structure of
:class:`bench_nets.unet.SmallUNet` (two levels of residual blocks) and is sized for a CPU.
"""
from __future__ import annotations

from typing import Annotated, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .embedding import TimeEmbedding
from .unet import _groups


class SpatialNorm(nn.Module):
    """GroupNorm(h) * (1 + gamma(e)) + beta(e), gamma and beta per pixel from the embedding e."""

    def __init__(self, ch: int, emb_ch: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch, affine=False)
        self.gamma_beta = nn.Conv2d(emb_ch, 2 * ch, 3, padding=1)
        nn.init.zeros_(self.gamma_beta.weight)
        nn.init.zeros_(self.gamma_beta.bias)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        if e.shape[-2:] != h.shape[-2:]:
            e = F.interpolate(e, size=h.shape[-2:], mode="bilinear", align_corners=False)
        gamma, beta = self.gamma_beta(e).chunk(2, dim=1)
        return self.norm(h) * (1 + gamma) + beta


class SpatinBlock(nn.Module):
    """The residual block of SmallUNet with both group norms replaced by :class:`SpatialNorm`."""

    def __init__(self, cin: int, cout: int, tdim: int, emb_ch: int):
        super().__init__()
        self.n1 = SpatialNorm(cin, emb_ch)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(tdim, cout)
        self.n2 = SpatialNorm(cout, emb_ch)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x, e)))
        h = h + self.t(emb)[:, :, None, None]
        h = self.c2(F.silu(self.n2(h, e)))
        return h + self.skip(x)


class SpatinUNet(nn.Module):
    """``in_shape`` (C, H, W) of the noisy input, ``cond_channels`` of the conditioning (> 0)."""

    def __init__(self, in_shape: Sequence[int], cond_channels: Annotated[int, Field(gt=0)],
                 base: Annotated[int, Field(gt=0)] = 32, mults: Sequence[int] = (1, 2),
                 time_embed: Annotated[int, Field(gt=1)] = 64, cond_embed: Annotated[int, Field(gt=0)] = 32,
                 out_channels: int | None = None, zero_init: bool = True):
        super().__init__()
        c, h, w = in_shape
        if h % (2 ** (len(mults) - 1)) or w % (2 ** (len(mults) - 1)):
            raise ValueError(f"image size {h}x{w} is not divisible by 2^{len(mults) - 1}")
        self.in_shape = tuple(in_shape)
        tdim = base * 4
        self.time = TimeEmbedding(time_embed, tdim)
        self.cond_net = nn.Sequential(nn.Conv2d(cond_channels, cond_embed, 3, padding=1), nn.SiLU(),
                                      nn.Conv2d(cond_embed, cond_embed, 3, padding=1), nn.SiLU())
        self.inp = nn.Conv2d(c, base, 3, padding=1)
        chans = [base * m for m in mults]
        self.down = nn.ModuleList()
        prev = base
        for ch in chans:
            self.down.append(SpatinBlock(prev, ch, tdim, cond_embed))
            prev = ch
        self.mid = SpatinBlock(prev, prev, tdim, cond_embed)
        self.up = nn.ModuleList()
        for ch in reversed(chans):
            self.up.append(SpatinBlock(prev + ch, ch, tdim, cond_embed))
            prev = ch
        self.norm = SpatialNorm(prev, cond_embed)
        self.out = nn.Conv2d(prev, out_channels or c, 3, padding=1)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.time(t)
        e = self.cond_net(cond)
        h = self.inp(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb, e)
            skips.append(h)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, 2)
        h = self.mid(h, emb, e)
        for i, block in enumerate(self.up):
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], 1), emb, e)
        return self.out(F.silu(self.norm(h, e)))
