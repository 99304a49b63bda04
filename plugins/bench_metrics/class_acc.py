"""Metrics of class-conditional samples (docs/metrics.md "Class-conditional samples").

Both compare the samples with the classes they were generated for: the sampler's
``requested_labels(n)`` (bench_diffusion: sample i of a run gets class i mod K; any sampler that
exposes the method works). A case whose sampler requested no labels (an unconditional family) skips
them.

- ``class_acc``: the fraction of samples that the digits classifier (the ``digits-classifier``
  feature extractor's CNN, trained on the dataset's train split, the one FID uses on digits) assigns
  to their requested class, with a 95% percentile bootstrap interval (``bench_metrics.bootstrap``:
  accuracy is a mean of indicators, an unbiased estimator, so the interval is not recentred), and
  ``class_acc_real``: the same classifier's accuracy on the held-out test split (the value real data
  reach).
- ``fid_per_class``: for each class k, the FID between the generated samples requested as k and the
  reference rows labelled k, in the same feature space and with the same options as ``fid``; logs
  ``fid_class_<k>``, their mean ``fid_class_mean`` and ``fid_class_min_n`` (the smallest generated
  count of a class). FID is biased upwards at small n (the bias grows like d / n), so per-class values
  are comparable only between cases with the same sample counts; no interval is logged.
"""
from __future__ import annotations

from typing import Annotated, Any

import torch
from pydantic import Field

from bench.context import MetricSkipped

from . import bootstrap
from .common import generated
from .extractor_base import to_uint8_rgb
from .fidelity import FID, fid_from_features, generated_features


def requested_labels(ctx: Any, n: int) -> torch.Tensor:
    """The classes the first ``n`` samples were generated for, or MetricSkipped."""
    ask = getattr(ctx.sampler, "requested_labels", None)
    labels = ask(n) if ask is not None else None
    if labels is None:
        raise MetricSkipped("the samples were generated without requested labels (an unconditional family)")
    return torch.as_tensor(labels, dtype=torch.int64)


class ClassAccuracy:
    """Metric ``class_acc`` (module docstring). ``classifier``: the digits-classifier spec (its
    training options); ``num_samples``: generated samples used (default all); ``quantize``: quantise
    to the data's levels first, as the fidelity metrics do; ``bootstrap``: resamples (0: no interval)."""

    def __init__(self, classifier: str | dict[str, Any] = "digits-classifier",
                 num_samples: Annotated[int, Field(gt=0)] | None = None, quantize: bool = True,
                 bootstrap: Annotated[int, Field(ge=0)] = 200, context=None):
        self.classifier = context.build("feature_extractor", classifier)
        if not hasattr(self.classifier, "arch"):
            raise ValueError("class_acc needs the digits-classifier (a classifier with logits), "
                             f"got feature extractor {getattr(self.classifier, 'name', classifier)!r}")
        self.num_samples, self.quantize, self.bootstrap = num_samples, quantize, bootstrap

    def model(self) -> Any:
        from .digits_classifier import DigitsCNN

        self.classifier.prepare()
        payload = torch.load(self.classifier.weights_path, map_location="cpu", weights_only=True)
        net = DigitsCNN(**payload["arch"])
        net.load_state_dict(payload["state_dict"])
        return net.eval()

    def correct(self, net: Any, images: torch.Tensor, labels: torch.Tensor, levels: int | None) -> torch.Tensor:
        """1.0 where the classifier's argmax is the label, per row."""
        from .digits_classifier import threads

        u8 = to_uint8_rgb(images, levels, self.quantize)
        with torch.no_grad(), threads(1):
            pred = torch.cat([net(u8[lo:lo + 512]).argmax(1) for lo in range(0, len(u8), 512)])
        return (pred == labels).to(torch.float64)

    def compute(self, ctx) -> dict[str, float]:
        x = generated(ctx, self.num_samples)
        labels = requested_labels(ctx, len(x))
        net = self.model()
        hit = self.correct(net, x, labels, ctx.data.levels)
        acc = float(hit.mean())
        out = {"class_acc": acc, "class_acc_num_samples": float(len(x))}
        if self.bootstrap:
            (r,) = bootstrap.draw(self.bootstrap, len(hit), tag="class_acc")
            reps = r.counts @ hit / len(hit)  # the accuracy of each resample
            out.update(bootstrap.interval("class_acc", reps))
            out["class_acc_boot_n"] = float(self.bootstrap)
        real = self.correct(net, ctx.dataset.split("test"), torch.as_tensor(ctx.dataset.labels("test")),
                            ctx.data.levels)
        out["class_acc_real"] = float(real.mean())
        per = [float(hit[labels == k].mean()) for k in labels.unique().tolist()]
        ctx.log(f"class_acc: {acc:.4f} over {len(x)} samples ({len(per)} classes, per class "
                f"{min(per):.3f}..{max(per):.3f}); the classifier on real test data: {out['class_acc_real']:.4f}")
        return out


class PerClassFID(FID):
    """Metric ``fid_per_class`` (module docstring); FID's parameters (``extractor``, ``num_samples``,
    ``reference_split``, ...); ``key`` prefixes the logged names (default ``fid_class``)."""

    default_key = "fid_class"
    #: no streaming form: the features are split by the requested label of each sample, so the metric
    #: takes the held samples (bench.runner: up to ``eval.hold_samples``), not FID's feature stream
    accumulate = None

    def compute(self, ctx) -> dict[str, float]:
        x = generated(ctx, self.num_samples)
        labels = requested_labels(ctx, len(x))
        sets, ref, _ = self._real(ctx.dataset, len(x), ctx.store, ctx.log)
        if sets.reference_labels is None:
            raise MetricSkipped("fid_per_class needs a labelled dataset (dataset.labels(split))")
        gen = generated_features(self.extractor, x, ctx.data, self.quantize, self.batch_size).features
        ref_labels = torch.as_tensor(sets.reference_labels)
        out, counts = {}, []
        for k in labels.unique().tolist():
            g, r = gen[labels == k], ref.features[ref_labels == k]
            if len(g) < 2 or len(r) < 2:
                continue
            out[f"{self.key}_{k}"] = fid_from_features(g, r)
            counts.append(len(g))
        if not out:
            raise MetricSkipped("no class has two generated and two reference samples")
        out[f"{self.key}_mean"] = sum(out.values()) / len(out)
        out[f"{self.key}_min_n"] = float(min(counts))
        ctx.log(f"{self.key}: {len(counts)} classes, mean {out[f'{self.key}_mean']:.4g}, "
                f"{min(counts)}..{max(counts)} generated samples per class")
        return out


__all__ = ["ClassAccuracy", "PerClassFID", "requested_labels"]
