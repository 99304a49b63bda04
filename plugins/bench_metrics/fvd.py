"""Metric ``fvd``: the Frechet video distance in the feature space of a video extractor.

With features f = phi(clip) of a video extractor (:mod:`bench_metrics.video_extractors`) and the
Gaussian fits (mean mu, covariance S, ddof 1) of two sets of clips (Unterthiner et al. 2018, the
FID formula of diffusion-math.md applied to video features),

    FVD = |mu_g - mu_r|^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2))

(computed by torch-fidelity's ``fid_statistics_to_metric``, as ``fid``).

Sources (``source``):

- ``predict`` (MCVD's protocol): the family predicts ``num_videos`` test clips from their context
  (the ``video`` metric's splits and calling convention, :func:`bench_metrics.video.predict`; the
  outputs are shared with ``video``), ``trajectories`` K times. A generated clip is the true
  context frames with the predicted frames in place, over the frames ``context + targets``. The
  reference is the same frames of the other split's clips; ``fvd`` is the mean over the K
  trajectories of FVD(trajectory k, reference) (MCVD reports the average over trajectories), and
  the floor ``fvd_floor`` is FVD(true clips of the same test videos, reference): what a perfect
  predictor gets, a real-vs-real distance between the two splits (small, positive).
- ``samples``: the case's generated clips against the reference split (default: the split the
  extractor was trained on, else ``test``), with the floor from the other split, the same size as
  the generated set (:func:`bench_metrics.common.real_sets`, as ``fid``).

Reference features are cached in the store under a content hash of (the uint8 clips, the
extractor's description). With ``bootstrap`` B > 0: a 95% interval ``fvd_ci_lo``/``_hi``, the
percentile interval of B replicates recentred on the estimate (FVD is biased, as FID), each
replicate the mean over trajectories of the Frechet distance of one resample of the generated
clips (the same clip rows for every trajectory) and one of the reference
(:func:`bench_metrics.bootstrap.frechet_replicates`).

Logged: ``fvd``, ``fvd_floor``, ``fvd_ci_lo``/``_hi``, ``fvd_boot_n``, ``fvd_num_videos``,
``fvd_ref_num_samples``, ``fvd_floor_num_samples``, ``fvd_feature_dim``, ``fvd_trajectories``,
``fvd_traj_sd`` (K > 1: the standard deviation of the K per-trajectory values), ``fvd_ref_cached``,
``fvd_published_comparable`` (1 only for an ``i3d`` file with the standard FVD I3D signature; 0
for local feature spaces), the
extractor's numbers (``fvd_extractor_*``), and ``fvd.json`` with the extractor's description.
"""
from __future__ import annotations

import json
import statistics
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from bench.context import MetricSkipped
from bench.errors import UserError
from bench.store import content_key
from bench.types import OmitAtDefault

from . import bootstrap
from .common import OTHER_SPLIT, fixed_subset, real_sets, tensor_digest
from .fidelity import fid_features_to_statistics, fid_from_stats
from .video import check_task, predict, task_frames
from .video_extractors import to_uint8_video

REF_KIND = "video_reference"


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """FVD between the Gaussian fits of feature sets ``a`` (n, d) and ``b`` (m, d)."""
    return fid_from_stats(fid_features_to_statistics(a.to(torch.float64)),
                          fid_features_to_statistics(b.to(torch.float64)))


def reference_features(ext, clips: torch.Tensor, info, split: str, store, log=lambda m: None
                       ) -> tuple[torch.Tensor, bool]:
    """Features of real clips, from the store or computed and stored; (features, cached)."""
    key = content_key("video-reference", 1, tensor_digest(to_uint8_video(clips, info.levels)), info.name, split,
                      ext.describe())
    with store.lock(REF_KIND, key):
        entry = store.get(REF_KIND, key)
        if entry is not None:
            return torch.load(entry / "features.pt", map_location="cpu", weights_only=True), True
        feats = ext.features(clips)
        store.put(REF_KIND, key, lambda d: torch.save(feats, d / "features.pt"),
                  meta={"dataset": info.name, "split": split, "num_samples": len(clips), "extractor": ext.name})
        log(f"reference video features of {info.name}/{split} (n={len(clips)}, {ext.name}) computed and stored")
        return feats, False


