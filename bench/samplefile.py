"""Generated samples on disk: ``samples.npz``, written chunk by chunk while a case samples, and read
back chunk by chunk to re-measure a case without sampling again (``eval.save_samples`` /
``eval.samples_from``, docs/metrics.md "Saved samples").

The file is a standard ``.npz`` (``numpy.load`` reads it) whose members are appended one per chunk,
so neither writing nor reading holds more than one chunk:

- ``x_000000``, ``x_000001``, ...: the chunks in sample order; either float32 model-space samples,
  or (``uint8``, for quantised data with L <= 256 levels) the level indices
  ``k = round((clamp(x, -1, 1) + 1) / 2 (L - 1))``, read back as ``x = 2 k / (L - 1) - 1``. A
  metric that quantises to the data's levels (fid, kid, prc and is with ``quantize: true``) gets
  the same uint8 images, hence the same values, from either; the others see the quantised samples;
- ``meta``: a JSON string (``num_samples``, ``shape``, ``encoding``, ``levels``, ``case_id``,
  ``case_hash`` and the sampling numbers ``sample_time_s``, ``nfe``, ...), written last: a file
  without it is incomplete (the case stopped while sampling) and is refused.

The file is written as ``samples.npz.partial`` and renamed when complete.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .errors import UserError

FILE_NAME = "samples.npz"
FORMAT_VERSION = 1


def encoding_for(setting: bool | str, levels: int | None) -> str:
    """``uint8`` or ``float32`` for ``eval.save_samples`` (true: uint8 on quantised data with at most
    256 levels, else float32)."""
    if setting == "float32" or (setting is True and not (levels and levels <= 256)):
        return "float32"
    if not (levels and levels <= 256):
        raise UserError(f"eval.save_samples: uint8 needs quantised data with at most 256 levels (levels={levels})")
    return "uint8"


def encode(x: torch.Tensor, encoding: str, levels: int | None) -> np.ndarray:
    if encoding == "float32":
        return x.detach().to(torch.float32).cpu().numpy()
    k = torch.round((x.detach().to(torch.float64).clamp(-1, 1) + 1) / 2 * (levels - 1))
    return k.to(torch.uint8).cpu().numpy()


def decode(a: np.ndarray, encoding: str, levels: int | None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    if encoding == "float32":
        return t
    return (t.to(torch.float64) * (2.0 / (levels - 1)) - 1).to(torch.float32)


class SampleWriter:
    """Append chunks to ``directory/samples.npz`` (:meth:`append`), then :meth:`close` with the meta."""

    def __init__(self, directory: Path, encoding: str, levels: int | None):
        self.path = Path(directory) / FILE_NAME
        self.partial = self.path.with_name(FILE_NAME + ".partial")
        self.encoding, self.levels = encoding, levels
        self.count, self.chunks, self.shape = 0, 0, None
        self.partial.unlink(missing_ok=True)
        self.zip = zipfile.ZipFile(self.partial, "w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def _member(self, name: str, array: np.ndarray) -> None:
        with self.zip.open(f"{name}.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array(fh, np.asanyarray(array), allow_pickle=False)

    def append(self, x: torch.Tensor) -> None:
        self.shape = list(x.shape[1:])
        self._member(f"x_{self.chunks:06d}", encode(x, self.encoding, self.levels))
        self.chunks += 1
        self.count += len(x)

    def close(self, meta: dict[str, Any]) -> Path:
        full = {"format": FORMAT_VERSION, "num_samples": self.count, "chunks": self.chunks, "shape": self.shape,
                "encoding": self.encoding, "levels": self.levels, **meta}
        self._member("meta", np.array(json.dumps(full, default=str)))
        self.zip.close()
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        self.zip.close()


def resolve(path: str | Path) -> Path:
    """``path`` itself, or ``path/samples.npz`` when ``path`` is a case directory."""
    p = Path(path).expanduser()
    return p / FILE_NAME if p.is_dir() else p


def read_meta(path: str | Path) -> dict[str, Any]:
    p = resolve(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            if "meta" not in z.files:
                raise UserError(f"{p}: incomplete samples file (no meta: the case stopped while sampling)")
            return json.loads(str(z["meta"]))
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise UserError(f"{p}: not a bench samples file ({type(exc).__name__}: {exc})") from None


def read_chunks(path: str | Path, limit: int | None = None) -> Iterator[torch.Tensor]:
    """The saved samples as float32 model-space chunks, in order (the first ``limit`` samples)."""
    p = resolve(path)
    meta = read_meta(p)
    left = meta["num_samples"] if limit is None else min(limit, meta["num_samples"])
    with np.load(p, allow_pickle=False) as z:
        for i in range(meta["chunks"]):
            if left <= 0:
                return
            x = decode(z[f"x_{i:06d}"], meta["encoding"], meta["levels"])[:left]
            left -= len(x)
            yield x
