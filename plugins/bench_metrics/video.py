"""Metric ``video``: per-frame MSE, PSNR and SSIM of reconstructed, interpolated and extrapolated frames.

Interface a video family provides (capability ``"video_predict"``), the one calling convention::

    recon, pred = family.reconstruct_and_predict(context, context_index, target_index, rng)

``context``: the frames at the 0-based, increasing indices ``context_index``, ``(B, n_c, C, H, W)`` in
[-1, 1] (the family never sees the other frames); ``target_index``: the increasing indices of the frames
to predict (disjoint from ``context_index``; each after the first context frame for ``predict`` and
``interpolate``, before it for ``past``; may be empty);
``rng``: a :class:`bench.rng.PerSampleRNG` (for stochastic encoders; may be ignored). Returns ``recon``
``(B, n_c, C, H, W)``, the reconstruction of the context frames, and ``pred`` ``(B, n_t, C, H, W)``, the
frames at ``target_index``, both in [-1, 1]. Called under ``torch.no_grad()``.

Tasks (parameter ``task``; thesis 7.2.3). A family lists the tasks it does in its attribute
``video_tasks`` (default ``("predict",)``); a metric asking for another task is skipped with the reason.

- ``predict`` (default): the splits below.
- ``interpolate``: ``context_frames`` = p past frames 0 .. p-1 and ``future_frames`` = f frames
  p+h .. p+h+f-1 as context, the h = ``horizon`` frames between them as targets
  (``target_index`` then lies between two runs of context frames).
- ``past``: the ``context_frames`` frames h .. h+n_c-1 as context, the h = ``horizon`` frames before
  them as targets (``target_index`` then precedes ``context_index``).
- ``generate`` (``fvd`` only: there is nothing to compare a free sample with frame by frame): no
  context (``context_index`` empty, ``context`` of 0 frames), the ``horizon`` first frames as targets.

For a task other than ``predict`` the keys are named by the task and cover its target frames only:
``{task}_{m}``, ``{task}_{m}_t{t}``, ``{task}_{m}_best`` (K > 1), ``{task}_{m}_ci_lo``/``_hi`` and
``{task}_num_videos``, and the artifacts are ``video_{task}_per_frame.csv`` and ``video_{task}_per_clip.csv``; so one case can hold a ``video`` metric per task.

Splits. The context is ``context_frames`` frames ``0, s, 2s, ...`` (s = ``context_stride``), the last
at L = (context_frames - 1) s. Reconstruction: the context frames; interpolation: the other frames
before L (none when s = 1); extrapolation: the ``horizon`` frames L+1 ... L+horizon (default: to the
end of the clip). Prediction: interpolation and extrapolation together.

Frames are compared as images: mapped to [0, 1] by u = (x + 1) / 2 and clamped (SSIM's luminance term
is not shift invariant, so it must see non-negative intensities), data range R = 1, per frame (all
pixels and channels of one frame):

    MSE  = mean (u_a - u_b)^2
    PSNR = 10 log10(R^2 / MSE), capped at 100 dB (MSE floored at 1e-10 R^2, so a perfect frame stays finite)
    SSIM (torchmetrics) = mean over channels and over the windows that lie inside the frame of
           ((2 mu_a mu_b + C1)(2 s_ab + C2)) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2)),
           C1 = (0.01 R)^2, C2 = (0.03 R)^2, local statistics under an 11x11 Gaussian window of
           sigma 1.5 (Wang et al. 2004; torchmetrics' SSIM map with its reflection-padded border
           rows and columns dropped; equal to scikit-image's ``structural_similarity(
           gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``).

Frames need at least 11 pixels a side. Averages over videos are taken per frame. Logged, for m in
mse, psnr, ssim: ``recon_m``, ``interp_m``, ``extrap_m`` and ``pred_m`` (means over the split's
frames; a split without frames is not logged), per frame ``recon_m_t{t}`` and ``pred_m_t{t}`` (t the
1-based frame number), ``video_num_videos``, and for interp, extrap and pred a 95% Student-t interval
over clips, ``{split}_{m}_ci_lo`` / ``_ci_hi`` (:func:`clip_intervals`: it covers the test clips of one
trained model, not training seeds). Artifacts: the per-frame table ``video_per_frame.csv`` and the
per-clip, per-trajectory split means ``video_per_clip.csv`` (for paired comparisons on the same clips).

Trajectories (MCVD's protocol, ``trajectories`` K): each clip is predicted K times, trajectory k
drawing from stream :func:`trajectory_stream` (k) of the clip's generator (trajectory 0 is the
single-trajectory stream, so K = 1 is the plain metric). The keys above are then means over clips
and trajectories, and K > 1 adds ``{split}_{m}_best``: per clip the best trajectory's mean over the
split's frames (max for PSNR and SSIM, min for MSE), averaged over clips; and ``video_trajectories``.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from bench.context import MetricSkipped
from bench.rng import PerSampleRNG
from bench.stats import t_interval
from bench.types import OmitAtDefault

from .common import fixed_subset

PSNR_CAP = 100.0  # dB: PSNR of frames with MSE <= 1e-10 (data range 1)
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] -> [0, 1], clamped, float64."""
    return ((x.to(torch.float64) + 1) / 2).clamp(0, 1)


