"""FID, KID and precision/recall computed with torch-fidelity's own functions, in a named feature space.

Features f = phi(u) of uint8 RGB images u (see :mod:`bench_metrics.extractors` for phi and the
preprocessing) are extracted by torch-fidelity (``create_feature_extractor`` +
``get_featuresdict_from_dataset``, exactly what ``calculate_metrics`` runs on a Dataset input), then

- FID  = |mu_g - mu_r|^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2))   (``fid_statistics_to_metric``; mu, S the
  feature mean and covariance, ``fid_features_to_statistics``);
- KID  = mean over ``kid_subsets`` random subsets of size s of the unbiased MMD^2 with the kernel
  k(a, b) = (a.b / d + 1)^3                                  (``kid_features_to_metric``);
- precision = fraction of generated features inside the union of the real k-NN balls, recall =
  fraction of real features inside the generated k-NN balls (``prc_features_to_metric``, Kynkaanniemi
  et al. 2019, k = ``neighborhood``).

The reference features (and FID statistics) of the real sets are cached in the store under a content
hash of (the real images after preprocessing, dataset name, split, count, preprocessing, extractor
identity incl. weights sha256, batch size), so a second metric on the same reference recomputes
nothing (``<key>_ref_cached`` = 1). Every distance is logged with its floor: the same distance from
a real sample of the same size as the generated set (other split, disjoint) to the same reference.

With ``bootstrap`` B > 0 each value also gets a 95% percentile interval ``<value>_ci_lo``/``_ci_hi``
(and ``<key>_boot_n`` = B) over B resamples of the generated and reference features already in
hand (:mod:`bench_metrics.bootstrap`; no feature is extracted again): FID by the eigenvalue form of
tr (S_g S_r)^(1/2); KID by the full-set unbiased MMD^2 with KID's kernel (the subset average estimates
the same quantity); precision and recall conditional on the full sets' k-NN balls.
"""
from __future__ import annotations

import abc
import contextlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field

from bench.protocols import FeatureSet
from bench.store import content_key

from . import bootstrap
from .common import OTHER_SPLIT, RealSets, Rows, generated, real_sets, tensor_digest
from .digits_classifier import threads
from .extractors import (FidelityExtractor, as_fidelity_extractor, preprocessing, register_with_torch_fidelity,
                         to_uint8_rgb)
from . import stream as streams
from .stream import FeatureStream, feed, uint8_digest

# torch-fidelity is imported inside the functions that use it, so that reading this module's signatures
# (`bench validate`, `bench run --dry-run`) does not import it


def fid_features_to_statistics(features: torch.Tensor) -> dict:
    """torch-fidelity's ``fid_features_to_statistics`` (mean and covariance of the features)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics as stats

    return stats(features)

REF_KIND = "fidelity_reference"
#: how often reference features were computed / loaded from the store in this process
COUNTERS = {"reference_computed": 0, "reference_loaded": 0}
_VOLATILE = ("weights_path", "test_accuracy", "warning", "key")


class ImageTensorDataset(torch.utils.data.Dataset):
    """A uint8 image tensor as the ``torch.utils.data.Dataset`` torch-fidelity accepts as input."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


_MODULES: dict[tuple, Any] = {}
_GEN_CACHE: "OrderedDict[str, torch.Tensor]" = OrderedDict()
_LOCK = threading.Lock()


def identity(ext: FidelityExtractor) -> dict[str, Any]:
    """What determines an extractor's features (its description without paths and logs)."""
    return {k: v for k, v in ext.describe().items() if k not in _VOLATILE}


def on_cuda(device: str) -> bool:
    """Whether torch-fidelity runs on CUDA for a case on ``device`` (its ``cuda`` flag)."""
    return torch.device(device).type == "cuda"


def fidelity_module(ext: FidelityExtractor, cuda: bool = False):
    """torch-fidelity's extractor module for ``ext`` (created once per process and ``cuda`` flag)."""
    from torch_fidelity.utils import create_feature_extractor

    register_with_torch_fidelity()
    kw = ext.fidelity_kwargs()
    key = (*sorted((k, str(v)) for k, v in kw.items()), ("cuda", cuda))
    with _LOCK:
        if key not in _MODULES:
            _MODULES[key] = create_feature_extractor(kw["feature_extractor"], [ext.feature_layer], cuda=cuda,
                                                     verbose=False, **{k: v for k, v in kw.items()
                                                                       if k != "feature_extractor"})
        return _MODULES[key]


