"""Metric ``is``: the Inception Score of generated images (Salimans et al. 2016), by torch-fidelity.

With ``p(y|x)`` the classifier's softmax over its classes for image ``x`` and ``p(y)`` its mean over
a split of the generated set,

    IS = exp( E_x KL( p(y|x) || p(y) ) ),

computed on each of ``splits`` equal parts of the (shuffled) set; ``is_mean`` and ``is_std`` are the
mean and standard deviation over the parts (torch-fidelity's ``isc_features_to_metric``, on the
``logits_unbiased`` layer of its InceptionV3: the 1008 logits without the fc bias, as the TF
reference implementation does). Higher is better; it needs no reference set, so ``is_real_mean``
gives the same score for a real sample of the same size (test split) to read the model's against.

Images go through the preprocessing of every fidelity metric (:mod:`bench_metrics.extractor_base`:
uint8 RGB at the data's resolution; Inception resizes to 299 inside). The extractor is a registered
``feature_extractor`` that gives class logits (``inception-v3-compat``, default, with the weights
file from ``weights_path`` or ``BENCH_INCEPTION_WEIGHTS``; or ``digits-classifier``). The metric is
skipped, with the reason, on non-image data and when no Inception weights are available offline.
"""
from __future__ import annotations

import json
import threading
from typing import Annotated, Any

import torch
from pydantic import Field
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from bench.context import MetricSkipped
from bench.errors import UserError

from .common import generated, subset_rows
from .digits_classifier import threads
from .extractors import FidelityExtractor, as_fidelity_extractor, preprocessing, register_with_torch_fidelity
from .fidelity import ImageTensorDataset
from .stream import FeatureStream, feed

#: logits layers, in order of preference, in torch-fidelity's feature lists
LOGITS_LAYERS = ("logits_unbiased", "logits")
_MODULES: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def inception_score(logits: torch.Tensor, splits: int = 10, shuffle: bool = True,
                    rng_seed: int = 2020) -> tuple[float, float]:
    """(mean, std) over ``splits`` parts of exp(mean KL(p(y|x) || p(y))) from logits ``(N, K)``."""
    out = isc_features_to_metric(logits, splits=splits, shuffle=shuffle, rng_seed=rng_seed)
    return float(out[KEY_METRIC_ISC_MEAN]), float(out[KEY_METRIC_ISC_STD])


def logits_layer(ext: FidelityExtractor) -> str:
    """The class-logits layer of ``ext``'s torch-fidelity class (UserError if it has none)."""
    register_with_torch_fidelity()  # the built-in classes, before the registry is read
    provided = FEATURE_EXTRACTORS_REGISTRY[ext.fidelity_name].get_provided_features_list()
    for layer in LOGITS_LAYERS:
        if layer in provided:
            return layer
    raise UserError(f"is: feature extractor '{ext.name}' gives no class logits (it provides "
                    f"{', '.join(provided)}); use inception-v3-compat or digits-classifier")


