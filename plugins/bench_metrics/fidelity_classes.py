"""The torch-fidelity side of the built-in feature extractors: the ``FeatureExtractorBase`` classes
torch-fidelity instantiates by name, and their registration in its registry.

Imported only when an extractor is prepared or wrapped (:mod:`bench_metrics.extractors`), so reading
the plugin's signatures (``bench validate``, ``bench run --dry-run``) does not import torch-fidelity.
"""
from __future__ import annotations

import threading
from typing import Callable

import torch
import torch.nn.functional as F
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from . import digits_classifier as dc
from .extractor_base import uint8_rgb_to_model

_LOCK = threading.Lock()


class _Base(FeatureExtractorBase):
    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

    @staticmethod
    def _load(path: str | None) -> dict:
        if not path:
            raise ValueError("this feature extractor needs feature_extractor_weights_path")
        return torch.load(path, map_location="cpu", weights_only=True)


class FidelityDigitsCNN(_Base):
    """torch-fidelity class of the digits CNN; weights file = ``{"arch": ..., "state_dict": ...}``."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        payload = self._load(feature_extractor_weights_path)
        self.net = dc.DigitsCNN(**payload["arch"])
        self.net.load_state_dict(payload["state_dict"])
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list():
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "features"

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.dim() == 4, "expecting uint8 (N, C, H, W)"
        feats = self.net.features(x)
        out = {"features": feats, "logits": self.net.head(feats)}
        return tuple(out[a] for a in self.features_list)


class FidelityRandomProjection(_Base):
    """torch-fidelity class of the random projection: ``f = W vec(u / 127.5 - 1)`` with ``u`` the
    uint8 RGB image resized to the stored size; weights file = ``{"weight": W, "size": [H, W]}``."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        payload = self._load(feature_extractor_weights_path)
        self.register_buffer("weight", payload["weight"].to(torch.float32))
        self.size = tuple(payload["size"])

    @staticmethod
    def get_provided_features_list():
        return ("proj",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "proj"

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.dim() == 4, "expecting uint8 (N, C, H, W)"
        v = x.to(torch.float32) / 127.5 - 1
        if v.shape[-2:] != self.size:
            v = F.interpolate(v, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return (v.flatten(1) @ self.weight.T,)


def wrapped(fn: Callable, channels: int) -> type:
    """A torch-fidelity class whose single feature ``features`` is ``fn`` of the image in model space."""

    class _Wrapped(_Base):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)

        @staticmethod
        def get_provided_features_list():
            return ("features",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "features"

        def forward(self, x):
            with torch.no_grad():
                return (torch.as_tensor(fn(uint8_rgb_to_model(x, channels))).float().reshape(len(x), -1),)

    return _Wrapped


BUILTIN = {"bench-digits-classifier": FidelityDigitsCNN, "bench-random-proj": FidelityRandomProjection}


def register(name: str, cls: type) -> None:
    """Register ``cls`` in torch-fidelity under ``name`` unless a class has that name already."""
    with _LOCK:
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            torch_fidelity.register_feature_extractor(name, cls)


def register_builtin() -> None:
    """Register the built-in extractors' classes (idempotent)."""
    for name, cls in BUILTIN.items():
        register(name, cls)