def extract_features(ext: FidelityExtractor, images_u8: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Features ``(N, d)`` (on the CPU) of uint8 RGB images, by torch-fidelity's own extraction loop,
    on the case's device when it is CUDA (torch-fidelity's ``cuda`` flag; ``ext.device``, set by the
    metric that built the extractor), else on the CPU."""
    from torch_fidelity.utils import get_featuresdict_from_dataset

    device = getattr(ext, "device", "cpu")
    cuda = on_cuda(device)
    with threads(getattr(ext, "threads", None)), (torch.cuda.device(device) if cuda else contextlib.nullcontext()):
        out = get_featuresdict_from_dataset(ImageTensorDataset(images_u8), fidelity_module(ext, cuda), batch_size,
                                            cuda=cuda, save_cpu_ram=True, verbose=False)
    return out[ext.feature_layer]


@dataclass
class Features:
    features: torch.Tensor
    stats: dict[str, np.ndarray]
    key: str
    cached: bool


#: real or held image sets up to this many uint8 bytes are converted once and kept while their
#: digest is taken; larger ones (the floor sample of a 50k FID) are read twice, chunk by chunk
HOLD_U8_BYTES = 64 << 20


#: digests of real sets already hashed in this process: (tensor identity, rows, preprocessing) -> digest
_DIGESTS: "OrderedDict[tuple, tuple[torch.Tensor, str]]" = OrderedDict()


def _memo_key(rows: Rows, info, quantize: bool) -> tuple:
    """Identifies the content of ``rows`` while the tensor is alive and unmodified: its storage,
    layout and version counter (bumped by every in-place change), and the row indices' bytes."""
    d = rows.data
    index = None if rows.index is None else tensor_digest(rows.index)
    return (d.data_ptr(), tuple(d.shape), d.stride(), d.dtype, d._version, index, info.levels, bool(quantize))


def uint8_and_digest(rows: Rows | torch.Tensor, info, quantize: bool,
                     memo: bool = False) -> tuple[torch.Tensor | None, str]:
    """(uint8 RGB images or None, their :func:`tensor_digest`), converted chunk by chunk; the images
    are kept only when they fit in :data:`HOLD_U8_BYTES`. With ``memo`` (real sets: the same split
    tensor for every case of a worker) the digest is remembered for the tensor as long as it is
    alive and unmodified (the memo holds a reference, so its storage cannot be reused), and a repeat
    returns (None, digest) without converting or hashing again."""
    rows = rows if isinstance(rows, Rows) else Rows(rows)
    key = _memo_key(rows, info, quantize) if memo else None
    if key is not None:
        with _LOCK:
            hit = _DIGESTS.get(key)
        if hit is not None:
            return None, hit[1]
    if len(rows) * 3 * info.shape[-2] * info.shape[-1] > HOLD_U8_BYTES:
        u8, digest = None, uint8_digest(rows, info.levels, quantize)
    else:
        u8 = torch.cat([to_uint8_rgb(x, info.levels, quantize) for x in rows.chunks(streams.CONVERT_ROWS)])
        digest = tensor_digest(u8)
    if key is not None:
        with _LOCK:
            _DIGESTS[key] = (rows.data, digest)
            while len(_DIGESTS) > 16:
                _DIGESTS.popitem(last=False)
    return u8, digest


def _features_of(ext: FidelityExtractor, rows, u8, info, quantize: bool, batch_size: int) -> torch.Tensor:
    """Features of ``rows`` (or of their uint8 images ``u8`` when held), streamed in chunks."""
    stream = FeatureStream(lambda b: extract_features(ext, b, batch_size), len(rows), info.levels, quantize,
                           batch_size, digest=False)
    if u8 is None:
        feed(stream, rows)
    else:
        for lo in range(0, len(u8), streams.CONVERT_ROWS):
            stream.update_u8(u8[lo:lo + streams.CONVERT_ROWS])
    return stream.finish()


