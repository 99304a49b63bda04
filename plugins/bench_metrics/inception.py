"""``inception-v3-compat``: torch-fidelity's InceptionV3, offline by default.

Weights, first found: the ``weights_path`` parameter; ``$BENCH_INCEPTION_WEIGHTS``; the torch hub
cache (``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``). A file is checked
before torch-fidelity sees it (it must load with ``weights_only=True`` and have the Inception keys
and shapes). Without any file, it downloads only if ``allow_download`` or ``BENCH_ALLOW_DOWNLOAD=1``;
otherwise building it raises a UserError that says how to provide the weights.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch

from bench.errors import UserError

from .extractor_base import FidelityExtractor, cached_sha256

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SHA_PREFIX = "6726825d"


def _allow_download_env() -> bool:
    return os.environ.get("BENCH_ALLOW_DOWNLOAD", "").strip().lower() in ("1", "true", "yes")


class InceptionV3(FidelityExtractor):
    """``inception-v3-compat``: torch-fidelity's InceptionV3 (TF 2015-12-05 weights), pool3 features.

    Weights, first found: ``weights_path``; ``$BENCH_INCEPTION_WEIGHTS``; the torch hub cache
    (``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``). Without any, it
    downloads only if ``allow_download`` or ``BENCH_ALLOW_DOWNLOAD=1``; otherwise it fails at once
    with instructions. A given file is checked (loads as a plain state dict with the Inception
    keys and shapes) before torch-fidelity sees it."""

    name = "inception-v3-compat"
    fidelity_name = "inception-v3-compat"

    def __init__(self, weights_path: str | None = None, allow_download: bool = False,
                 feature_layer: Literal["64", "192", "768", "2048", "logits_unbiased"] = "2048",
                 internal_dtype: Literal["float32", "float64"] = "float32"):
        self.feature_layer = feature_layer
        self.internal_dtype = internal_dtype
        self.weights_path = resolve_inception_weights(weights_path, allow_download)
        self.sha256: str | None = None

    def prepare(self) -> None:
        if self.weights_path is None:  # download allowed: let torch hub fetch it into its cache
            from torch.hub import get_dir, load_state_dict_from_url
            from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

            load_state_dict_from_url(URL_INCEPTION_V3, progress=False, check_hash=True)
            self.weights_path = str(Path(get_dir()) / "checkpoints" / INCEPTION_FILE)
        if self.sha256 is None:
            self.sha256 = cached_sha256(self.weights_path)

    def fidelity_kwargs(self) -> dict[str, Any]:
        return {**super().fidelity_kwargs(), "feature_extractor_internal_dtype": self.internal_dtype}

    def describe(self) -> dict[str, Any]:
        d = {**super().describe(), "weights_path": self.weights_path, "weights_sha256": self.sha256,
             "internal_dtype": self.internal_dtype, "input": "uint8 RGB, TF-compatible bilinear resize to 299"}
        if self.sha256 and not self.sha256.startswith(INCEPTION_SHA_PREFIX):
            d["warning"] = "weights differ from torch-fidelity's standard file: FIDs are not comparable"
        return d


_HOW_TO = ("set BENCH_INCEPTION_WEIGHTS=/path/to/" + INCEPTION_FILE + " (download it once from "
           "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE +
           ") or the extractor parameter weights_path, or allow the download with BENCH_ALLOW_DOWNLOAD=1 or "
           "allow_download: true, or use extractor digits-classifier or random-proj")


def resolve_inception_weights(weights_path: str | None, allow_download: bool) -> str | None:
    """The checked weights file, or None when a download is allowed and nothing is local."""
    source = "weights_path"
    if not weights_path and os.environ.get("BENCH_INCEPTION_WEIGHTS"):
        weights_path, source = os.environ["BENCH_INCEPTION_WEIGHTS"], "BENCH_INCEPTION_WEIGHTS"
    if not weights_path:
        from torch.hub import get_dir

        cached = Path(get_dir()) / "checkpoints" / INCEPTION_FILE
        if cached.is_file():
            weights_path, source = str(cached), "the torch hub cache"
    if not weights_path:
        if allow_download or _allow_download_env():
            return None
        raise UserError("inception-v3-compat: no InceptionV3 weights available offline and downloads are "
                        "not allowed", hint=_HOW_TO)
    check_inception_weights(weights_path, source)
    return str(Path(weights_path).expanduser().resolve())


def check_inception_weights(path: str, source: str = "weights_path") -> None:
    """Raise a UserError unless ``path`` is a loadable InceptionV3 (torch-fidelity) state dict."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"inception-v3-compat: the weights file from {source} does not exist: {p}", hint=_HOW_TO)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"inception-v3-compat: the weights file {p} (from {source}) is corrupt or not a "
                        f"PyTorch state dict ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                        hint=_HOW_TO) from None
    want = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "fc.weight": (1008, 2048)}
    if not isinstance(state, dict) or any(
            k not in state or tuple(getattr(state[k], "shape", ())) != s for k, s in want.items()):
        raise UserError(f"inception-v3-compat: {p} (from {source}) is not torch-fidelity's InceptionV3 "
                        f"state dict (expected keys {sorted(want)} with shapes {list(want.values())})", hint=_HOW_TO)