class FVD:
    """Metric ``fvd`` (see the module docstring): ``extractor`` (a video feature extractor, default
    ``moving-digits-classifier``), ``source`` (``predict`` or ``samples``); for ``predict``:
    ``context_frames``, ``context_stride``, ``horizon``, ``num_videos``, ``split``, ``batch_size``
    (as the ``video`` metric) and ``trajectories`` (K); for ``samples``: ``num_samples``,
    ``reference_split``; both: ``reference_num_samples``, ``bootstrap`` (B), ``key`` (default ``fvd``
    for ``predict``, ``fvd_{task}`` for the other tasks); ``task`` and ``future_frames`` choose the
    frames as the ``video`` metric's tasks do (``generate``: no context, the first ``horizon`` frames
    of a clip generated; the floor is then the true first ``horizon`` frames of the same test clips)."""

    def __init__(self, extractor: str | dict[str, Any] = "moving-digits-classifier",
                 source: Literal["predict", "samples"] = "predict",
                 context_frames: Annotated[int, Field(gt=0)] = 10, context_stride: Annotated[int, Field(gt=0)] = 1,
                 horizon: Annotated[int, Field(ge=0)] | None = None,
                 num_videos: Annotated[int, Field(gt=1)] | None = 64, split: Literal["train", "test"] = "test",
                 batch_size: Annotated[int, Field(gt=0)] = 16, trajectories: Annotated[int, Field(gt=0)] = 1,
                 num_samples: Annotated[int, Field(gt=1)] | None = None,
                 reference_split: Literal["train", "test"] | None = None,
                 reference_num_samples: Annotated[int, Field(gt=1)] | None = None,
                 bootstrap: Annotated[int, Field(ge=0)] = 200, key: str | None = None,
                 task: Annotated[Literal["predict", "interpolate", "past", "generate"], OmitAtDefault()] = "predict",
                 future_frames: Annotated[int, Field(gt=0), OmitAtDefault()] | None = None, context=None):
        self.extractor = context.build("feature_extractor", extractor)
        if getattr(self.extractor, "modality", None) != "video":
            raise UserError(f"fvd needs a video feature extractor (moving-digits-classifier, i3d), got "
                             f"{getattr(self.extractor, 'name', extractor)!r}")
        self.source, self.split, self.batch_size, self.trajectories = source, split, batch_size, trajectories
        self.context_frames, self.context_stride, self.horizon = context_frames, context_stride, horizon
        self.num_videos, self.num_samples = num_videos, num_samples
        trained_on = getattr(self.extractor, "trained_on", None)
        self.reference_split = reference_split or (trained_on if trained_on in OTHER_SPLIT else "test")
        self.reference_num_samples, self.bootstrap = reference_num_samples, bootstrap
        self.task, self.future_frames = task, future_frames
        if source == "samples" and task != "predict":
            raise UserError(f"fvd: task {task!r} applies to source: predict (source: samples scores the case's own samples)")
        self.key = key or ("fvd" if task == "predict" else f"fvd_{task}")

    def sets(self, ctx) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, str, str]:
        """(generated clips per trajectory, reference clips, floor clips, reference split, floor split)."""
        if self.source == "samples":
            if ctx.samples is None:
                raise MetricSkipped("the case has no generated samples (no sampler)")
            x = ctx.samples if self.num_samples is None else ctx.samples[:self.num_samples]
            sets = real_sets(ctx.dataset, len(x), self.reference_split, self.reference_num_samples, ctx.log)
            return [x], sets.reference, sets.floor, sets.reference_split, sets.floor_split
        videos = ctx.dataset.split(self.split)
        check_task(ctx.family, self.task)
        ci, ti, _ = task_frames(videos.shape[1], self.task, self.context_frames, self.context_stride,
                                self.horizon, self.future_frames)
        rows = fixed_subset(torch.arange(len(videos)), self.num_videos, "video", self.split).tolist()
        preds = predict(ctx, self.split, rows, ci, ti, self.trajectories, self.batch_size)
        frames = sorted(ci + ti)
        truth = preds.truth[:, frames]
        cols = [frames.index(t) for t in ti]
        generated = []
        for pred in preds.pred:
            clip = truth.clone()
            clip[:, cols] = pred.to(clip.dtype)
            generated.append(clip)
        ref_split = OTHER_SPLIT[self.split]
        reference = fixed_subset(ctx.dataset.split(ref_split), self.reference_num_samples, "reference", ref_split)
        return generated, reference[:, frames], truth, ref_split, self.split

    def compute(self, ctx) -> dict[str, float]:
        if ctx.dataset.split(self.split).dim() != 5:
            raise MetricSkipped("fvd needs video data (N, T, C, H, W)")
        ext, k = self.extractor, self.key
        ext.prepare()
        generated, reference, floor, ref_split, floor_split = self.sets(ctx)
        ref, ref_cached = reference_features(ext, reference, ctx.data, ref_split, ctx.store, ctx.log)
        gen = [ext.features(g) for g in generated]
        per_traj = [frechet_distance(g, ref) for g in gen]
        out = {k: sum(per_traj) / len(per_traj), f"{k}_floor": frechet_distance(ext.features(floor), ref),
               f"{k}_num_videos": float(len(generated[0])), f"{k}_ref_num_samples": float(len(reference)),
               f"{k}_floor_num_samples": float(len(floor)), f"{k}_feature_dim": float(ref.shape[1]),
               f"{k}_trajectories": float(len(gen)), f"{k}_ref_cached": float(ref_cached),
               f"{k}_published_comparable": float(bool(ext.comparable_with_published))}
        if len(gen) > 1:
            out[f"{k}_traj_sd"] = statistics.stdev(per_traj)
        n, m, d = len(gen[0]), len(ref), ref.shape[1]
        ops = len(gen) * self.bootstrap * ((n + m) * d * d + 30 * d ** 3)
        if self.bootstrap and bootstrap.affordable(k, ops, ctx.log):
            rg, rr = bootstrap.draw(self.bootstrap, n, m, tag=k)
            reps = torch.stack([bootstrap.frechet_replicates(g, ref, rg, rr) for g in gen]).mean(0)
            out.update(bootstrap.interval(k, reps, out[k]))
            out[f"{k}_boot_n"] = float(self.bootstrap)
        out.update({f"{k}_{name}": v for name, v in ext.metrics().items()})
        desc = ext.describe()
        ctx.log(f"{k}: extractor {desc['name']} (d={d}), {len(gen)} trajectories of {n} clips vs {m} {ref_split} "
                f"clips; floor: {len(floor)} real {floor_split} clips"
                + ("" if ext.comparable_with_published else "; NOT comparable with published FVD (not the published I3D network and file)"))
        record = {"metric": k, "source": self.source, "task": self.task, "extractor": desc, "reference_split": ref_split,
                  "floor_split": floor_split, "per_trajectory": per_traj, "values": out}
        (ctx.artifact_dir / f"{k}.json").write_text(json.dumps(record, indent=1, default=str))
        return out
