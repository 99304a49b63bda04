"""``moving_digits``: Moving-MNIST-style videos made deterministically from sklearn's bundled digits.

Each sequence has ``frames`` (default 20: 10 context + 10 to predict) frames of size ``size`` x
``size`` (default 32) with ``num_digits`` (1 or 2) digits of ``digit_size`` pixels (the 8x8 sklearn
digits, bilinearly upsampled) moving in straight lines and bouncing off the walls: a position p in
[0, size - digit_size] moves by a velocity v each frame, and when p + v leaves that interval the
velocity component flips (p' = reflection of p + v into the interval), so every digit stays fully
inside the frame. Two digits are combined with a pixel-wise max (as in Moving MNIST). Frames are
quantised to 8 bits (L = 256) and returned in model space x = 2k/255 - 1 with shape (T, 1, H, W).
Train and test sequences use disjoint sets of digit images; everything derives from ``data_seed``.

Labels per sequence and digit (:meth:`MovingDigits.digit_labels`, :meth:`MovingDigits.direction_labels`):
the digit's class (0-9, sklearn's target) and its initial motion direction, the sign pair
(sign v_row, sign v_col) of its first velocity numbered ``DIRECTIONS.index`` (8 classes: v != 0).
"""
from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from bench.protocols import DataInfo
from bench.rng import derive_seed


#: the 8 motion directions (sign of the row velocity, sign of the column velocity); index = class
DIRECTIONS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def direction_class(velocity: np.ndarray) -> int:
    """The :data:`DIRECTIONS` class of a nonzero integer velocity (row, col)."""
    return DIRECTIONS.index((int(np.sign(velocity[0])), int(np.sign(velocity[1]))))


def digit_sprites(digit_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """sklearn digits as [0, 1] sprites of ``digit_size`` pixels, and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    unit = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0
    if digit_size != 8:
        unit = F.interpolate(unit, size=(digit_size, digit_size), mode="bilinear", align_corners=False)
    return unit.clamp(0, 1)[:, 0], bunch.target


def bounce_track(start: np.ndarray, velocity: np.ndarray, frames: int, limit: int) -> np.ndarray:
    """Integer top-left positions (frames, 2) inside [0, limit], reflecting at the walls."""
    pos, vel = start.astype(np.int64).copy(), velocity.astype(np.int64).copy()
    out = np.empty((frames, 2), dtype=np.int64)
    for t in range(frames):
        out[t] = pos
        nxt = pos + vel
        for k in range(2):
            if nxt[k] < 0:
                nxt[k], vel[k] = -nxt[k], -vel[k]
            elif nxt[k] > limit:
                nxt[k], vel[k] = 2 * limit - nxt[k], -vel[k]
        pos = nxt
    return out


class MovingDigits:
    def __init__(self, num_digits: Literal[1, 2] = 1, frames: Annotated[int, Field(ge=2)] = 20,
                 size: Annotated[int, Field(ge=16)] = 32, digit_size: Annotated[int, Field(ge=8)] = 12,
                 n_train: Annotated[int, Field(gt=0)] = 1000, n_test: Annotated[int, Field(gt=0)] = 200,
                 max_speed: Annotated[int, Field(ge=1)] = 3, data_seed: int = 0):
        if digit_size > size:
            raise ValueError("digit_size must not exceed the frame size")
        sprites, labels = digit_sprites(digit_size)
        sprites = sprites.numpy()
        rng = np.random.default_rng(derive_seed("moving_digits", data_seed) % (2**32))
        order = rng.permutation(len(sprites))
        n_pool_test = len(order) // 5
        pools = {"test": order[:n_pool_test], "train": order[n_pool_test:]}
        self.limit = size - digit_size
        self.max_speed = max_speed
        self._splits, self._tracks, self._digits, self._directions = {}, {}, {}, {}
        for name, count in (("train", n_train), ("test", n_test)):
            videos = np.zeros((count, frames, 1, size, size), dtype=np.float32)
            tracks = np.zeros((count, num_digits, frames, 2), dtype=np.int64)
            digits = np.zeros((count, num_digits), dtype=np.int64)
            directions = np.zeros((count, num_digits), dtype=np.int64)
            for i in range(count):
                for j in range(num_digits):
                    which = int(rng.choice(pools[name]))
                    sprite, digits[i, j] = sprites[which], labels[which]
                    start = rng.integers(0, self.limit + 1, size=2)
                    velocity = rng.integers(-max_speed, max_speed + 1, size=2)
                    while not velocity.any():
                        velocity = rng.integers(-max_speed, max_speed + 1, size=2)
                    directions[i, j] = direction_class(velocity)
                    track = bounce_track(start, velocity, frames, self.limit)
                    tracks[i, j] = track
                    for t, (r, c) in enumerate(track):
                        window = videos[i, t, 0, r:r + digit_size, c:c + digit_size]
                        np.maximum(window, sprite, out=window)
            k = torch.round(torch.from_numpy(videos) * 255)
            self._splits[name] = (2 * k / 255 - 1).contiguous()
            self._tracks[name] = tracks
            self._digits[name], self._directions[name] = torch.from_numpy(digits), torch.from_numpy(directions)
        self.info = DataInfo(name=f"moving_digits{num_digits}", shape=(frames, 1, size, size), modality="video",
                             levels=256, value_range=(-1.0, 1.0),
                             params={"num_digits": num_digits, "digit_size": digit_size, "context_frames": frames // 2})

    def split(self, name: str) -> torch.Tensor:
        return self._splits[name]

    def tracks(self, name: str) -> np.ndarray:
        """Top-left digit positions (N, num_digits, T, 2) as (row, col)."""
        return self._tracks[name]

    def digit_labels(self, name: str) -> torch.Tensor:
        """Digit classes (N, num_digits), int64."""
        return self._digits[name]

    def direction_labels(self, name: str) -> torch.Tensor:
        """Initial motion direction classes (N, num_digits) (:data:`DIRECTIONS`), int64."""
        return self._directions[name]
