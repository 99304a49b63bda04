"""Feature extractors for FID/KID/precision-recall, registered both in bench and in torch-fidelity.

A bench feature extractor (registry kind ``feature_extractor``) is an object with

- ``fidelity_name``: the name it has in torch-fidelity's registry (``register_feature_extractor``),
- ``feature_layer``: the feature name used for fid, kid and prc,
- ``prepare()``: heavy, idempotent work (training, loading, checking weights),
- ``fidelity_kwargs()``: the kwargs that select it in ``torch_fidelity.calculate_metrics``
  (``feature_extractor``, ``feature_layer_*``, ``feature_extractor_weights_path``),
- ``describe()``: everything that determines the features (name, layer, weights sha256, ...),
  logged and part of the reference-statistics cache key,
- ``metrics()``: numbers worth logging about it (e.g. the digits classifier's test accuracy),
- optional ``trained_on``: the dataset split it was fitted on (the fidelity metrics then use that
  split as the reference and draw the noise-floor sample from the unseen split),
- optional ``threads``: intra-op threads for feature extraction (1 for small networks).

Any other registered extractor that is a plain callable ``f(images) -> (N, d)`` features, with
images float ``(N, C, H, W)`` in model space [-1, 1], is wrapped by :func:`as_fidelity_extractor`.

Preprocessing is shared (:mod:`bench_metrics.extractor_base`: uint8 RGB at the data's resolution);
each extractor resizes inside (Inception, :mod:`bench_metrics.inception`: TF-compatible bilinear to
299; the digits CNN: bilinear to its training size).
"""
from __future__ import annotations

import hashlib
from typing import Annotated, Any, Callable

import torch
from pydantic import Field

from bench.errors import UserError
from bench.store import content_key

from . import digits_classifier as dc
from .common import tensor_digest
from .extractor_base import FidelityExtractor, cached_sha256, preprocessing, to_uint8_rgb, trained_once
from .inception import InceptionV3

__all__ = ["FidelityExtractor", "InceptionV3", "DigitsClassifier", "RandomProjection", "CallableExtractor", "auto",
           "as_fidelity_extractor", "preprocessing", "to_uint8_rgb", "register_with_torch_fidelity"]

STORE_KIND = "feature_extractors"


def register_with_torch_fidelity() -> None:
    """Register the torch-fidelity classes of the built-in extractors (idempotent). torch-fidelity is
    imported here, when an extractor is prepared, not when the plugin's signatures are read."""
    from . import fidelity_classes

    fidelity_classes.register_builtin()


# ---------------------------------------------------------------------------------- bench side
class DigitsClassifier(FidelityExtractor):
    """``digits-classifier``: the CNN of :mod:`bench_metrics.digits_classifier`, trained on the
    case dataset's train split and labels (``dataset.labels(split)``) and cached in the store under
    a content hash of (train images, labels, architecture, training config). Features: the
    penultimate layer. Its test-split accuracy is logged."""

    name = "digits-classifier"
    fidelity_name = "bench-digits-classifier"
    feature_layer = "features"

    trained_on = "train"
    threads = 1  # small convolutions: fastest single-threaded

    def __init__(self, width: Annotated[int, Field(gt=0)] = 16, feature_dim: Annotated[int, Field(gt=0)] = 64,
                 epochs: Annotated[int, Field(gt=0)] = 20, batch_size: Annotated[int, Field(gt=0)] = 64,
                 lr: Annotated[float, Field(gt=0)] = 3e-3, seed: int = 0, context=None):
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
        register_with_torch_fidelity()
        if self.weights_path is not None:
            return
        self.key = self.cache_key()

        def train():
            model, log = self.train_model()
            log["test_accuracy"] = dc.accuracy(model, self._u8("test"), self.dataset.labels("test"))
            log["train_accuracy"] = dc.accuracy(model, self._u8("train"), self.dataset.labels("train"))
            payload = {"arch": self.arch, "state_dict": model.state_dict()}
            return (lambda d: torch.save(payload, d / "weights.pt")), log

        entry, self.info_log = trained_once(self.context.store, STORE_KIND, self.key, train,
                                            {"extractor": self.name, "arch": self.arch, "train": self.train_cfg,
                                             "dataset": self.info.name})
        if self.info_log["trained_now"]:
            log = self.info_log
            self.context.log(f"digits-classifier: trained in {log['train_seconds']:.1f} s, "
                             f"test accuracy {log['test_accuracy']:.4f} (cached as {self.key[:12]})")
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
    threads = 1

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
        register_with_torch_fidelity()
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


#: the smallest image side ``auto`` sends to Inception (MNIST's 28; smaller images carry no ImageNet features)
AUTO_INCEPTION_MIN_SIDE = 28


def auto(context=None) -> FidelityExtractor:
    """``auto``: ``digits-classifier`` for labelled 1-channel 8x8/16x16 image data with
    ``num_classes`` (digits8, digits16), ``inception-v3-compat`` for images of at least
    :data:`AUTO_INCEPTION_MIN_SIDE` pixels a side; other (small, unlabelled) images have no default
    feature space: a clear error asks for one (per dataset: ``metric_params`` in the dataset entry)."""
    info = getattr(context, "data", None)
    dataset = getattr(context, "dataset", None)
    if (info is not None and info.modality == "image" and info.shape[0] == 1 and info.shape[1:] in ((8, 8), (16, 16))
            and info.params.get("num_classes") and hasattr(dataset, "labels")):
        return DigitsClassifier(context=context)
    if info is not None and info.modality == "image" and min(info.shape[-2:]) < AUTO_INCEPTION_MIN_SIDE:
        shape = "x".join(str(s) for s in info.shape)
        raise UserError(f"extractor 'auto' has no feature space for {info.name} ({shape} images, no digit labels): "
                        f"Inception needs images of at least {AUTO_INCEPTION_MIN_SIDE} px a side",
                        hint="choose one for this dataset, e.g. in its matrix entry: "
                             "metric_params: {fid: {extractor: random-proj}}")
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
        from . import fidelity_classes

        fidelity_classes.register(self.fidelity_name, fidelity_classes.wrapped(self.fn, self.channels))

    def _state_digest(self) -> str:
        if isinstance(self.fn, torch.nn.Module):
            h = hashlib.sha256()
            for k, v in sorted(self.fn.state_dict().items()):
                h.update(k.encode())
                h.update(tensor_digest(v).encode())
            return h.hexdigest()
        return ""

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "spec": self.spec, "wrapped": f"{type(self.fn).__module__}.{type(self.fn).__qualname__}"}


def as_fidelity_extractor(obj: Any, info) -> FidelityExtractor:
    """``obj`` if it follows the protocol, else a :class:`CallableExtractor` around it."""
    if hasattr(obj, "fidelity_name") and hasattr(obj, "fidelity_kwargs"):
        return obj
    if callable(obj):
        return CallableExtractor(obj, int(info.shape[0]), getattr(obj, "bench_spec", None))
    raise TypeError(f"feature extractor {obj!r} is neither a bench_metrics extractor nor a callable")