def _frames(a: torch.Tensor) -> torch.Tensor:
    """``(B, T, C, H, W)`` -> ``(B T, C, H, W)`` float64."""
    return a.reshape(-1, *a.shape[2:]).to(torch.float64)


def mse_per_frame(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B, T, C, H, W)`` pairs -> ``(B, T)`` mean squared error."""
    return (a.to(torch.float64) - b.to(torch.float64)).pow(2).flatten(2).mean(2)


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of data range 1, capped at ``PSNR_CAP`` (float64 closed form; torchmetrics'
    ``peak_signal_noise_ratio`` agrees to 6e-8 relative, its 10 / ln 10 being a float32 constant)."""
    return (10 * torch.log10(1.0 / mse)).clamp_max(PSNR_CAP)


def psnr_per_frame(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B, T, C, H, W)`` pairs in [0, 1] -> ``(B, T)`` PSNR in dB."""
    return psnr_from_mse(mse_per_frame(a, b))


def ssim_per_frame(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B, T, C, H, W)`` pairs in [0, 1] -> ``(B, T)`` SSIM over the windows inside the frame."""
    h, w = a.shape[-2:]
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {h}x{w}")
    from torchmetrics.functional.image import structural_similarity_index_measure  # not at validation

    _, full = structural_similarity_index_measure(_frames(a), _frames(b), gaussian_kernel=True,
                                                  sigma=SSIM_SIGMA, data_range=1.0, k1=0.01, k2=0.03,
                                                  reduction="none", return_full_image=True)
    r = SSIM_WINDOW // 2  # windows centred closer to the border see reflected pixels: dropped
    return full[..., r:h - r, r:w - r].flatten(1).mean(1).reshape(a.shape[:2])


def video_splits(frames: int, context_frames: int, context_stride: int,
                 horizon: int | None) -> dict[str, list[int]]:
    """0-based frame indices of the ``recon``, ``interp`` and ``extrap`` splits of a clip."""
    last = (context_frames - 1) * context_stride
    if last >= frames:
        raise ValueError(f"context_frames {context_frames} at stride {context_stride} need {last + 1} frames, "
                         f"the clip has {frames}")
    horizon = frames - 1 - last if horizon is None else horizon
    if last + horizon >= frames:
        raise ValueError(f"the last context frame ({last + 1}) + horizon {horizon} exceeds the clip length {frames}")
    recon = list(range(0, last + 1, context_stride))
    return {"recon": recon, "interp": [t for t in range(last) if t not in recon],
            "extrap": list(range(last + 1, last + 1 + horizon))}


Task = Literal["predict", "interpolate", "past", "generate"]
DEFAULT_TASKS = ("predict",)


def family_tasks(family: Any) -> tuple[str, ...]:
    """The video tasks a family does: its ``video_tasks`` attribute, else ``("predict",)``."""
    return tuple(getattr(family, "video_tasks", DEFAULT_TASKS))


