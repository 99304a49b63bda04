"""Images from a local directory (PNG/JPEG/BMP, recursively), resized to ``size`` x ``size``.

8-bit images, so L = 256 and model space ``x = 2 k / 255 - 1``. ``root`` must exist: the suite fails
validation with the file and line of ``root`` when it does not.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import DirectoryPath, Field

from bench.errors import UserError
from bench.protocols import DataInfo
from bench.rng import derive_seed

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


class ImageFolder:
    def __init__(self, root: DirectoryPath, size: Annotated[int, Field(gt=0, le=256)] = 32,
                 channels: Literal[1, 3] = 3, test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1,
                 data_seed: int = 0):
        from PIL import Image

        files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in SUFFIXES)
        if len(files) < 2:
            raise UserError(f"image_folder: found {len(files)} image(s) under {root}; need at least 2")
        mode = "L" if channels == 1 else "RGB"
        arrays = []
        for f in files:
            with Image.open(f) as im:
                arrays.append(np.asarray(im.convert(mode).resize((size, size), Image.BILINEAR)))
        k = torch.tensor(np.stack(arrays), dtype=torch.float32)
        k = k[:, None] if channels == 1 else k.permute(0, 3, 1, 2)
        x = 2 * k / 255 - 1
        order = np.random.default_rng(derive_seed("folder", data_seed) % (2**32)).permutation(len(x))
        n_test = max(1, int(round(test_fraction * len(x))))
        self._splits = {"train": x[order[n_test:]].contiguous(), "test": x[order[:n_test]].contiguous()}
        self.info = DataInfo(name=f"image_folder:{Path(root).name}", shape=(channels, size, size),
                             modality="image", levels=256, value_range=(-1.0, 1.0))

    def split(self, name: str) -> torch.Tensor:
        return self._splits[name]
