"""Images from a local directory (PNG/JPEG/BMP, recursively), with class labels from subfolders.

``size``: an int resizes every image to ``size`` x ``size`` (bilinear), ``[H, W]`` to H x W, and null
keeps the files' own resolution (then every image must have the same one). 8-bit images, so L = 256
and model space ``x = 2 k / 255 - 1``. ``root`` must exist: the suite fails validation with the file
and line of ``root`` when it does not.

Labels: when the images lie in subfolders of ``root`` (``root/<class>/.../img.png``, as torchvision's
``ImageFolder``), the sorted names of those subfolders are the classes 0..K-1 (``labels(split)``,
``params["num_classes"]``, ``class_names``). Images directly in ``root`` then are an error; when every
image is directly in ``root``, the data have no labels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import numpy as np
import torch
from pydantic import DirectoryPath, Field

from bench.errors import UserError
from bench.protocols import DataInfo

from .common import LEVELS_8BIT, Labelled, levels_to_model, shuffle_split

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
Side = Annotated[int, Field(gt=0)]


def class_of(files: list[Path], root: Path) -> tuple[list[str], list[int]] | None:
    """(class names, class index per file) from the first folder under ``root``; None if unlabelled."""
    top = [f.relative_to(root).parts for f in files]
    loose = [f for f, parts in zip(files, top) if len(parts) == 1]
    if len(loose) == len(files):
        return None
    if loose:
        raise UserError(f"image_folder: {len(loose)} image(s) directly in {root} (e.g. {loose[0].name}) "
                        f"and others in class subfolders; put every image in a class subfolder")
    names = sorted({parts[0] for parts in top})
    index = {n: i for i, n in enumerate(names)}
    return names, [index[parts[0]] for parts in top]


class ImageFolder(Labelled):
    def __init__(self, root: DirectoryPath, size: Optional[Union[Side, tuple[Side, Side]]] = 32,
                 channels: Literal[1, 3] = 3, test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1,
                 data_seed: int = 0):
        from PIL import Image

        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES)
        if len(files) < 2:
            raise UserError(f"image_folder: found {len(files)} image(s) under {root}; need at least 2")
        mode = "L" if channels == 1 else "RGB"
        hw = (size, size) if isinstance(size, int) else None if size is None else tuple(size)
        arrays = []
        for f in files:
            with Image.open(f) as im:
                im = im.convert(mode)
                arrays.append(np.asarray(im if hw is None else im.resize((hw[1], hw[0]), Image.BILINEAR)))
                if arrays[-1].shape[:2] != arrays[0].shape[:2]:
                    raise UserError(f"image_folder: {f} is {arrays[-1].shape[1]}x{arrays[-1].shape[0]} but "
                                    f"{files[0]} is {arrays[0].shape[1]}x{arrays[0].shape[0]}; set size to resize")
        k = torch.from_numpy(np.stack(arrays))
        k = k[:, None] if channels == 1 else k.permute(0, 3, 1, 2)
        x = levels_to_model(k)
        idx = shuffle_split(len(x), test_fraction, "folder", data_seed)
        self._splits = {s: x[i].contiguous() for s, i in idx.items()}
        classes, params = class_of(files, root), {}
        self.class_names = classes[0] if classes else []
        if classes:
            y = torch.tensor(classes[1], dtype=torch.int64)
            self._labels = {s: y[i] for s, i in idx.items()}
            params["num_classes"] = len(classes[0])
        self.info = DataInfo(name=f"image_folder:{root.name}", shape=tuple(int(s) for s in x.shape[1:]),
                             modality="image", levels=LEVELS_8BIT, value_range=(-1.0, 1.0), params=params)

    def split(self, name: str) -> torch.Tensor:
        return self._splits[name]