def task_frames(frames: int, task: str, context_frames: int, context_stride: int, horizon: int | None,
                future_frames: int | None) -> tuple[list[int], list[int], dict[str, list[int]]]:
    """(context index, target index, splits) of a clip of ``frames`` frames for ``task`` (module
    docstring); ``predict`` has the splits of :func:`video_splits`, the other tasks one split named
    by the task."""
    if task == "predict":
        splits = video_splits(frames, context_frames, context_stride, horizon)
        return splits["recon"], sorted(splits["interp"] + splits["extrap"]), splits
    if context_stride != 1:
        raise ValueError(f"video task {task!r} takes consecutive context frames (context_stride 1)")
    if task == "interpolate":
        if not future_frames or horizon is None:
            raise ValueError("video task 'interpolate' needs future_frames >= 1 and horizon (the frames between)")
        ci = list(range(context_frames)) + list(range(context_frames + horizon, context_frames + horizon + future_frames))
        ti = list(range(context_frames, context_frames + horizon))
    elif task == "past":
        if horizon is None:
            raise ValueError("video task 'past' needs horizon (the frames before the context)")
        ci, ti = list(range(horizon, horizon + context_frames)), list(range(horizon))
    elif task == "generate":
        ci, ti = [], list(range(frames if horizon is None else horizon))
    else:
        raise ValueError(f"unknown video task {task!r}: use predict, interpolate, past or generate")
    if max(ci + ti) >= frames or not ti:
        raise ValueError(f"video task {task!r} needs frames 1-{max(ci + ti) + 1}, the clip has {frames}")
    return ci, ti, {task: ti}


def check_task(family: Any, task: str) -> None:
    """MetricSkipped unless ``family`` lists ``task`` in its ``video_tasks``."""
    if task not in family_tasks(family):
        raise MetricSkipped(f"the family does not do the video task {task!r} (it does: {', '.join(family_tasks(family))})")


@dataclass
class Predictions:
    """The family's outputs on ``rows`` of a split, per trajectory: ``recon[k]`` ``(N, n_c, C, H, W)``
    and ``pred[k]`` ``(N, n_t, C, H, W)`` (trajectory k), and ``truth``, the rows' full clips."""

    rows: list[int]
    context_index: list[int]
    target_index: list[int]
    truth: torch.Tensor
    recon: list[torch.Tensor]
    pred: list[torch.Tensor]


#: per family: (seed, split, rows, context index, target index, batch size, trajectory) -> (recon, pred)
_PREDICTIONS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def trajectory_stream(k: int) -> str:
    """The random stream of trajectory k (0-based; trajectory 0 is the single-trajectory stream)."""
    return "video" if k == 0 else f"video/trajectory{k}"


def predict(ctx, split: str, rows: list[int], context_index: list[int], target_index: list[int],
            trajectories: int, batch_size: int) -> Predictions:
    """``family.reconstruct_and_predict`` on the clips ``rows`` of ``split``, once per trajectory
    (trajectory k draws from :func:`trajectory_stream` (k) of each clip's per-sample generator). The
    outputs are kept for the family's lifetime, so that the ``video`` and ``fvd`` metrics of a case
    share them (the same arguments give the same outputs: each clip's generator is fixed)."""
    fam = ctx.family
    if not hasattr(fam, "reconstruct_and_predict"):
        raise MetricSkipped("the family has no reconstruct_and_predict(context, context_index, target_index, rng)")
    videos = ctx.dataset.split(split)
    ci, ti = list(context_index), list(target_index)
    try:
        memo = _PREDICTIONS.setdefault(fam, {})
    except TypeError:  # a family that cannot be weakly referenced: no sharing
        memo = {}
    out = Predictions(rows, ci, ti, videos[rows], [], [])
    for k in range(trajectories):
        key = (ctx.seed, split, tuple(rows), tuple(ci), tuple(ti), batch_size, k)
        if key not in memo:
            recons, preds = [], []
            for lo in range(0, len(rows), batch_size):
                batch = rows[lo:lo + batch_size]
                v = videos[batch]
                with torch.no_grad():
                    recon, pred = fam.reconstruct_and_predict(
                        v[:, ci], tuple(ci), tuple(ti),
                        PerSampleRNG.for_indices(ctx.seed, batch, stream=trajectory_stream(k)))
                want_r, want_p = (len(batch), len(ci), *v.shape[2:]), (len(batch), len(ti), *v.shape[2:])
                if tuple(recon.shape) != want_r or tuple(pred.shape) != want_p:
                    raise ValueError(f"reconstruct_and_predict returned {tuple(recon.shape)} and "
                                     f"{tuple(pred.shape)}, expected {want_r} and {want_p}")
                recons.append(recon)
                preds.append(pred)
            memo[key] = (torch.cat(recons), torch.cat(preds))
        out.recon.append(memo[key][0])
        out.pred.append(memo[key][1])
    return out


