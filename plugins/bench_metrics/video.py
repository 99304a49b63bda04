"""Per-frame MSE, PSNR and SSIM of reconstructed and predicted video frames.

Interface a video family provides (capability ``"video_predict"``)::

    recon, pred = family.reconstruct_and_predict(context, horizon, rng)

``context``: the first ``Tc`` frames ``(B, Tc, C, H, W)`` in [-1, 1] (the family never sees later
frames); ``horizon``: the number of future frames H to predict; ``rng``: a
:class:`bench.rng.PerSampleRNG` (for stochastic encoders; may be ignored). Returns ``recon``
``(B, Tc, C, H, W)``, the reconstruction of the context frames, and ``pred`` ``(B, H, C, H, W)``, the
frames ``Tc .. Tc+H-1`` (horizon h = 1..H), both in [-1, 1]. Called under ``torch.no_grad()``.

Frames are compared as images: mapped to [0, 1] by u = (x + 1) / 2 and clamped (SSIM's luminance
term is not shift invariant, so it must see non-negative intensities). Per frame (all pixels and
channels of one frame; data range R = 1):

    MSE  = mean (u_a - u_b)^2
    PSNR = 10 log10(R^2 / MSE)                         (inf for identical frames)
    SSIM = mean over valid windows and channels of
           ((2 mu_a mu_b + C1)(2 s_ab + C2)) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2)),
           C1 = (0.01 R)^2, C2 = (0.03 R)^2, local statistics with a Gaussian window (sigma 1.5,
           size 11, or the largest odd size that fits a smaller frame), biased (1/N) variances
           (scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
           use_sample_covariance=False, data_range=1)``).

Averages over videos are taken per frame; PSNR is averaged with MSE floored at 1e-10 R^2 (100 dB)
so a perfect frame stays finite. Logged: ``recon_{mse,psnr,ssim}`` and ``pred_{mse,psnr,ssim}`` (means
over frames), per predicted horizon ``pred_{mse,psnr,ssim}_h{h}`` and per context frame
``recon_{mse,psnr,ssim}_t{t}``, ``video_num_videos``; a CSV of the per-frame table as an artifact.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from bench.context import MetricSkipped
from bench.rng import PerSampleRNG

from .common import fixed_subset

PSNR_FLOOR = 1e-10


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] -> [0, 1], clamped, float64."""
    return ((x.to(torch.float64) + 1) / 2).clamp(0, 1)


