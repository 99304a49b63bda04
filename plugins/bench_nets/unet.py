"""The built-in ``unet`` network: a small CPU-sized UNet, or the DDPM UNet by configuration.

:func:`unet` (the registered factory) picks the layout by ``config``:

- ``small`` (default): :class:`SmallUNet`, for (C, H, W) images with H = W in {8, 16, 32}. Two
  resolution levels by default (``mults=(1, 2)``): one residual block per level with GroupNorm and
  SiLU, the time embedding added in every block, average-pool down, nearest up, skip connections by
  concatenation; with ``num_classes`` a label embedding (K + 1 rows, row K the null class) is added to
the time embedding. 368,641 parameters at ``base=32`` on 8x8 grey images: sized for a 2-core CPU.
- ``ddpm_cifar10``: :class:`bench_nets.ddpm_unet.DDPMUNet` (Ho et al. 2020, appendix B) preset to the
  DDPM CIFAR-10 network (base 128, mults (1, 2, 2, 2), 2 residual blocks per level, attention at
  16x16, dropout 0.1; its parameter count is in that module's docstring). The knobs of the DDPM / NCSN++ CIFAR configurations
  (``base``, ``mults``, ``num_res_blocks``, ``attn_resolutions``, ``dropout``, ``num_classes``) override
  the preset when given: e.g. ``mults: [1, 2, 3, 4]`` and ``attn_resolutions: [16, 8]`` at 64x64, or
  a tiny ``base`` for tests.
"""
from __future__ import annotations

from typing import Annotated, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from bench.errors import UserError

from .ddpm_unet import DDPMUNet
from .embedding import LabelEmbedding, TimeEmbedding, label_term

CONFIGS = ("small", "ddpm_cifar10")
DDPM_ONLY = ("num_res_blocks", "attn_resolutions", "dropout")


def _groups(ch: int) -> int:
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int):
        super().__init__()
        self.n1 = nn.GroupNorm(_groups(cin), cin)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(tdim, cout)
        self.n2 = nn.GroupNorm(_groups(cout), cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x)))
        h = h + self.t(emb)[:, :, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return h + self.skip(x)


class SmallUNet(nn.Module):
    def __init__(self, in_shape: Sequence[int], base: Annotated[int, Field(gt=0)] = 32,
                 mults: Sequence[int] = (1, 2), time_embed: Annotated[int, Field(gt=1)] = 64,
                 out_channels: int | None = None, cond_channels: int = 0, zero_init: bool = True,
                 num_classes: int | None = None):
        super().__init__()
        c, h, w = in_shape
        if h % (2 ** (len(mults) - 1)) or w % (2 ** (len(mults) - 1)):
            raise ValueError(f"image size {h}x{w} is not divisible by 2^{len(mults) - 1}")
        self.in_shape = tuple(in_shape)
        tdim = base * 4
        self.time = TimeEmbedding(time_embed, tdim)
        self.num_classes = num_classes
        self.label = LabelEmbedding(num_classes, tdim) if num_classes else None
        self.inp = nn.Conv2d(c + cond_channels, base, 3, padding=1)
        chans = [base * m for m in mults]
        self.down = nn.ModuleList()
        prev = base
        for ch in chans:
            self.down.append(ResBlock(prev, ch, tdim))
            prev = ch
        self.mid = ResBlock(prev, prev, tdim)
        self.up = nn.ModuleList()
        for ch in reversed(chans):
            self.up.append(ResBlock(prev + ch, ch, tdim))
            prev = ch
        self.norm = nn.GroupNorm(_groups(prev), prev)
        self.out = nn.Conv2d(prev, out_channels or c, 3, padding=1)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.time(t) + label_term(self.label, y, x.shape[0], x.device)
        h = self.inp(torch.cat([x, cond], 1) if cond is not None else x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.down) - 1:
                h = F.avg_pool2d(h, 2)
        h = self.mid(h, emb)
        for i, block in enumerate(self.up):
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], 1), emb)
        return self.out(F.silu(self.norm(h)))


def unet(in_shape: Sequence[int], config: Literal["small", "ddpm_cifar10"] = "small",
         base: Annotated[int, Field(gt=0)] | None = None, mults: Sequence[Annotated[int, Field(gt=0)]] | None = None,
         num_res_blocks: Annotated[int, Field(ge=1)] | None = None,
         attn_resolutions: Sequence[Annotated[int, Field(gt=0)]] | None = None,
         dropout: Annotated[float, Field(ge=0, lt=1)] | None = None,
         num_classes: Annotated[int, Field(ge=1)] | None = None,
         time_embed: Annotated[int, Field(gt=1)] = 64, out_channels: int | None = None, cond_channels: int = 0,
         zero_init: bool = True) -> nn.Module:
    """Build the UNet named by ``config`` (module docstring); knobs left ``None`` keep the layout's
    defaults (:class:`SmallUNet`'s, or :class:`DDPMUNet`'s, which are the CIFAR-10 configuration).
    ``time_embed`` is the small layout's sinusoidal width (the DDPM layout uses ``base``)."""
    if config not in CONFIGS:  # also checked here: nested specs reach the factory unvalidated
        raise UserError(f"unet: unknown config '{config}' (known: {', '.join(CONFIGS)})")
    given = {"base": base, "mults": mults, "num_res_blocks": num_res_blocks, "attn_resolutions": attn_resolutions,
             "dropout": dropout, "num_classes": num_classes}
    knobs = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in given.items() if v is not None}
    common = {"out_channels": out_channels, "cond_channels": cond_channels, "zero_init": zero_init}
    if config == "small":
        extra = [k for k in DDPM_ONLY if k in knobs]
        if extra:
            raise UserError(f"unet: {', '.join(extra)} need the DDPM layout: add config: ddpm_cifar10 "
                            "(and override its knobs)")
        return SmallUNet(in_shape, time_embed=time_embed, **knobs, **common)
    return DDPMUNet(in_shape, **knobs, **common)
