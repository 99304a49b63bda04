"""Images from a local directory (PNG/JPEG/BMP, recursively), with class labels from subfolders.

``size``: an int resizes every image to ``size`` x ``size`` (bilinear), ``[H, W]`` to H x W, and null
keeps the files' own resolution (then every image must have the same one). 8-bit images, so L = 256
and model space ``x = 2 k / 255 - 1``. ``root`` must exist: the suite fails validation with the file
and line of ``root`` when it does not.

Labels: when the images lie in subfolders of ``root`` (``root/<class>/.../img.png``, as torchvision's
``ImageFolder``), the sorted names of those subfolders are the classes 0..K-1 (``labels(split)``,
``params["num_classes"]``, ``class_names``). Images directly in ``root`` then are an error; when every
image is directly in ``root``, the data have no labels.

Streaming: the images are decoded once, one at a time, into a uint8 level array ``(N, C, H, W)``
(``levels.npy``) in the store (kind ``decoded-images``), keyed by the folder, every file's relative
path, size and mtime, and the decoding parameters (``size``, ``channels``); later builds memory-map
that array and decode nothing, and a changed, added or removed file makes a new entry. ``rows(split)``
reads training batches from the map, so memory does not grow with the folder; ``split(split)``
converts the whole split to float32 on each call (metrics' reference sets). Built without a store
(no build context), the levels are decoded into memory and nothing is written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import numpy as np
import torch
from pydantic import DirectoryPath, Field

from bench.errors import UserError
from bench.protocols import DataInfo
from bench.store import content_key

from .common import LEVELS_8BIT, Labelled, levels_to_model, shuffle_split

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
Side = Annotated[int, Field(gt=0)]
CACHE_KIND = "decoded-images"
CACHE_FILE = "levels.npy"
DECODER_VERSION = 1  # part of the cache key: raise it when decode() changes what it produces


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


def decode(path: Path, channels: int, hw: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 levels ``(C, H, W)``: converted to L (greyscale) or RGB, then resized
    (bilinear) to ``hw`` unless it is None."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if channels == 1 else "RGB")
        k = np.asarray(im if hw is None else im.resize((hw[1], hw[0]), Image.BILINEAR))
    return k[None] if channels == 1 else k.transpose(2, 0, 1)


def decode_all(files: list[Path], channels: int, hw: tuple[int, int] | None, allocate, progress) -> np.ndarray:
    """Decode ``files`` one at a time into ``allocate(shape)`` (an array of that uint8 shape: in memory
    or a file map); the shape comes from the first image. Images of differing sizes are an error."""
    first = decode(files[0], channels, hw)
    out = allocate((len(files), *first.shape))
    out[0] = first
    for i, f in enumerate(progress(files[1:], desc="decode image_folder", total=len(files) - 1), start=1):
        k = decode(f, channels, hw)
        if k.shape != first.shape:
            raise UserError(f"image_folder: {f} is {k.shape[2]}x{k.shape[1]} but "
                            f"{files[0]} is {first.shape[2]}x{first.shape[1]}; set size to resize")
        out[i] = k
    return out


def cache_key(root: Path, files: list[Path], channels: int, hw: tuple[int, int] | None) -> str:
    """What the decoded array is a function of: the folder, each file's path, size and mtime, and
    the decoding parameters."""
    stats = []
    for f in files:
        st = f.stat()
        stats.append((str(f.relative_to(root)), st.st_size, st.st_mtime_ns))
    return content_key(CACHE_KIND, DECODER_VERSION, str(root.resolve()), stats, channels, hw)


def cached_levels(store, root: Path, files: list[Path], channels: int, hw, progress, log) -> np.memmap:
    """The decoded levels of ``files`` as a read-only memory map of the store entry, decoding them
    into the store first if no entry has this key."""
    key = cache_key(root, files, channels, hw)
    with store.lock(CACHE_KIND, key):
        entry = store.get(CACHE_KIND, key)
        if entry is None:
            def write(d: Path) -> None:
                out = decode_all(files, channels, hw, lambda shape: np.lib.format.open_memmap(
                    d / CACHE_FILE, mode="w+", dtype=np.uint8, shape=shape), progress)
                out.flush()
                del out

            entry = store.put(CACHE_KIND, key, write, meta={"root": str(root), "files": len(files),
                                                             "channels": channels, "size": hw})
            log(f"image_folder: decoded {len(files)} images of {root} into the store ({key[:12]})")
        else:
            log(f"image_folder: reusing the decoded images of {root} from the store ({key[:12]})")
    return np.load(entry / CACHE_FILE, mmap_mode="r")


class Rows:
    """Rows ``index`` of a uint8 level array ``(N, C, H, W)`` as model-space batches: ``rows[i]``
    (i an int64 tensor or array of positions in ``index``) is ``2 k / 255 - 1`` in float32 for the
    levels k of those rows only. A memory-mapped array is pickled as its file name (DataLoader
    workers open their own map) and reopened on first use."""

    def __init__(self, levels: np.ndarray, index: np.ndarray):
        self.levels, self.index = levels, np.asarray(index)
        self.filename = getattr(levels, "filename", None)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i) -> torch.Tensor:
        if self.levels is None:
            self.levels = np.load(self.filename, mmap_mode="r")
        rows = self.index[np.asarray(i)]
        return levels_to_model(torch.from_numpy(np.ascontiguousarray(self.levels[rows])))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "levels": None} if self.filename else dict(self.__dict__)


class ImageFolder(Labelled):
    def __init__(self, root: DirectoryPath, size: Optional[Union[Side, tuple[Side, Side]]] = 32,
                 channels: Literal[1, 3] = 3, test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1,
                 data_seed: int = 0, context=None):
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES)
        if len(files) < 2:
            raise UserError(f"image_folder: found {len(files)} image(s) under {root}; need at least 2")
        hw = (size, size) if isinstance(size, int) else None if size is None else tuple(size)
        classes, params = class_of(files, root), {}
        store = getattr(context, "store", None)
        if store is None:
            levels = decode_all(files, channels, hw, lambda shape: np.empty(shape, np.uint8), lambda it, **_: it)
        else:
            levels = cached_levels(store, root, files, channels, hw, context.progress, context.log)
        idx = shuffle_split(len(files), test_fraction, "folder", data_seed)
        self._rows = {s: Rows(levels, i) for s, i in idx.items()}
        self.class_names = classes[0] if classes else []
        if classes:
            y = torch.tensor(classes[1], dtype=torch.int64)
            self._labels = {s: y[i] for s, i in idx.items()}
            params["num_classes"] = len(classes[0])
        self.info = DataInfo(name=f"image_folder:{root.name}", shape=tuple(int(s) for s in levels.shape[1:]),
                             modality="image", levels=LEVELS_8BIT, value_range=(-1.0, 1.0), params=params)

    def rows(self, name: str) -> Rows:
        """The split as batches read from the level array (the trainer's streaming path)."""
        return self._rows[name]

    def split(self, name: str) -> torch.Tensor:
        rows = self._rows[name]
        return rows[np.arange(len(rows))]