def mse_per_frame(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B, T, C, H, W)`` pairs -> ``(B, T)`` mean squared error."""
    return (a.to(torch.float64) - b.to(torch.float64)).pow(2).flatten(2).mean(2)


def psnr_from_mse(mse: torch.Tensor, data_range: float = 1.0, floor: float = 0.0) -> torch.Tensor:
    return 10 * torch.log10(data_range ** 2 / mse.clamp_min(floor * data_range ** 2))


def psnr_per_frame(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    return psnr_from_mse(mse_per_frame(a, b), data_range)


def gaussian_window(size: int, sigma: float = 1.5) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-r.pow(2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_per_frame(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, win: int = 11,
                   sigma: float = 1.5) -> torch.Tensor:
    """``(B, T, C, H, W)`` pairs -> ``(B, T)`` SSIM (see the module docstring)."""
    bsz, t, c, h, w = a.shape
    size = min(win, h, w)
    size -= 1 - size % 2  # odd
    k = gaussian_window(size, sigma)[None, None].expand(c, 1, size, size)
    x = a.reshape(bsz * t, c, h, w).to(torch.float64)
    y = b.reshape(bsz * t, c, h, w).to(torch.float64)

    def filt(z):
        return F.conv2d(z, k, groups=c)

    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx * mx
    syy = filt(y * y) - my * my
    sxy = filt(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).reshape(bsz, t)


class VideoMetrics:
    """Metric ``video``: ``context_frames`` (Tc), ``horizon`` (default: the rest of the clip),
    ``num_videos`` (fixed subset of the split), ``batch_size``, ``split``."""

    def __init__(self, context_frames: Annotated[int, Field(gt=0)] = 10,
                 horizon: Annotated[int, Field(ge=0)] | None = None,
                 num_videos: Annotated[int, Field(gt=0)] | None = 64,
                 batch_size: Annotated[int, Field(gt=0)] = 16, split: Literal["train", "test"] = "test"):
        self.context_frames, self.horizon, self.num_videos = context_frames, horizon, num_videos
        self.batch_size, self.split = batch_size, split

    def compute(self, ctx) -> dict[str, float]:
        fam = ctx.family
        if not hasattr(fam, "reconstruct_and_predict"):
            raise MetricSkipped("the family has no reconstruct_and_predict(context, horizon, rng)")
        videos = ctx.dataset.split(self.split)
        if videos.dim() != 5:
            raise MetricSkipped(f"expected videos (N, T, C, H, W), got {tuple(videos.shape)}")
        n_all, t_all = videos.shape[:2]
        tc = self.context_frames
        horizon = t_all - tc if self.horizon is None else self.horizon
        if tc + horizon > t_all:
            raise ValueError(f"context_frames + horizon = {tc + horizon} > clip length {t_all}")
        idx = fixed_subset(torch.arange(n_all), self.num_videos, "video", self.split)
        per = {f"{part}_{m}": [] for part in ("recon", "pred") for m in ("mse", "ssim")}
        for lo in range(0, len(idx), self.batch_size):
            rows = idx[lo:lo + self.batch_size].tolist()
            v = videos[rows]
            with torch.no_grad():
                recon, pred = fam.reconstruct_and_predict(v[:, :tc], horizon,
                                                          PerSampleRNG.for_indices(ctx.seed, rows, stream="video"))
            want_r, want_p = (len(rows), tc, *v.shape[2:]), (len(rows), horizon, *v.shape[2:])
            if tuple(recon.shape) != want_r or tuple(pred.shape) != want_p:
                raise ValueError(f"reconstruct_and_predict returned {tuple(recon.shape)} and {tuple(pred.shape)}, "
                                 f"expected {want_r} and {want_p}")
            for part, got, true in (("recon", recon, v[:, :tc]), ("pred", pred, v[:, tc:tc + horizon])):
                if got.shape[1] == 0:
                    continue
                got, true = to_unit(got), to_unit(true)
                per[f"{part}_mse"].append(mse_per_frame(got, true))
                per[f"{part}_ssim"].append(ssim_per_frame(got, true))
        out: dict[str, float] = {"video_num_videos": float(len(idx))}
        rows_csv = []
        for part, label in (("recon", "t"), ("pred", "h")):
            if not per[f"{part}_mse"]:
                continue
            mse = torch.cat(per[f"{part}_mse"])      # (N, T)
            ssim = torch.cat(per[f"{part}_ssim"])
            psnr = psnr_from_mse(mse, 1.0, PSNR_FLOOR)
            for name, m in (("mse", mse), ("psnr", psnr), ("ssim", ssim)):
                out[f"{part}_{name}"] = float(m.mean())
                for j, val in enumerate(m.mean(0).tolist(), start=1):
                    out[f"{part}_{name}_{label}{j}"] = val
            for j in range(mse.shape[1]):
                rows_csv.append(f"{part},{j + 1},{float(mse[:, j].mean()):.6g},{float(psnr[:, j].mean()):.6g},"
                                f"{float(ssim[:, j].mean()):.6g}")
        (ctx.artifact_dir / "video_per_frame.csv").write_text("part,frame,mse,psnr,ssim\n" + "\n".join(rows_csv) + "\n")
        if any(math.isnan(v) for v in out.values()):
            raise ValueError("video metrics produced NaN (non-finite frames from reconstruct_and_predict?)")
        return out