class VideoMetrics:
    """Metric ``video``: ``task`` (module docstring), ``context_frames`` (n_c), ``context_stride`` (s),
    ``horizon`` (default: the rest of the clip for ``predict``), ``future_frames`` (``interpolate``),
    ``num_videos`` (fixed subset of the split), ``batch_size``, ``split``, ``trajectories`` (K
    predictions per clip; K > 1 adds the best-of-K keys)."""

    def __init__(self, context_frames: Annotated[int, Field(gt=0)] = 10,
                 context_stride: Annotated[int, Field(gt=0)] = 1,
                 horizon: Annotated[int, Field(ge=0)] | None = None,
                 num_videos: Annotated[int, Field(gt=0)] | None = 64,
                 batch_size: Annotated[int, Field(gt=0)] = 16, split: Literal["train", "test"] = "test",
                 trajectories: Annotated[int, Field(gt=0)] = 1,
                 task: Annotated[Literal["predict", "interpolate", "past"], OmitAtDefault()] = "predict",
                 future_frames: Annotated[int, Field(gt=0), OmitAtDefault()] | None = None):
        self.context_frames, self.context_stride, self.horizon = context_frames, context_stride, horizon
        self.num_videos, self.batch_size, self.split = num_videos, batch_size, split
        self.trajectories, self.task, self.future_frames = trajectories, task, future_frames

    def compute(self, ctx) -> dict[str, float]:
        if not hasattr(ctx.family, "reconstruct_and_predict"):
            raise MetricSkipped("the family has no reconstruct_and_predict(context, context_index, target_index, rng)")
        videos = ctx.dataset.split(self.split)
        if videos.dim() != 5:
            raise MetricSkipped(f"expected videos (N, T, C, H, W), got {tuple(videos.shape)}")
        check_task(ctx.family, self.task)
        ci, ti, splits = task_frames(videos.shape[1], self.task, self.context_frames, self.context_stride,
                                     self.horizon, self.future_frames)
        idx = fixed_subset(torch.arange(len(videos)), self.num_videos, "video", self.split)
        preds = predict(ctx, self.split, idx.tolist(), ci, ti, self.trajectories, self.batch_size)
        if self.task == "predict":
            return self._predict_keys(ctx, preds, ci, ti, splits, len(idx))
        return self._task_keys(ctx, preds, ti, len(idx))

    def _errors(self, got: list[torch.Tensor], true: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Per trajectory, (N, T) MSE, PSNR and SSIM of ``got[k]`` against ``true`` (both in [0, 1])."""
        per: dict[str, list[torch.Tensor]] = {"mse": [], "psnr": [], "ssim": []}
        b = self.batch_size
        for g in got:
            mse = torch.cat([mse_per_frame(g[lo:lo + b], true[lo:lo + b]) for lo in range(0, len(g), b)])
            per["mse"].append(mse)
            per["psnr"].append(psnr_from_mse(mse))
            per["ssim"].append(torch.cat([ssim_per_frame(g[lo:lo + b], true[lo:lo + b]) for lo in range(0, len(g), b)]))
        return per

    def _predict_keys(self, ctx, preds: "Predictions", ci, ti, splits, n) -> dict[str, float]:
        true = to_unit(preds.truth[:, ci + ti])
        per = self._errors([to_unit(torch.cat([recon, pred], 1)) for recon, pred in zip(preds.recon, preds.pred)], true)
        frame_of = ci + ti  # column j of the tables is frame frame_of[j]
        # per-frame means over videos, then over trajectories (exactly the video mean when K = 1)
        table = {name: torch.stack([v.mean(0) for v in vals]).mean(0) for name, vals in per.items()}
        out: dict[str, float] = {"video_num_videos": float(n)}
        parts = {**splits, "pred": ti}
        for part, frames in parts.items():
            cols = [frame_of.index(t) for t in frames]
            for name, m in table.items():
                if cols:
                    out[f"{part}_{name}"] = float(m[cols].mean())
                if part in ("recon", "pred"):
                    out.update({f"{part}_{name}_t{frame_of[j] + 1}": float(m[j]) for j in cols})
            if cols and self.trajectories > 1:
                out.update(best_of_trajectories(part, per, cols))
            if cols and part != "recon":
                out.update(clip_intervals(part, per, cols))
        if self.trajectories > 1:
            out["video_trajectories"] = float(self.trajectories)
        write_per_clip(ctx.artifact_dir / "video_per_clip.csv", preds.rows, per,
                       {part: [frame_of.index(t) for t in frames] for part, frames in parts.items() if frames})
        split_of = {t: part for part in ("recon", "interp", "extrap") for t in splits[part]}
        last = ci[-1]
        rows_csv = [f"{split_of[t]},{t + 1},{t - last if t > last else ''},"
                    + ",".join(f"{float(table[n][j]):.6g}" for n in ("mse", "psnr", "ssim"))
                    for j, t in sorted(enumerate(frame_of), key=lambda jt: jt[1])]
        (ctx.artifact_dir / "video_per_frame.csv").write_text("split,frame,horizon,mse,psnr,ssim\n"
                                                              + "\n".join(rows_csv) + "\n")
        return finite(out)

    def _task_keys(self, ctx, preds: "Predictions", ti, n) -> dict[str, float]:
        """Keys of a task other than ``predict``: ``{task}_{m}``, per frame and best-of-K, targets only."""
        task = self.task
        per = self._errors([to_unit(p) for p in preds.pred], to_unit(preds.truth[:, ti]))
        table = {name: torch.stack([v.mean(0) for v in vals]).mean(0) for name, vals in per.items()}
        out: dict[str, float] = {f"{task}_num_videos": float(n)}
        for name, m in table.items():
            out[f"{task}_{name}"] = float(m.mean())
            out.update({f"{task}_{name}_t{t + 1}": float(m[j]) for j, t in enumerate(ti)})
        cols = list(range(len(ti)))
        if self.trajectories > 1:
            out.update(best_of_trajectories(task, per, cols))
        out.update(clip_intervals(task, per, cols))
        write_per_clip(ctx.artifact_dir / f"video_{task}_per_clip.csv", preds.rows, per, {task: cols})
        rows_csv = [f"{t + 1}," + ",".join(f"{float(table[m][j]):.6g}" for m in ("mse", "psnr", "ssim"))
                    for j, t in enumerate(ti)]
        (ctx.artifact_dir / f"video_{task}_per_frame.csv").write_text("frame,mse,psnr,ssim\n" + "\n".join(rows_csv) + "\n")
        return finite(out)


def finite(out: dict[str, float]) -> dict[str, float]:
    """``out``, or ValueError when a value is NaN."""
    if any(math.isnan(v) for v in out.values()):
        raise ValueError("video metrics produced NaN (non-finite frames from reconstruct_and_predict?)")
    return out


def clip_intervals(part: str, per: dict[str, list[torch.Tensor]], cols: list[int]) -> dict[str, float]:
    """95% Student-t interval over clips of ``{part}_{m}``: the unit is a clip's mean over the
    ``cols`` frames and the K trajectories (their mean over clips is ``{part}_{m}``); it covers the
    test clips, not training seeds. ``{part}_{m}_ci_lo`` / ``_ci_hi`` (absent for a single clip)."""
    out = {}
    for name, vals in per.items():
        per_clip = torch.stack([v[:, cols].mean(1) for v in vals]).mean(0)
        iv = t_interval(per_clip.tolist())
        if iv.n > 1:
            out[f"{part}_{name}_ci_lo"], out[f"{part}_{name}_ci_hi"] = iv.lo, iv.hi
    return out


def write_per_clip(path, rows: list[int], per: dict[str, list[torch.Tensor]], parts: dict[str, list[int]]) -> None:
    """CSV of every clip's (dataset row) and trajectory's means over each part's frames (``parts``:
    part -> table columns), for paired comparisons of two families on the same clips."""
    names = [f"{part}_{m}" for part in parts for m in per]
    lines = ["clip,trajectory," + ",".join(names)]
    for k in range(len(per["mse"])):
        cols = [per[m][k][:, c].mean(1) for part, c in parts.items() for m in per]
        lines += [f"{row},{k}," + ",".join(f"{float(v[i]):.6g}" for v in cols) for i, row in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")


def best_of_trajectories(part: str, per: dict[str, list[torch.Tensor]], cols: list[int]) -> dict[str, float]:
    """MCVD's best-of-K protocol: per clip, the best trajectory's mean over the ``cols`` frames (max
    for SSIM and PSNR, min for MSE), averaged over clips: ``{part}_{m}_best``."""
    out = {}
    for name, vals in per.items():
        per_clip = torch.stack([v[:, cols].mean(1) for v in vals])  # (K, N)
        best = per_clip.min(0).values if name == "mse" else per_clip.max(0).values
        out[f"{part}_{name}_best"] = float(best.mean())
    return out


class VideoRecon(VideoMetrics):
    """Deprecated name ``video_recon`` of the ``video`` metric (same parameters and keys)."""

    def compute(self, ctx) -> dict[str, float]:
        ctx.log("metric `video_recon` is deprecated and will be removed: use `video` (same parameters and keys)")
        return super().compute(ctx)