def logits_of(ext: FidelityExtractor, layer: str, images_u8: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Class logits ``(N, K)`` of uint8 RGB images by torch-fidelity's extraction loop."""
    kw = ext.fidelity_kwargs()
    extra = {k: v for k, v in kw.items() if k != "feature_extractor" and not k.startswith("feature_layer_")}
    key = (kw["feature_extractor"], layer, tuple(sorted((k, str(v)) for k, v in extra.items())))
    with _LOCK:
        if key not in _MODULES:
            _MODULES[key] = create_feature_extractor(kw["feature_extractor"], [layer], cuda=False, verbose=False,
                                                     **extra)
        module = _MODULES[key]
    with threads(getattr(ext, "threads", None)):
        out = get_featuresdict_from_dataset(ImageTensorDataset(images_u8), module, batch_size, cuda=False,
                                            save_cpu_ram=True, verbose=False)
    return out[layer]


class InceptionScore:
    """Metric ``is``: logs ``is_mean``, ``is_std``, ``is_splits``, ``is_num_samples`` and, with
    ``real`` (default), ``is_real_mean`` / ``is_real_std`` of a test-split sample of the same size.

    Parameters: ``extractor`` (a registered feature extractor with class logits, name or spec),
    ``num_samples`` (generated samples used, default all), ``splits`` (capped at the sample count;
    the number used is logged), ``shuffle`` and ``rng_seed`` (torch-fidelity's split assignment),
    ``quantize`` (to the data's levels before the uint8 conversion), ``batch_size``, ``key``."""

    def __init__(self, extractor: str | dict[str, Any] = "inception-v3-compat",
                 num_samples: Annotated[int, Field(gt=1)] | None = None,
                 splits: Annotated[int, Field(gt=0)] = 10, shuffle: bool = True, rng_seed: int = 2020,
                 real: bool = True, quantize: bool = True, batch_size: Annotated[int, Field(gt=0)] = 64,
                 key: str = "is", context=None):
        self.num_samples, self.splits, self.shuffle, self.rng_seed = num_samples, splits, shuffle, rng_seed
        self.real, self.quantize, self.batch_size, self.key = real, quantize, batch_size, key
        self.extractor: FidelityExtractor | None = None
        self.skip_reason: str | None = None
        info = getattr(context, "data", None)
        if info is None or info.modality != "image":
            self.skip_reason = f"does not apply to {getattr(info, 'modality', 'unknown')} data (images only)"
            return
        try:
            self.extractor = as_fidelity_extractor(context.build("feature_extractor", extractor), info)
        except UserError as exc:
            if "no InceptionV3 weights available offline" not in exc.message:
                raise  # a named weights file that is missing or wrong stays an error
            self.skip_reason = f"{exc.message} (set BENCH_INCEPTION_WEIGHTS or the extractor's weights_path)"
            return
        self.layer = logits_layer(self.extractor)

    def _stream(self, total: int, info) -> FeatureStream:
        """Class logits of ``total`` images fed chunk by chunk (:mod:`bench_metrics.stream`)."""
        return FeatureStream(lambda u8: logits_of(self.extractor, self.layer, u8, self.batch_size), total,
                             info.levels, self.quantize, self.batch_size, digest=False)

    def _score(self, logits: torch.Tensor) -> tuple[float, float, int]:
        splits = min(self.splits, len(logits))
        return (*inception_score(logits, splits, self.shuffle, self.rng_seed), splits)

    def accumulate(self, ctx, chunk: torch.Tensor, start: int) -> None:
        """Streaming form (docs/plugins.md): the logits of each chunk while the case samples."""
        if self.skip_reason:
            return
        if start == 0:
            self.extractor.prepare()
            total = ctx.num_samples if self.num_samples is None else min(self.num_samples, ctx.num_samples)
            ctx.shared[(self.key, "is-logits")] = self._stream(total, ctx.data)
        ctx.shared[(self.key, "is-logits")].update(chunk, start)

    def compute(self, ctx) -> dict[str, float]:
        if self.skip_reason:
            raise MetricSkipped(self.skip_reason)
        self.extractor.prepare()
        stream = ctx.shared.get((self.key, "is-logits"))
        if stream is None:
            x = generated(ctx, self.num_samples)
            stream = feed(self._stream(len(x), ctx.data), x)
        logits = stream.finish()
        n = len(logits)
        mean, std, splits = self._score(logits)
        k = self.key
        values = {f"{k}_mean": mean, f"{k}_std": std, f"{k}_splits": float(splits), f"{k}_num_samples": float(n)}
        if self.real:
            real = subset_rows(ctx.dataset.split("test"), n, "is-real", "test")
            r_mean, r_std, _ = self._score(feed(self._stream(len(real), ctx.data), real).finish())
            values.update({f"{k}_real_mean": r_mean, f"{k}_real_std": r_std,
                           f"{k}_real_num_samples": float(len(real))})
        desc = self.extractor.describe()
        sha = f", weights sha256 {desc['weights_sha256'][:12]}" if desc.get("weights_sha256") else ""
        ctx.log(f"{k}: extractor {desc['name']} (layer {self.layer}{sha}), {n} generated, {splits} splits")
        record = {"metric": k, "extractor": desc, "layer": self.layer, "values": values,
                  "preprocessing": preprocessing(ctx.data.levels, self.quantize),
                  "shuffle": self.shuffle, "rng_seed": self.rng_seed}
        (ctx.artifact_dir / f"{k}.json").write_text(json.dumps(record, indent=1, default=str))
        return values