def real_features(ext: FidelityExtractor, x: Rows | torch.Tensor, info, split: str, quantize: bool,
                  batch_size: int, store, log=lambda m: None) -> Features:
    """Features and FID statistics of real images ``x`` (a tensor or lazy :class:`Rows`), from the
    store or computed (chunk by chunk) and stored."""
    u8, digest = uint8_and_digest(x, info, quantize, memo=True)
    what = {"dataset": info.name, "split": split, "num_samples": len(x),
            "preprocessing": preprocessing(info.levels, quantize), "extractor": identity(ext),
            "batch_size": batch_size}
    key = content_key("fidelity-reference", 1, digest, what)
    with store.lock(REF_KIND, key):
        entry = store.get(REF_KIND, key)
        if entry is not None:
            feats = torch.load(entry / "features.pt", map_location="cpu", weights_only=True)
            with np.load(entry / "stats.npz", allow_pickle=False) as z:
                stats = {"mu": z["mu"], "sigma": z["sigma"]}
            COUNTERS["reference_loaded"] += 1
            log(f"reference features of {info.name}/{split} (n={len(x)}, {ext.name}) loaded from the store "
                f"({key[:12]})")
            return Features(feats, stats, key, True)
        feats = _features_of(ext, x, u8, info, quantize, batch_size)
        del u8
        stats = fid_features_to_statistics(feats)

        def write(d):
            torch.save(feats, d / "features.pt")
            np.savez(d / "stats.npz", mu=stats["mu"], sigma=stats["sigma"])

        store.put(REF_KIND, key, write, meta=what)
        COUNTERS["reference_computed"] += 1
        log(f"reference features of {info.name}/{split} (n={len(x)}, {ext.name}) computed and stored ({key[:12]})")
        return Features(feats, stats, key, False)


def generated_key(ext: FidelityExtractor, digest: str, batch_size: int) -> str:
    cuda = ["cuda"] if on_cuda(getattr(ext, "device", "cpu")) else []  # GPU features round differently
    return content_key("generated", digest, identity(ext), batch_size, *cuda)


def generated_features(ext: FidelityExtractor, x: torch.Tensor, info, quantize: bool, batch_size: int) -> Features:
    """Features of held generated images (kept in memory for the other fidelity metrics of the case)."""
    u8, digest = uint8_and_digest(x, info, quantize)
    key = generated_key(ext, digest, batch_size)
    with _LOCK:
        hit = _GEN_CACHE.get(key)
    cached = hit is not None
    if not cached:
        hit = _features_of(ext, x, u8, info, quantize, batch_size)
        with _LOCK:
            _GEN_CACHE[key] = hit
            while len(_GEN_CACHE) > 4:
                _GEN_CACHE.popitem(last=False)
    return Features(hit, fid_features_to_statistics(hit), key, cached)


def stream_key(ext: FidelityExtractor, quantize: bool, batch_size: int, total: int) -> tuple:
    """Where a case's generated-features stream for these options lives in ``ctx.shared`` (fid, kid
    and prc with the same extractor and options share one)."""
    return ("fidelity-generated", json.dumps(identity(ext), sort_keys=True, default=str), bool(quantize),
            batch_size, total)


def generated_total(ctx, num_samples: int | None) -> int:
    """How many generated samples a metric capped at ``num_samples`` reads in a streamed case."""
    return ctx.num_samples if num_samples is None else min(num_samples, ctx.num_samples)


def accumulate_generated(ext: FidelityExtractor, ctx, chunk: torch.Tensor, start: int, num_samples: int | None,
                         quantize: bool, batch_size: int) -> None:
    """Feed one chunk of generated samples to the case's shared stream for these options."""
    ext.prepare()
    total = generated_total(ctx, num_samples)
    key = stream_key(ext, quantize, batch_size, total)
    stream = ctx.shared.get(key)
    if stream is None:
        stream = ctx.shared[key] = FeatureStream(lambda b: extract_features(ext, b, batch_size), total,
                                                 ctx.data.levels, quantize, batch_size)
    stream.update(chunk, start)


def streamed_features(ext: FidelityExtractor, ctx, num_samples: int | None, quantize: bool,
                      batch_size: int) -> Features | None:
    """The generated features a streamed case accumulated for these options (None if it did not)."""
    if getattr(ctx, "num_samples", None) is None:
        return None
    stream = ctx.shared.get(stream_key(ext, quantize, batch_size, generated_total(ctx, num_samples)))
    if stream is None or not stream.done:
        return None
    feats = stream.finish()
    cached, stream.used = getattr(stream, "used", False), True
    return Features(feats, fid_features_to_statistics(feats), generated_key(ext, stream.digest(), batch_size), cached)


