"""Per-frame reconstruction and prediction quality for video families (flows-math.md section 5.1).

On frames mapped to [0, 1] (u = (x + 1) / 2, clamped):

- MSE of a frame: mean_p (u_p - u^_p)^2;  PSNR = 10 log10(1 / MSE) per frame (data range 1), then
  averaged over frames and videos;
- SSIM (Wang et al. 2004): on each 11x11 Gaussian window (sigma 1.5) without padding,
  ((2 mu_x mu_y + C1)(2 s_xy + C2)) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)),
  C1 = (0.01)^2, C2 = (0.03)^2, averaged over windows (equal to scikit-image's
  ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``).

``video_recon`` calls ``family.reconstruct_and_predict(videos)`` on the test split and reports
``recon_*`` (context frames), ``pred_*`` (target frames) and per-frame ``pred_psnr_t11`` ... (frame
numbers 1-based), for mse, psnr and ssim.
"""
from __future__ import annotations

from typing import Annotated, Optional

import torch
import torch.nn.functional as F
from pydantic import Field

from bench.context import MetricSkipped

PSNR_CAP = 100.0  # PSNR of a perfect frame (MSE = 0) is reported as this


def to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


def frame_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., C, H, W) -> (...) mean squared error per frame."""
    return (a - b).pow(2).flatten(-3).mean(-1)


def frame_psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = frame_mse(a, b)
    return torch.where(mse > 0, 10 * torch.log10(1.0 / mse.clamp_min(1e-30)), torch.full_like(mse, PSNR_CAP))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def frame_ssim(a: torch.Tensor, b: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """(..., C, H, W) in [0, 1] -> (...) SSIM per frame (mean over channels and valid windows)."""
    lead = a.shape[:-3]
    c, h, w = a.shape[-3:]
    x = a.reshape(-1, 1, h, w).double()
    y = b.reshape(-1, 1, h, w).double()
    win = gaussian_window(min(size, h, w), sigma)[None, None]
    filt = lambda z: F.conv2d(z, win)  # noqa: E731
    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx ** 2
    syy = filt(y * y) - my ** 2
    sxy = filt(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return ssim.flatten(1).mean(1).view(*lead, c).mean(-1).float()


class VideoRecon:
    def __init__(self, num_videos: Optional[Annotated[int, Field(gt=0)]] = None,
                 batch_size: Annotated[int, Field(gt=0)] = 50):
        self.num_videos = num_videos
        self.batch_size = batch_size

    def compute(self, ctx) -> dict[str, float]:
        family = ctx.family
        if not hasattr(family, "reconstruct_and_predict"):
            raise MetricSkipped("the family has no reconstruct_and_predict(videos)")
        videos = ctx.dataset.split("test")
        if self.num_videos:
            videos = videos[: self.num_videos]
        sums: dict[str, torch.Tensor] = {}
        for lo in range(0, len(videos), self.batch_size):
            batch = videos[lo: lo + self.batch_size]
            recon, pred = family.reconstruct_and_predict(batch)
            for part, out, index in (("recon", recon, family.context_index), ("pred", pred, family.target_index)):
                truth, guess = to_unit(batch[:, index]), to_unit(out)
                for name, fn in (("mse", frame_mse), ("psnr", frame_psnr), ("ssim", frame_ssim)):
                    per_frame = fn(guess, truth).sum(0)  # (frames,) summed over videos
                    key = f"{part}_{name}"
                    sums[key] = sums.get(key, 0) + per_frame
        n = len(videos)
        out: dict[str, float] = {}
        for key, per_frame in sums.items():
            per_frame = per_frame / n
            out[key] = float(per_frame.mean())
            if key.startswith("pred_"):
                for i, frame in zip(family.target_index, per_frame):
                    out[f"{key}_t{i + 1}"] = float(frame)
        out["video_recon_num_videos"] = float(n)
        return out
