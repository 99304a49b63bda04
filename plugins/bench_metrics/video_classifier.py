"""A small 3-D CNN for moving digits, trained deterministically on CPU, used as a video feature space.

Input: uint8 videos ``(N, T, 3, H, W)`` (:func:`bench_metrics.video_extractors.to_uint8_video`); the
network averages the channels and maps ``u -> 2 u / 255 - 1``, giving ``(N, 1, T, H, W)``.
Architecture (``width`` w, ``feature_dim`` f; convolutions padded to keep their size)::

    conv1x3x3(1, w) ReLU maxpool(1, 2, 2) conv1x3x3(w, 2w) ReLU conv1x3x3(2w, 2w) ReLU maxpool(1, 2, 2)
    conv3x3x3(2w, 4w) ReLU adaptive-maxpool(2, 1, 1) flatten
    Linear(8 w, f) ReLU, divided by ``feature_scale``   -> features (penultimate layer, f-d)
    Linear(f, 10) (digit class), Linear(f, 8) (initial motion direction)   -> two heads

The per-frame (1x3x3) convolutions see the digit's shape, the space-time (3x3x3) one its motion; the
max over space finds them anywhere in the frame, and the two temporal cells (first and second half
of the clip) keep the order of events, so the features change when frames are shuffled.
``feature_scale`` is fixed after training so that the mean of |f|^2 / f over the training videos is 1.

Training: Adam on the sum of the two heads' cross-entropies, with target q = the uniform
distribution over the clip's labels (one label per digit; with one digit this is the usual
one-hot cross-entropy), fixed initialisation and batch order from ``seed`` (private generators),
single-threaded, so the same data and config give the same weights. Accuracy (per head): the
share of videos whose arg-max class is one of the clip's labels (chance: 1/10 and 1/8 with one digit).
"""
from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .digits_classifier import threads

ARCH_VERSION = 1
NUM_DIGITS_CLASSES, NUM_DIRECTIONS = 10, 8


class MovingDigitsCNN(nn.Module):
    def __init__(self, width: int = 8, feature_dim: int = 64):
        super().__init__()
        w = width
        frame = (1, 3, 3)  # per-frame (spatial) convolutions: the digit's shape
        self.body = nn.Sequential(
            nn.Conv3d(1, w, frame, padding=(0, 1, 1)), nn.ReLU(), nn.MaxPool3d((1, 2, 2)),
            nn.Conv3d(w, 2 * w, frame, padding=(0, 1, 1)), nn.ReLU(),
            nn.Conv3d(2 * w, 2 * w, frame, padding=(0, 1, 1)), nn.ReLU(), nn.MaxPool3d((1, 2, 2)),
            nn.Conv3d(2 * w, 4 * w, 3, padding=1), nn.ReLU(),  # space-time: the motion
            nn.AdaptiveMaxPool3d((2, 1, 1)), nn.Flatten(),  # anywhere in the frame, early / late half
            nn.Linear(8 * w, feature_dim), nn.ReLU())
        self.digit_head = nn.Linear(feature_dim, NUM_DIGITS_CLASSES)
        self.direction_head = nn.Linear(feature_dim, NUM_DIRECTIONS)
        self.register_buffer("feature_scale", torch.ones(()))

    @staticmethod
    def prepare(videos_u8: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, T, C, H, W)`` -> float ``(N, 1, T, H, W)`` in [-1, 1]."""
        x = videos_u8.to(torch.float32).mean(dim=2) / 255.0
        return (2 * x - 1)[:, None]

    def features(self, videos_u8: torch.Tensor) -> torch.Tensor:
        return self.body(self.prepare(videos_u8)) / self.feature_scale

    def forward(self, videos_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(self.prepare(videos_u8))
        return self.digit_head(h), self.direction_head(h)


def label_distribution(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """``(N, k)`` labels -> ``(N, classes)``: the uniform distribution over each row's labels."""
    q = torch.zeros(len(labels), classes).scatter_add_(1, labels.long(), torch.ones(labels.shape))
    return q / q.sum(1, keepdim=True)


def accuracy(model: MovingDigitsCNN, videos_u8: torch.Tensor, digits: torch.Tensor, directions: torch.Tensor,
             batch_size: int = 64) -> dict[str, float]:
    """Top-1 accuracies ``digit_accuracy`` and ``direction_accuracy`` (arg-max among the clip's labels)."""
    model.eval()
    hits = torch.zeros(2)
    with torch.no_grad(), threads(1):
        for lo in range(0, len(videos_u8), batch_size):
            sl = slice(lo, lo + batch_size)
            for j, (logits, labels) in enumerate(zip(model(videos_u8[sl]), (digits[sl], directions[sl]))):
                hits[j] += float((logits.argmax(1, keepdim=True) == labels).any(1).sum())
    n = max(len(videos_u8), 1)
    return {"digit_accuracy": float(hits[0]) / n, "direction_accuracy": float(hits[1]) / n}


def train(videos_u8: torch.Tensor, digits: torch.Tensor, directions: torch.Tensor, arch: dict[str, Any],
          cfg: dict[str, Any]) -> tuple[MovingDigitsCNN, dict]:
    """Train a :class:`MovingDigitsCNN` (``arch``: width, feature_dim) with ``cfg``: epochs,
    batch_size, lr, seed, single-threaded. Returns the model (eval mode) and a log dict."""
    with threads(1), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        model = MovingDigitsCNN(**arch)
        gen = torch.Generator().manual_seed(cfg["seed"] + 1)
        opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
        q_digit = label_distribution(digits, NUM_DIGITS_CLASSES)
        q_dir = label_distribution(directions, NUM_DIRECTIONS)
        start = time.perf_counter()
        model.train()
        for _ in range(cfg["epochs"]):
            order = torch.randperm(len(videos_u8), generator=gen)
            for lo in range(0, len(order), cfg["batch_size"]):
                idx = order[lo:lo + cfg["batch_size"]]
                digit_logits, dir_logits = model(videos_u8[idx])
                loss = F.cross_entropy(digit_logits, q_digit[idx]) + F.cross_entropy(dir_logits, q_dir[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            msq = torch.cat([model.body(model.prepare(videos_u8[lo:lo + 64])).pow(2).mean(1)
                             for lo in range(0, len(videos_u8), 64)]).mean()
            model.feature_scale.copy_(msq.sqrt().clamp_min(1e-12))
    return model, {"train_seconds": time.perf_counter() - start, "final_loss": float(loss.detach())}