def fid_from_stats(a: dict, b: dict) -> float:
    """FID from two ``{"mu", "sigma"}`` statistics (torch-fidelity's ``fid_statistics_to_metric``)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    return float(fid_statistics_to_metric(a, b, False)[KEY_METRIC_FID])


def fid_from_features(a: torch.Tensor, b: torch.Tensor) -> float:
    return fid_from_stats(fid_features_to_statistics(a), fid_features_to_statistics(b))


def kid_from_features(a: torch.Tensor, b: torch.Tensor, subsets: int = 100, subset_size: int = 1000) -> tuple[float, float]:
    """(mean, std) over subsets of the unbiased MMD^2 with KID's cubic kernel (torch-fidelity's
    ``kid_features_to_metric``; subset draws seeded by its default ``rng_seed``)."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    try:  # many small matmuls: one BLAS thread is faster (much faster on a loaded machine)
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn brings it
        threadpool_limits = None
    if threadpool_limits is None:
        out = kid_features_to_metric(a, b, kid_subsets=subsets, kid_subset_size=subset_size, verbose=False)
    else:
        with threadpool_limits(1):
            out = kid_features_to_metric(a, b, kid_subsets=subsets, kid_subset_size=subset_size, verbose=False)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def prc_from_features(generated: torch.Tensor, real: torch.Tensor, neighborhood: int = 3) -> dict[str, float]:
    """precision, recall and f_score (torch-fidelity's ``prc_features_to_metric``)."""
    from torch_fidelity.metric_prc import (KEY_METRIC_F_SCORE, KEY_METRIC_PRECISION, KEY_METRIC_RECALL,
                                           prc_features_to_metric)

    out = prc_features_to_metric(generated, real, prc_neighborhood=neighborhood, verbose=False)
    return {"precision": float(out[KEY_METRIC_PRECISION]), "recall": float(out[KEY_METRIC_RECALL]),
            "f_score": float(out[KEY_METRIC_F_SCORE])}


def default_reference_split(ext: FidelityExtractor) -> str:
    """The split the extractor was trained on, if any (so the floor sample is unseen by it, like the
    generated samples), else ``test``."""
    trained_on = getattr(ext, "trained_on", None)
    return trained_on if trained_on in ("train", "test") else "test"


def feature_set(ext: FidelityExtractor, ctx, which: str, num_samples: int | None = None,
                reference_split: str | None = None, reference_num_samples: int | None = None,
                quantize: bool = True, batch_size: int = 64) -> FeatureSet:
    """``ctx.feature_set(space, which)`` for the built-in extractors (the public metric API of
    :class:`bench.context.MetricContext`): the features of the generated samples (the first
    ``num_samples``), of the reference set or of the noise-floor sample (as many rows as generated
    samples, other split), computed exactly as :class:`FID` does with the same options, so they share
    its store entries and its in-memory cache."""
    ext.prepare()
    f = streamed_features(ext, ctx, num_samples, quantize, batch_size)
    if f is None:
        x = generated(ctx, num_samples)
        f = generated_features(ext, x, ctx.data, quantize, batch_size) if which == "generated" else None
        n = len(x)
    else:
        n = len(f.features)
    if which == "generated":
        return FeatureSet(f.features, None, None, f.key, f.cached)
    sets = real_sets(ctx.dataset, n, reference_split or default_reference_split(ext), reference_num_samples,
                     ctx.log, lazy=True)
    real, split, labels = ((sets.reference, sets.reference_split, sets.reference_labels) if which == "reference"
                           else (sets.floor, sets.floor_split, sets.floor_labels))
    f = real_features(ext, real, ctx.data, split, quantize, batch_size, ctx.store, ctx.log)
    return FeatureSet(f.features, labels, split, f.key, f.cached)


