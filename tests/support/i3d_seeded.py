"""Seeded Inception-I3D weights and clips, shared by ``i3d_peer_reference.py`` (which ran the peer
network on them) and ``tests/test_i3d.py`` (which regenerates them, so only the outputs are stored).

The weights depend only on the (name, shape) list and the seed: the names are visited in sorted order
with one ``torch.Generator``. Convolutions are He-scaled normals (std sqrt(2 / fan_in)); batch norms
get scales 1 + 0.1 N(0, 1), shifts and running means 0.1 N(0, 1), running variances U(0.5, 1.5), so
the activations neither explode nor vanish through the 60 layers.
"""
from __future__ import annotations

import math

import torch

SEED = 20170522  # arXiv 1705.07750
CLIPS = {"square": (1, 3, 9, 224, 224), "odd": (1, 3, 17, 199, 201)}  # (N, C, T, H, W)


def seeded_state_dict(shapes: list[tuple[str, tuple[int, ...]]], seed: int = SEED) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in sorted(shapes):
        if name.endswith("num_batches_tracked"):
            out[name] = torch.tensor(0, dtype=torch.long)
        elif name.endswith("conv3d.weight"):
            out[name] = torch.randn(shape, generator=gen) * math.sqrt(2 / math.prod(shape[1:]))
        elif name.endswith("bn.weight"):
            out[name] = 1 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith(("bn.bias", "bn.running_mean", "conv3d.bias")):
            out[name] = 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("bn.running_var"):
            out[name] = 0.5 + torch.rand(shape, generator=gen)
        else:
            raise KeyError(f"no rule for parameter {name}")
    return out


def seeded_clip(name: str, seed: int = SEED) -> torch.Tensor:
    """Uniform [-1, 1] clip ``CLIPS[name]``, one generator per clip."""
    gen = torch.Generator().manual_seed(seed + sorted(CLIPS).index(name) + 1)
    return torch.rand(CLIPS[name], generator=gen) * 2 - 1
