"""Per-frame MSE/PSNR/SSIM: invariants, a direct per-window SSIM, closed forms, and the video metric
with a copy-last-frame baseline whose errors per horizon are known exactly."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from bench.context import MetricSkipped
from bench.protocols import DataInfo
from bench_metrics.testing import metric_context
from bench_metrics.video import VideoMetrics, mse_per_frame, psnr_per_frame, ssim_per_frame


def clip(b=2, t=3, c=2, h=12, w=12, seed=0):
    """Frames in [0, 1] (the metric functions' input range)."""
    return torch.rand(b, t, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_identical_frames_give_infinite_psnr_and_unit_ssim():
    x = clip()
    assert torch.isinf(psnr_per_frame(x, x)).all()
    assert torch.allclose(ssim_per_frame(x, x), torch.ones(2, 3, dtype=torch.float64))
    assert torch.equal(mse_per_frame(x, x), torch.zeros(2, 3, dtype=torch.float64))


def test_psnr_of_a_constant_offset():
    x = clip()
    y = x + 0.1
    assert torch.allclose(psnr_per_frame(y, x), torch.full((2, 3), 10 * math.log10(1 / 0.01), dtype=torch.float64))


def naive_ssim(a, b, data_range=1.0, size=11, sigma=1.5):
    """SSIM of two (C, H, W) arrays, window by window, with numpy."""
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-r ** 2 / (2 * sigma ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for ch in range(a.shape[0]):
        for i in range(a.shape[1] - size + 1):
            for j in range(a.shape[2] - size + 1):
                pa, pb = a[ch, i:i + size, j:j + size], b[ch, i:i + size, j:j + size]
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
                cov = (w * (pa - ma) * (pb - mb)).sum()
                vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_a_direct_window_by_window_computation():
    a = clip(1, 1, 2, 14, 13, seed=1)
    b = (a + 0.3 * clip(1, 1, 2, 14, 13, seed=2) - 0.15).clamp(0, 1)
    ours = float(ssim_per_frame(b, a)[0, 0])
    assert ours == pytest.approx(naive_ssim(b[0, 0].double().numpy(), a[0, 0].double().numpy()), rel=1e-10)
    assert 0.2 < ours < 0.99
    # frames smaller than 11 pixels use the largest odd window that fits
    s = clip(1, 1, 1, 8, 8, seed=3)
    t = s * 0.5
    assert float(ssim_per_frame(t, s)[0, 0]) == pytest.approx(naive_ssim(t[0, 0].double().numpy(), s[0, 0].double().numpy(), size=7), rel=1e-10)


def test_ssim_of_constant_frames_is_the_luminance_term():
    c1 = 0.01 ** 2
    a, b = torch.full((1, 1, 1, 12, 12), 0.6), torch.full((1, 1, 1, 12, 12), 0.3)
    expected = (2 * 0.6 * 0.3 + c1) / (0.6 ** 2 + 0.3 ** 2 + c1)
    assert float(ssim_per_frame(a, b)[0, 0]) == pytest.approx(expected, rel=1e-6)


class Ramps:
    """Videos whose frame t is the constant (offset + step * t)."""

    def __init__(self, n=10, t=8, step=0.1):
        off = torch.linspace(-0.9, -0.3, n)
        frames = off[:, None] + step * torch.arange(t)[None, :]
        v = frames[:, :, None, None, None].expand(n, t, 1, 8, 8).contiguous()
        self.info = DataInfo("ramps", (t, 1, 8, 8), "video")
        self._s = {"train": v, "test": v}

    def split(self, name):
        return self._s[name]


class CopyLast(nn.Module):
    """Reconstructs perfectly and predicts by repeating the last context frame."""

    provides = frozenset({"video_predict"})

    def __init__(self):
        super().__init__()
        self.seen = []

    def reconstruct_and_predict(self, context, horizon, rng):
        self.seen.append(context.shape)
        return context.clone(), context[:, -1:].expand(-1, horizon, -1, -1, -1)


def test_video_metric_per_horizon_errors_of_a_copy_last_baseline():
    fam = CopyLast()
    out = VideoMetrics(context_frames=5, num_videos=None, batch_size=4).compute(metric_context(Ramps(), family=fam))
    assert all(shape[1] == 5 for shape in fam.seen)  # the family never saw future frames
    assert out["video_num_videos"] == 10
    for h in (1, 2, 3):  # frame 5+h-1 differs from frame 4 by 0.1 h in [-1, 1], 0.05 h in [0, 1]
        assert out[f"pred_mse_h{h}"] == pytest.approx((0.05 * h) ** 2, rel=1e-5)
        assert out[f"pred_psnr_h{h}"] == pytest.approx(10 * math.log10(1 / (0.05 * h) ** 2), rel=1e-5)
        mu_a, mu_b = (1 + 0.1 * 4 + torch.linspace(-0.9, -0.3, 10)) / 2, (1 + 0.1 * (4 + h) + torch.linspace(-0.9, -0.3, 10)) / 2
        ssim = ((2 * mu_a * mu_b + 1e-4) / (mu_a ** 2 + mu_b ** 2 + 1e-4)).mean()  # constant frames
        assert out[f"pred_ssim_h{h}"] == pytest.approx(float(ssim), rel=1e-5)
    assert out["pred_mse_h1"] < out["pred_mse_h2"] < out["pred_mse_h3"]
    assert out["pred_mse"] == pytest.approx(np.mean([(0.05 * h) ** 2 for h in (1, 2, 3)]), rel=1e-5)
    assert out["recon_mse"] == 0 and out["recon_psnr"] == pytest.approx(100.0) and out["recon_ssim"] == pytest.approx(1.0)
    assert "recon_psnr_t5" in out and "pred_ssim_h4" not in out


def test_video_metric_checks_the_interface():
    with pytest.raises(MetricSkipped, match="reconstruct_and_predict"):
        VideoMetrics().compute(metric_context(Ramps(), family=nn.Linear(1, 1)))

    class Wrong(CopyLast):
        def reconstruct_and_predict(self, context, horizon, rng):
            return context, context  # wrong number of predicted frames

    with pytest.raises(ValueError, match="expected"):
        VideoMetrics(context_frames=5).compute(metric_context(Ramps(), family=Wrong()))
    with pytest.raises(ValueError, match="clip length"):
        VideoMetrics(context_frames=5, horizon=4).compute(metric_context(Ramps(), family=CopyLast()))