class _Fidelity(abc.ABC):
    """Common parameters: ``extractor`` (a registered feature extractor, name or spec; ``auto``),
    ``num_samples`` (generated samples used, default all), ``reference_split`` (the floor sample
    comes from the other split; default: the split the extractor was trained on, if any, so that
    the floor sample is unseen by the extractor just like generated samples are, else ``test``),
    ``reference_num_samples`` (default all), ``quantize``
    (quantise generated samples to the data's levels before the uint8 conversion), ``batch_size``
    (feature extraction), ``key`` (metric key prefix). ``fid`` also takes ``floor`` (default true;
    false skips the noise-floor sample: no ``fid_floor``, a third less feature extraction when cold)."""

    default_key = "?"
    #: recentre the bootstrap interval on the estimate (:mod:`bench_metrics.bootstrap`)
    biased = False

    def __init__(self, extractor: str | dict[str, Any] = "auto",
                 num_samples: Annotated[int, Field(gt=1)] | None = None,
                 reference_split: Literal["train", "test"] | None = None,
                 reference_num_samples: Annotated[int, Field(gt=1)] | None = None,
                 quantize: bool = True, batch_size: Annotated[int, Field(gt=0)] = 64,
                 key: str | None = None, bootstrap: Annotated[int, Field(ge=0)] = 200, floor: bool = True,
                 context=None):
        built = context.build("feature_extractor", extractor)
        self.floor = floor
        self.extractor = as_fidelity_extractor(built, context.data)
        self.extractor.device = getattr(context, "device", "cpu")  # features on CUDA when the case runs there
        self.reference_split = reference_split or default_reference_split(self.extractor)
        self.num_samples = num_samples
        self.reference_num_samples, self.quantize, self.batch_size = reference_num_samples, quantize, batch_size
        self.key = key or self.default_key
        self.bootstrap = bootstrap

    # ------------------------------------------------------------------ shared steps
    def _real(self, dataset, n: int, store, log) -> tuple[RealSets, Features, Features | None]:
        self.extractor.prepare()
        sets = real_sets(dataset, n, self.reference_split, self.reference_num_samples, log, lazy=True)
        ref = real_features(self.extractor, sets.reference, dataset.info, sets.reference_split, self.quantize,
                            self.batch_size, store, log)
        floor = None if not self.floor else real_features(self.extractor, sets.floor, dataset.info, sets.floor_split,
                                                          self.quantize, self.batch_size, store, log)
        return sets, ref, floor

    def precompute(self, dataset, num_samples: int | None, store, log=lambda m: None) -> dict[str, Any]:
        """Compute (or find) the reference and floor features a case with ``num_samples`` generated
        samples will need."""
        caps = [c for c in (self.num_samples, num_samples) if c]
        n = min(caps) if caps else len(dataset.split(OTHER_SPLIT[self.reference_split]))
        sets, ref, floor = self._real(dataset, n, store, log)
        return {"metric": self.key, "extractor": self.extractor.describe(), "dataset": dataset.info.name,
                "reference": {"split": sets.reference_split, "num_samples": len(sets.reference), "key": ref.key,
                              "cached": ref.cached},
                "floor": floor and {"split": sets.floor_split, "num_samples": len(sets.floor), "key": floor.key,
                                    "cached": floor.cached}}

    def accumulate(self, ctx, chunk: torch.Tensor, start: int) -> None:
        """Streaming form (docs/plugins.md): extract the features of one chunk of generated samples
        while the case samples; :meth:`compute` then reads them from ``ctx.shared``."""
        accumulate_generated(self.extractor, ctx, chunk, start, self.num_samples, self.quantize, self.batch_size)

    def _generated(self, ctx) -> Features:
        self.extractor.prepare()
        got = streamed_features(self.extractor, ctx, self.num_samples, self.quantize, self.batch_size)
        if got is not None:
            return got
        return generated_features(self.extractor, generated(ctx, self.num_samples), ctx.data, self.quantize,
                                  self.batch_size)

    def compute(self, ctx) -> dict[str, float]:
        gen = self._generated(ctx)
        n_gen = len(gen.features)
        sets, ref, floor = self._real(ctx.dataset, n_gen, ctx.store, ctx.log)
        k = self.key
        values = self.values(gen, ref, floor)
        n, m, d = len(gen.features), len(ref.features), gen.features.shape[1]
        if self.bootstrap and bootstrap.affordable(k, self.bootstrap_operations(n, m, d), ctx.log):
            values.update(self.intervals(gen.features, ref.features, values))
        if floor is not None and len(sets.floor) < n_gen:  # the floor is smaller: the value at its size too
            nf = len(sets.floor)
            small = Features(gen.features[:nf], fid_features_to_statistics(gen.features[:nf]), gen.key, True)
            values.update({f"{name}_at_floor_n": v for name, v in self.values(small, ref, None).items()})
        values.update({f"{k}_num_samples": float(n_gen), f"{k}_ref_cached": float(ref.cached),
                       f"{k}_feature_dim": float(gen.features.shape[1]), **sets.counts(k)})
        if floor is None:
            del values[f"{k}_floor_num_samples"]
        values.update({f"{k}_{name}": v for name, v in self.extractor.metrics().items()})
        desc = self.extractor.describe()
        sha = f", weights sha256 {desc['weights_sha256'][:12]}" if desc.get("weights_sha256") else ""
        ctx.log(f"{k}: extractor {desc['name']} (layer {desc['feature_layer']}, d={gen.features.shape[1]}{sha}), "
                f"{n_gen} generated vs {len(sets.reference)} {sets.reference_split}; "
                + (f"floor from {len(sets.floor)} {sets.floor_split}" if floor is not None else "no floor") + (f"; NOTE: {desc['note']}" if desc.get("note") else ""))
        record = {"metric": k, "extractor": desc, "preprocessing": preprocessing(ctx.data.levels, self.quantize),
                  "reference": {"split": sets.reference_split, "key": ref.key, "cached": ref.cached},
                  "floor": floor and {"split": sets.floor_split, "key": floor.key}, "batch_size": self.batch_size,
                  "values": values, "torch_fidelity_kwargs": self.extractor.fidelity_kwargs()}
        (ctx.artifact_dir / f"{k}.json").write_text(json.dumps(record, indent=1, default=str))
        return values

    @abc.abstractmethod
    def values(self, gen: Features, ref: Features, floor: Features | None) -> dict[str, float]:
        """The metric's values; with ``floor`` None only the main value (keyed ``key``)."""

    def intervals(self, gen: torch.Tensor, ref: torch.Tensor, values: dict[str, float]) -> dict[str, float]:
        """95% percentile intervals of the main ``values`` over ``bootstrap`` resamples of the generated
        and reference features, and ``<key>_boot_n``."""
        rg, rr = bootstrap.draw(self.bootstrap, len(gen), len(ref), tag=self.key)
        out = {f"{self.key}_boot_n": float(self.bootstrap)}
        for name, reps in self.replicates(gen, ref, rg, rr).items():
            out.update(bootstrap.interval(name, reps, values[name] if self.biased else None))
        return out

    @abc.abstractmethod
    def replicates(self, gen, ref, rg, rr) -> dict[str, torch.Tensor]:
        """Bootstrap replicates of each main value, keyed by its logged name."""

    def bootstrap_operations(self, n: int, m: int, d: int) -> float:
        """About how many multiply-adds the bootstrap needs for n generated and m reference rows in d dimensions."""
        return (n + m) ** 2 * d + 2 * self.bootstrap * (n + m) ** 2  # pairwise matrices, then one pass per resample


