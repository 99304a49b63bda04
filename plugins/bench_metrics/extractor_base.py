"""The bench side of a feature extractor: its protocol, the image preprocessing shared by all
extractors, and a cached file hash.

Preprocessing (all extractors): model-space images are converted to what torch-fidelity feeds an
extractor, uint8 RGB ``(N, 3, H, W)`` at the data's own resolution: clamp to [-1, 1]; with
``quantize`` and L levels, ``k = round((x + 1) / 2 (L - 1))`` then ``u = round(255 k / (L - 1))``
(else ``u = round(127.5 (x + 1))``); grey is repeated to 3 channels.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from bench.store import file_sha256


# ---------------------------------------------------------------------------------- preprocessing
def preprocessing(levels: int | None, quantize: bool) -> dict[str, Any]:
    """A description of :func:`to_uint8_rgb`'s settings (part of cache keys)."""
    return {"to": "uint8-rgb", "version": 1, "levels": levels, "quantize": bool(quantize and levels)}


def to_uint8_rgb(x: torch.Tensor, levels: int | None, quantize: bool = True) -> torch.Tensor:
    """Model-space images ``(N, C, H, W)`` in [-1, 1] -> uint8 ``(N, 3, H, W)`` (see module doc)."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1|3, H, W), got {tuple(x.shape)}")
    x = x.detach().to(torch.float64).clamp(-1, 1)
    if quantize and levels:
        k = torch.round((x + 1) / 2 * (levels - 1))
        u = torch.round(k * 255.0 / (levels - 1))
    else:
        u = torch.round((x + 1) * 127.5)
    u = u.to(torch.uint8)
    return u.expand(-1, 3, -1, -1).contiguous() if u.shape[1] == 1 else u


def uint8_rgb_to_model(u: torch.Tensor, channels: int) -> torch.Tensor:
    """Inverse of the uint8 step for wrapped callables: float model space with ``channels``."""
    x = u.to(torch.float32) / 127.5 - 1
    return x.mean(dim=1, keepdim=True) if channels == 1 else x


class FidelityExtractor:
    """Base of the bench-side extractors (see the module docstring for the protocol)."""

    name = "?"
    fidelity_name = "?"
    feature_layer = "?"
    weights_path: str | None = None

    def prepare(self) -> None:
        pass

    def fidelity_kwargs(self) -> dict[str, Any]:
        out = {"feature_extractor": self.fidelity_name, "feature_layer_fid": self.feature_layer,
               "feature_layer_kid": self.feature_layer, "feature_layer_prc": self.feature_layer}
        if self.weights_path:
            out["feature_extractor_weights_path"] = str(self.weights_path)
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "fidelity_name": self.fidelity_name, "feature_layer": self.feature_layer}

    def metrics(self) -> dict[str, float]:
        return {}

    def features_for(self, ctx: Any, which: str, **options: Any) -> Any:
        """Features of ``which`` for ``ctx.feature_set`` (:func:`bench_metrics.fidelity.feature_set`)."""
        from .fidelity import feature_set

        return feature_set(self, ctx, which, **options)


_SHA_CACHE: dict[tuple, str] = {}


def cached_sha256(path: str | Path) -> str:
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(Path(path))
    return _SHA_CACHE[key]


def trained_once(store: Any, kind: str, key: str, train: Any, meta: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The store entry of a locally trained model under ``key``, trained at most once across
    processes (under the store's lock): ``train()`` returns ``(save, log)``, ``save(dir)`` writing
    the weights; the entry's meta is ``meta`` with ``log``. Returns (entry directory, log with
    ``trained_now``), the log read back from the store's meta when the model was cached."""
    with store.lock(kind, key):
        entry = store.get(kind, key)
        if entry is not None:
            return entry, {**store.meta(kind, key), "trained_now": False}
        save, log = train()
        entry = store.put(kind, key, save, meta={**meta, **log})
        return entry, {**log, "trained_now": True}
