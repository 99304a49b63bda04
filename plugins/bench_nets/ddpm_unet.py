"""The DDPM UNet of Ho et al. 2020 (appendix B), written from the paper's description.

A PixelCNN++-style UNet on Wide-ResNet blocks with group normalisation instead of weight
normalisation. With ``base`` channels ``C`` and multipliers ``mults`` there is one resolution level
per multiplier (32x32 down to 4x4 for CIFAR-10's ``(1, 2, 2, 2)``); each level has ``num_res_blocks``
residual blocks on the way down and ``num_res_blocks + 1`` on the way up, and a self-attention block
follows each residual block at the resolutions in ``attn_resolutions`` (16x16 for CIFAR-10). The
middle is residual block, attention, residual block. Down-sampling is a stride-2 3x3 convolution,
up-sampling nearest-neighbour x2 followed by a 3x3 convolution; every block output on the way down
(and the input convolution's) is concatenated into the matching block on the way up.

The noise level enters every residual block through the Transformer sinusoidal embedding
``emb(t)`` of width ``C`` followed by ``Linear(C, 4C) - SiLU - Linear(4C, 4C)``; a residual block is

    h = Conv3(SiLU(GN(x)));  h = h + Linear(SiLU(emb));  h = Conv3(Dropout(SiLU(GN(h))));  out = skip(x) + h

with ``skip`` a 1x1 convolution when the channel count changes. Attention is single-head dot-product
attention over the H*W positions, ``softmax(q^T k / sqrt(C)) v`` with 1x1-convolution projections,
added back to its input.

With ``num_classes = K`` a learned embedding of the label (K + 1 rows: row K is "no label", used
when ``forward`` gets no ``y``) is added to the time embedding.

The defaults are the CIFAR-10 configuration (``C = 128, mults = (1, 2, 2, 2), num_res_blocks = 2, attention at 16x16,
dropout 0.1``) has 35,746,307 parameters (Ho et al. report 35.7M).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .embedding import TimeEmbedding


def norm(ch: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, fewer for narrow test configs: at least 4 channels a group, since a
    one-channel group would normalise away the per-channel time and label offsets."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0 and (ch // g >= 4 or g == 1))
    return nn.GroupNorm(groups, ch)


class WideResBlock(nn.Module):
    """The residual block above, with the time (and label) embedding ``emb`` of width ``tdim``."""

    def __init__(self, cin: int, cout: int, tdim: int, dropout: float):
        super().__init__()
        self.n1 = norm(cin)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(tdim, cout)
        self.n2 = norm(cout)
        self.drop = nn.Dropout(dropout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x)))
        h = h + self.t(F.silu(emb))[:, :, None, None]
        h = self.c2(self.drop(F.silu(self.n2(h))))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over spatial positions, with a residual connection."""

    def __init__(self, ch: int):
        super().__init__()
        self.n = norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        z = self.n(x)
        q, k, v = (m(z).flatten(2) for m in (self.q, self.k, self.v))  # (B, C, HW)
        att = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / c ** 0.5, dim=-1)
        out = torch.einsum("bij,bcj->bci", att, v).reshape(b, c, h, w)
        return x + self.proj(out)


class Down(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Up(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """The residual blocks (each optionally followed by attention) of one resolution level."""

    def __init__(self, cins: Sequence[int], cout: int, tdim: int, dropout: float, attention: bool):
        super().__init__()
        self.res = nn.ModuleList(WideResBlock(c, cout, tdim, dropout) for c in cins)
        self.attn = nn.ModuleList(SelfAttention(cout) for _ in cins) if attention else None


class DDPMUNet(nn.Module):
    """``f(x, t[, cond], y=None)`` for (C, H, W) images, H and W divisible by 2^(len(mults) - 1)."""

    def __init__(self, in_shape: Sequence[int], base: int = 128, mults: Sequence[int] = (1, 2, 2, 2),
                 num_res_blocks: int = 2, attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1,
                 num_classes: int | None = None, out_channels: int | None = None, cond_channels: int = 0,
                 zero_init: bool = True):
        super().__init__()
        c, h, w = in_shape
        down = 2 ** (len(mults) - 1)
        if h % down or w % down:
            raise ValueError(f"image size {h}x{w} is not divisible by 2^{len(mults) - 1}")
        self.in_shape = tuple(in_shape)
        self.num_classes = num_classes
        tdim = 4 * base
        self.time = TimeEmbedding(base, tdim)
        self.label = nn.Embedding(num_classes + 1, tdim) if num_classes else None
        self.inp = nn.Conv2d(c + cond_channels, base, 3, padding=1)
        attn = {int(r) for r in attn_resolutions}
        skip_ch, prev, res = [base], base, h
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for i, m in enumerate(mults):
            cins = [prev] + [base * m] * (num_res_blocks - 1)
            self.down.append(Level(cins, base * m, tdim, dropout, res in attn))
            prev = base * m
            skip_ch += [prev] * num_res_blocks
            if i < len(mults) - 1:
                self.downsample.append(Down(prev))
                skip_ch.append(prev)
                res //= 2
        self.mid1 = WideResBlock(prev, prev, tdim, dropout)
        self.mid_attn = SelfAttention(prev)
        self.mid2 = WideResBlock(prev, prev, tdim, dropout)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, m in reversed(list(enumerate(mults))):
            cins = []
            for _ in range(num_res_blocks + 1):
                cins.append(prev + skip_ch.pop())
                prev = base * m
            self.up.append(Level(cins, prev, tdim, dropout, res in attn))
            if i > 0:
                self.upsample.append(Up(prev))
                res *= 2
        self.norm = norm(prev)
        self.out = nn.Conv2d(prev, out_channels or c, 3, padding=1)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def _level(self, level: Level, h: torch.Tensor, emb: torch.Tensor, skips: list | None,
               outs: list | None) -> torch.Tensor:
        for j, block in enumerate(level.res):
            h = block(torch.cat([h, skips.pop()], 1) if skips is not None else h, emb)
            if level.attn is not None:
                h = level.attn[j](h)
            if outs is not None:
                outs.append(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.time(t)
        if self.label is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label(y.long())
        elif y is not None:
            raise ValueError("this network has no class embedding: build it with num_classes to pass labels y")
        h = self.inp(torch.cat([x, cond], 1) if cond is not None else x)
        skips = [h]
        for i, level in enumerate(self.down):
            h = self._level(level, h, emb, None, skips)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for i, level in enumerate(self.up):
            h = self._level(level, h, emb, skips, None)
            if i < len(self.upsample):
                h = self.upsample[i](h)
        return self.out(F.silu(self.norm(h)))