class FID(_Fidelity):
    """Metric ``fid``: logs ``fid``, ``fid_floor``, ``fid_num_samples``, ``fid_ref_num_samples``,
    ``fid_floor_num_samples``, ``fid_ref_cached``, ``fid_feature_dim`` (+ extractor numbers)."""

    default_key = "fid"
    biased = True

    def values(self, gen, ref, floor):
        out = {self.key: fid_from_stats(gen.stats, ref.stats)}
        if floor is not None:
            out[f"{self.key}_floor"] = fid_from_stats(floor.stats, ref.stats)
        return out

    def replicates(self, gen, ref, rg, rr):
        return {self.key: bootstrap.frechet_replicates(gen, ref, rg, rr)}

    def bootstrap_operations(self, n, m, d):
        k = min(n, m)
        if d > k:  # the n x m form
            return n * m * d + self.bootstrap * (n * m * k + 10 * k ** 3)
        return self.bootstrap * ((n + m) * d * d + 30 * d ** 3)  # covariances and eigendecompositions


class KID(_Fidelity):
    """Metric ``kid``: ``kid`` (mean over subsets) and ``kid_std``, with ``kid_floor``; extra
    parameters ``subsets`` and ``subset_size`` (capped at the smallest set, logged)."""

    default_key = "kid"

    def __init__(self, extractor: str | dict[str, Any] = "auto",
                 num_samples: Annotated[int, Field(gt=1)] | None = None,
                 reference_split: Literal["train", "test"] | None = None,
                 reference_num_samples: Annotated[int, Field(gt=1)] | None = None,
                 quantize: bool = True, batch_size: Annotated[int, Field(gt=0)] = 64, key: str | None = None,
                 subsets: Annotated[int, Field(gt=0)] = 100, subset_size: Annotated[int, Field(gt=1)] = 1000,
                 bootstrap: Annotated[int, Field(ge=0)] = 200, context=None):
        super().__init__(extractor, num_samples, reference_split, reference_num_samples, quantize, batch_size,
                         key, bootstrap, True, context)
        self.subsets, self.subset_size = subsets, subset_size

    def values(self, gen, ref, floor):
        sizes = [self.subset_size, len(gen.features), len(ref.features)] + ([len(floor.features)] if floor else [])
        s = min(sizes)
        a = kid_from_features(gen.features, ref.features, self.subsets, s)
        k = self.key
        if floor is None:
            return {k: a[0]}
        b = kid_from_features(floor.features, ref.features, self.subsets, s)
        return {k: a[0], f"{k}_std": a[1], f"{k}_floor": b[0], f"{k}_floor_std": b[1],
                f"{k}_subset_size": float(s), f"{k}_subsets": float(self.subsets)}

    def replicates(self, gen, ref, rg, rr):
        kernels = (bootstrap.kid_kernel(gen, gen), bootstrap.kid_kernel(ref, ref), bootstrap.kid_kernel(gen, ref))
        return {self.key: bootstrap.mmd2_replicates(*kernels, rg, rr)}


