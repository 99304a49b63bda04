"""A small CNN for the sklearn digits, trained deterministically on CPU, used as a feature space.

Input: uint8 RGB images ``(N, 3, H, W)`` (what torch-fidelity feeds every extractor); the network
averages the channels, scales to [0, 1], resizes to its training size ``S`` (bilinear, antialiased)
and maps ``v -> 2 v - 1``. Architecture (``width`` w, ``feature_dim`` f)::

    conv3x3(1, w) ReLU maxpool2 conv3x3(w, 2w) ReLU maxpool2 adaptive-avgpool(2x2) flatten
    Linear(8w, f) ReLU, divided by ``feature_scale``  -> features (penultimate layer, f-d)
    Linear(f, classes)                                 -> logits

``feature_scale`` is fixed after training so that the mean of |f|^2 / f over the training images is
1 (a unit feature scale keeps KID's cubic kernel (a.b/d + 1)^3 in a sane range).

Training: Adam on the cross-entropy, fixed initialisation and batch order from ``seed`` (a private
generator, the global RNG is untouched), so the same data and config give the same weights.
"""
from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.device import torch_threads

ARCH_VERSION = 2


class DigitsCNN(nn.Module):
    def __init__(self, size: int, width: int = 16, feature_dim: int = 64, num_classes: int = 10):
        super().__init__()
        self.size = size
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(8 * w, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)
        self.register_buffer("feature_scale", torch.ones(()))

    def prepare(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, C, H, W)`` -> float ``(N, 1, S, S)`` in [-1, 1]."""
        x = images_u8.to(torch.float32).mean(dim=1, keepdim=True) / 255.0
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return 2 * x - 1

    def features(self, images_u8: torch.Tensor) -> torch.Tensor:
        return self.body(self.prepare(images_u8)) / self.feature_scale

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images_u8) * self.feature_scale)


#: torch threads for a block: small convolutions are far faster single-threaded, above all on a loaded
#: machine, and one thread makes the result independent of the machine's thread count
threads = torch_threads


def accuracy(model: DigitsCNN, images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    model.eval()
    correct = 0
    with torch.no_grad(), threads(1):
        for lo in range(0, len(images_u8), batch_size):
            pred = model(images_u8[lo:lo + batch_size]).argmax(1)
            correct += int((pred == labels[lo:lo + batch_size]).sum())
    return correct / max(len(images_u8), 1)


def train(images_u8: torch.Tensor, labels: torch.Tensor, arch: dict[str, Any], cfg: dict[str, Any]) -> tuple[DigitsCNN, dict]:
    """Train a :class:`DigitsCNN` (``arch``: size, width, feature_dim, num_classes) with ``cfg``:
    epochs, batch_size, lr, seed, single-threaded. Returns the model (eval mode) and a log dict."""
    with threads(1):
        return _train(images_u8, labels, arch, cfg)


def _train(images_u8, labels, arch, cfg):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        model = DigitsCNN(**arch)
    gen = torch.Generator().manual_seed(cfg["seed"] + 1)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    labels = labels.long()
    start = time.perf_counter()
    model.train()
    for _ in range(cfg["epochs"]):
        order = torch.randperm(len(images_u8), generator=gen)
        for lo in range(0, len(order), cfg["batch_size"]):
            idx = order[lo:lo + cfg["batch_size"]]
            loss = F.cross_entropy(model(images_u8[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        msq = torch.cat([model.body(model.prepare(images_u8[lo:lo + 512])).pow(2).mean(1)
                         for lo in range(0, len(images_u8), 512)]).mean()
        model.feature_scale.copy_(msq.sqrt().clamp_min(1e-12))
    return model, {"train_seconds": time.perf_counter() - start, "final_loss": float(loss.detach())}
