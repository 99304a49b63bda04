"""Feature extractors for FID/KID/precision-recall, registered both in bench and in torch-fidelity.

A bench feature extractor (registry kind ``feature_extractor``) is an object with

- ``fidelity_name``: the name it has in torch-fidelity's registry (``register_feature_extractor``),
- ``feature_layer``: the feature name used for fid, kid and prc,
- ``prepare()``: heavy, idempotent work (training, loading, checking weights),
- ``fidelity_kwargs()``: the kwargs that select it in ``torch_fidelity.calculate_metrics``
  (``feature_extractor``, ``feature_layer_*``, ``feature_extractor_weights_path``),
- ``describe()``: everything that determines the features (name, layer, weights sha256, ...),
  logged and part of the reference-statistics cache key,
- ``metrics()``: numbers worth logging about it (e.g. the digits classifier's test accuracy).

Any other registered extractor that is a plain callable ``f(images) -> (N, d)`` features, with
images float ``(N, C, H, W)`` in model space [-1, 1], is wrapped by :func:`as_fidelity_extractor`.

Preprocessing (all extractors): model-space images are converted to what torch-fidelity feeds an
extractor, uint8 RGB ``(N, 3, H, W)`` at the data's own resolution: clamp to [-1, 1]; with
``quantize`` and L levels, ``k = round((x + 1) / 2 (L - 1))`` then ``u = round(255 k / (L - 1))``
(else ``u = round(127.5 (x + 1))``); grey is repeated to 3 channels. Each extractor resizes inside
(Inception: TF-compatible bilinear to 299; the digits CNN: bilinear to its training size).
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import torch
import torch.nn.functional as F
import torch_fidelity
from pydantic import Field
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from bench.errors import UserError
from bench.store import content_key, file_sha256

from . import digits_classifier as dc
from .common import tensor_digest

STORE_KIND = "feature_extractors"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SHA_PREFIX = "6726825d"


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


# ---------------------------------------------------------------------------------- torch-fidelity side
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


_FIDELITY_CLASSES = {"bench-digits-classifier": FidelityDigitsCNN, "bench-random-proj": FidelityRandomProjection}
_REG_LOCK = threading.Lock()


def register_with_torch_fidelity() -> None:
    """Register this module's classes in torch-fidelity (idempotent)."""
    with _REG_LOCK:
        for name, cls in _FIDELITY_CLASSES.items():
            if name not in FEATURE_EXTRACTORS_REGISTRY:
                torch_fidelity.register_feature_extractor(name, cls)


register_with_torch_fidelity()


# ---------------------------------------------------------------------------------- bench side
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


_SHA_CACHE: dict[tuple, str] = {}


def cached_sha256(path: str | Path) -> str:
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(Path(path))
    return _SHA_CACHE[key]


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


class DigitsClassifier(FidelityExtractor):
    """``digits-classifier``: the CNN of :mod:`bench_metrics.digits_classifier`, trained on the
    case dataset's train split and labels (``dataset.labels(split)``) and cached in the store under
    a content hash of (train images, labels, architecture, training config). Features: the
    penultimate layer. Its test-split accuracy is logged."""

    name = "digits-classifier"
    fidelity_name = "bench-digits-classifier"
    feature_layer = "features"

    def __init__(self, width: Annotated[int, Field(gt=0)] = 32, feature_dim: Annotated[int, Field(gt=0)] = 64,
                 epochs: Annotated[int, Field(gt=0)] = 30, batch_size: Annotated[int, Field(gt=0)] = 64,
                 lr: Annotated[float, Field(gt=0)] = 2e-3, seed: int = 0, context=None):
        dataset = getattr(context, "dataset", None)
        info = getattr(context, "data", None) or getattr(dataset, "info", None)
        if dataset is None or info is None or not hasattr(dataset, "labels") or info.modality != "image" \
                or info.shape[0] != 1 or not info.params.get("num_classes"):
            raise UserError("digits-classifier needs a labelled 1-channel image dataset with "
                            "dataset.labels(split) and params.num_classes (digits8, digits16)")
        self.dataset, self.info, self.context = dataset, info, context
        self.arch = {"size": int(info.shape[-1]), "width": width, "feature_dim": feature_dim,
                     "num_classes": int(info.params["num_classes"])}
        self.train_cfg = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}
        self.key: str | None = None
        self.info_log: dict[str, Any] = {}

    def cache_key(self) -> str:
        x, y = self.dataset.split("train"), self.dataset.labels("train")
        return content_key("digits-classifier", dc.ARCH_VERSION, tensor_digest(x), tensor_digest(y),
                           preprocessing(self.info.levels, True), self.arch, self.train_cfg)

    def prepare(self) -> None:
        if self.weights_path is not None:
            return
        store = self.context.store
        self.key = self.cache_key()
        with store.lock(STORE_KIND, self.key):
            entry = store.get(STORE_KIND, self.key)
            if entry is None:
                model, log = self.train_model()
                log["test_accuracy"] = dc.accuracy(model, self._u8("test"), self.dataset.labels("test"))
                log["train_accuracy"] = dc.accuracy(model, self._u8("train"), self.dataset.labels("train"))
                payload = {"arch": self.arch, "state_dict": model.state_dict()}
                entry = store.put(STORE_KIND, self.key, lambda d: torch.save(payload, d / "weights.pt"),
                                  meta={"extractor": self.name, "arch": self.arch, "train": self.train_cfg,
                                        "dataset": self.info.name, **log})
                self.context.log(f"digits-classifier: trained in {log['train_seconds']:.1f} s, "
                                 f"test accuracy {log['test_accuracy']:.4f} (cached as {self.key[:12]})")
                self.info_log = {**log, "trained_now": True}
            else:
                self.info_log = {**store.meta(STORE_KIND, self.key), "trained_now": False}
        self.weights_path = str(entry / "weights.pt")

    def _u8(self, split: str) -> torch.Tensor:
        return to_uint8_rgb(self.dataset.split(split), self.info.levels, True)

    def train_model(self):
        """Train from scratch (no cache); returns (model, log)."""
        return dc.train(self._u8("train"), self.dataset.labels("train"), self.arch, self.train_cfg)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "arch": self.arch, "train": self.train_cfg, "key": self.key,
                "weights_sha256": cached_sha256(self.weights_path) if self.weights_path else None,
                "test_accuracy": self.info_log.get("test_accuracy")}

    def metrics(self) -> dict[str, float]:
        out = {"extractor_test_acc": float(self.info_log["test_accuracy"])} if self.info_log else {}
        if self.info_log.get("trained_now"):
            out["extractor_train_s"] = float(self.info_log["train_seconds"])
        return out