class PRC(_Fidelity):
    """Metric ``prc``: ``prc_precision``, ``prc_recall``, ``prc_f_score``, and the same for the real
    sample (``prc_precision_real``, ``prc_recall_real``: what a perfect model would get); extra
    parameter ``neighborhood`` (k of the k-NN balls)."""

    default_key = "prc"

    def __init__(self, extractor: str | dict[str, Any] = "auto",
                 num_samples: Annotated[int, Field(gt=1)] | None = None,
                 reference_split: Literal["train", "test"] | None = None,
                 reference_num_samples: Annotated[int, Field(gt=1)] | None = None,
                 quantize: bool = True, batch_size: Annotated[int, Field(gt=0)] = 64, key: str | None = None,
                 neighborhood: Annotated[int, Field(gt=0)] = 3, bootstrap: Annotated[int, Field(ge=0)] = 200,
                 context=None):
        super().__init__(extractor, num_samples, reference_split, reference_num_samples, quantize, batch_size,
                         key, bootstrap, True, context)
        self.neighborhood = neighborhood

    def values(self, gen, ref, floor):
        if floor is None:
            return {}
        a = prc_from_features(gen.features, ref.features, self.neighborhood)
        b = prc_from_features(floor.features, ref.features, self.neighborhood)
        k = self.key
        return {f"{k}_precision": a["precision"], f"{k}_recall": a["recall"], f"{k}_f_score": a["f_score"],
                f"{k}_precision_real": b["precision"], f"{k}_recall_real": b["recall"]}

    def replicates(self, gen, ref, rg, rr):
        reps = bootstrap.prc_replicates(gen, ref, rg, rr, self.neighborhood)
        return {f"{self.key}_{name}": r for name, r in reps.items()}


_CLASSES = {"fid": FID, "kid": KID, "prc": PRC}


def precompute_reference(context, metric_spec: dict[str, Any] | str | None = None,
                         num_samples: int | None = None) -> dict[str, Any]:
    """Precompute the cached reference features/statistics (and the floor sample's) for ``bench ref``.

    ``context``: a :class:`bench.context.BuildContext` of the dataset (``.dataset``, ``.data``,
    ``.store``, ``.build``, ``.log``). ``metric_spec``: the (resolved) ``fid``/``kid``/``prc`` spec of a
    suite, e.g. ``{"name": "fid", "extractor": "digits-classifier"}`` (default ``{"name": "fid"}``:
    extractor ``auto``). ``num_samples``: the case's ``eval.num_samples`` (sets the floor sample's
    size; default the reference split's size). Returns a summary with the store keys and whether
    each entry was already cached. Idempotent: a second call finds everything in the store.
    """
    spec = {"name": metric_spec} if isinstance(metric_spec, str) else dict(metric_spec or {"name": "fid"})
    name = spec.pop("name", "fid")
    spec.pop("id", None)
    if name not in _CLASSES:
        raise ValueError(f"precompute_reference: '{name}' is not a fidelity metric ({', '.join(_CLASSES)})")
    metric = _CLASSES[name](**spec, context=context)
    return metric.precompute(context.dataset, num_samples, context.store, context.log)