class RandomProjection(FidelityExtractor):
    """``random-proj``: a fixed random linear map ``W`` (``dim`` x 3HW, entries N(0, 1/(3HW)), from
    ``seed``) of the uint8 RGB image scaled to [-1, 1]. NOT a perceptual feature space: for tests
    and smoke runs only (it is labelled as such in every log)."""

    name = "random-proj"
    fidelity_name = "bench-random-proj"
    feature_layer = "proj"

    def __init__(self, dim: Annotated[int, Field(gt=0)] = 64, seed: int = 0, context=None):
        info = getattr(context, "data", None)
        if info is None or info.modality != "image":
            raise UserError("random-proj needs image data")
        self.size = [int(info.shape[-2]), int(info.shape[-1])]
        self.dim, self.seed, self.context = dim, seed, context

    def weight(self) -> torch.Tensor:
        in_dim = 3 * self.size[0] * self.size[1]
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randn(self.dim, in_dim, generator=gen, dtype=torch.float64).div(in_dim ** 0.5).float()

    def prepare(self) -> None:
        if self.weights_path is not None:
            return
        store = self.context.store
        key = content_key("random-proj", 1, self.dim, self.seed, self.size)
        with store.lock(STORE_KIND, key):
            entry = store.get(STORE_KIND, key) or store.put(
                STORE_KIND, key, lambda d: torch.save({"weight": self.weight(), "size": self.size}, d / "weights.pt"),
                meta={"extractor": self.name, "dim": self.dim, "seed": self.seed, "size": self.size})
        self.weights_path = str(entry / "weights.pt")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dim": self.dim, "seed": self.seed, "size": self.size,
                "note": "random projection, NOT a perceptual feature space (tests and smoke runs only)"}


def auto(context=None) -> FidelityExtractor:
    """``auto``: ``digits-classifier`` for labelled 1-channel 8x8/16x16 image data with
    ``num_classes`` (digits8, digits16), ``inception-v3-compat`` otherwise."""
    info = getattr(context, "data", None)
    dataset = getattr(context, "dataset", None)
    if (info is not None and info.modality == "image" and info.shape[0] == 1 and info.shape[1:] in ((8, 8), (16, 16))
            and info.params.get("num_classes") and hasattr(dataset, "labels")):
        return DigitsClassifier(context=context)
    return InceptionV3()


# ---------------------------------------------------------------------------------- other callables
class CallableExtractor(FidelityExtractor):
    """Wraps a plain callable ``f(images float (N, C, H, W) in [-1, 1]) -> (N, d)`` as a torch-fidelity
    extractor registered under a name derived from its spec (in this process only)."""

    feature_layer = "features"

    def __init__(self, fn: Callable, channels: int, spec: dict | None = None):
        self.fn, self.channels = fn, channels
        self.spec = dict(spec or {"name": type(fn).__name__})
        self.name = str(self.spec.get("name"))
        digest = content_key(self.spec, type(fn).__module__, type(fn).__qualname__, self._state_digest())
        self.fidelity_name = f"bench-callable-{self.name.replace('/', '_')}-{digest[:12]}"
        with _REG_LOCK:
            if self.fidelity_name not in FEATURE_EXTRACTORS_REGISTRY:
                torch_fidelity.register_feature_extractor(self.fidelity_name, self._make_class())

    def _state_digest(self) -> str:
        if isinstance(self.fn, torch.nn.Module):
            h = hashlib.sha256()
            for k, v in sorted(self.fn.state_dict().items()):
                h.update(k.encode())
                h.update(tensor_digest(v).encode())
            return h.hexdigest()
        return ""

    def _make_class(self):
        fn, channels = self.fn, self.channels

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

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "spec": self.spec, "wrapped": f"{type(self.fn).__module__}.{type(self.fn).__qualname__}"}


def as_fidelity_extractor(obj: Any, info) -> FidelityExtractor:
    """``obj`` if it follows the protocol, else a :class:`CallableExtractor` around it."""
    if hasattr(obj, "fidelity_name") and hasattr(obj, "fidelity_kwargs"):
        return obj
    if callable(obj):
        return CallableExtractor(obj, int(info.shape[0]), getattr(obj, "bench_spec", None))
    raise TypeError(f"feature extractor {obj!r} is neither a bench_metrics extractor nor a callable")
