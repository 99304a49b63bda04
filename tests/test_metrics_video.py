"""The ``video`` metric: PSNR/SSIM (torchmetrics) against closed forms, a window-by-window SSIM, scipy's
Gaussian filter and scikit-image; the splits; and baselines whose errors per frame are known exactly."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from bench.context import MetricSkipped
from bench.protocols import DataInfo
from bench_metrics.testing import metric_context
from bench_metrics.video import (PSNR_CAP, VideoMetrics, VideoRecon, mse_per_frame, psnr_per_frame,
                                 ssim_per_frame, video_splits)

C1, C2 = 0.01 ** 2, 0.03 ** 2


def clip(b=2, t=3, c=2, h=12, w=12, seed=0):
    """Frames in [0, 1] (the metric functions' input range)."""
    return torch.rand(b, t, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_identical_frames_give_capped_psnr_and_unit_ssim():
    x = clip()
    assert torch.equal(psnr_per_frame(x, x), torch.full((2, 3), PSNR_CAP, dtype=torch.float64))
    assert torch.allclose(ssim_per_frame(x, x), torch.ones(2, 3, dtype=torch.float64))
    assert torch.equal(mse_per_frame(x, x), torch.zeros(2, 3, dtype=torch.float64))


def test_psnr_of_a_constant_offset():
    x = clip() * 0.8
    assert torch.allclose(psnr_per_frame(x + 0.1, x), torch.full((2, 3), 20.0, dtype=torch.float64))  # 10 log10(1/0.01)
    assert torch.allclose(psnr_per_frame(x + 1e-6, x), torch.full((2, 3), 100.0, dtype=torch.float64))  # 120 dB, capped


def test_psnr_agrees_with_torchmetrics():
    from torchmetrics.functional.image import peak_signal_noise_ratio
    a, b = clip(seed=6), clip(seed=7)
    ref = peak_signal_noise_ratio(a.flatten(0, 1), b.flatten(0, 1), data_range=1.0, reduction="none", dim=(1, 2, 3))
    torch.testing.assert_close(psnr_per_frame(a, b), ref.reshape(2, 3), rtol=1e-7, atol=0)


def gaussian_window(size=11, sigma=1.5):
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-r ** 2 / (2 * sigma ** 2))
    return np.outer(g, g) / np.outer(g, g).sum()


def naive_ssim(a, b):
    """SSIM (Wang et al. 2004) of two (C, H, W) arrays in [0, 1], window by window, with numpy."""
    w, vals = gaussian_window(), []
    for ch in range(a.shape[0]):
        for i in range(a.shape[1] - 10):
            for j in range(a.shape[2] - 10):
                pa, pb = a[ch, i:i + 11, j:j + 11], b[ch, i:i + 11, j:j + 11]
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
                cov = (w * (pa - ma) * (pb - mb)).sum()
                vals.append((2 * ma * mb + C1) * (2 * cov + C2) / ((ma ** 2 + mb ** 2 + C1) * (va + vb + C2)))
    return float(np.mean(vals))


def scipy_ssim(a, b):
    """The same with scipy's Gaussian filter (radius int(3.5 sigma + 0.5) = 5), interior windows only."""
    def f(z):
        return ndimage.gaussian_filter(z, 1.5, truncate=3.5, mode="mirror")[5:-5, 5:-5]
    vals = []
    for x, y in zip(a, b):
        mx, my = f(x), f(y)
        vx, vy, cxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
        vals.append(((2 * mx * my + C1) * (2 * cxy + C2) / ((mx ** 2 + my ** 2 + C1) * (vx + vy + C2))).ravel())
    return float(np.concatenate(vals).mean())


def test_ssim_matches_a_window_by_window_computation_and_scipy():
    a = clip(1, 1, 2, 14, 13, seed=1)
    b = (a + 0.3 * clip(1, 1, 2, 14, 13, seed=2) - 0.15).clamp(0, 1)
    ours = float(ssim_per_frame(b, a)[0, 0])
    assert ours == pytest.approx(naive_ssim(b[0, 0].numpy(), a[0, 0].numpy()), rel=1e-10)
    assert ours == pytest.approx(scipy_ssim(b[0, 0].numpy(), a[0, 0].numpy()), rel=1e-10)
    assert 0.2 < ours < 0.99


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    a = clip(1, 1, 1, 32, 32, seed=4)
    b = (0.7 * a + 0.3 * clip(1, 1, 1, 32, 32, seed=5)).clamp(0, 1)
    ref = metrics.structural_similarity(b[0, 0, 0].numpy(), a[0, 0, 0].numpy(), gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=1.0)
    assert float(ssim_per_frame(b, a)[0, 0]) == pytest.approx(ref, rel=1e-8)


def test_ssim_of_constant_frames_is_the_luminance_term():
    a, b = (torch.full((1, 1, 1, 12, 12), v, dtype=torch.float64) for v in (0.6, 0.3))
    expected = (2 * 0.6 * 0.3 + C1) / (0.6 ** 2 + 0.3 ** 2 + C1)
    assert float(ssim_per_frame(a, b)[0, 0]) == pytest.approx(expected, rel=1e-12)


def test_ssim_rejects_frames_smaller_than_the_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim_per_frame(clip(h=10), clip(h=10))


def test_splits():
    assert video_splits(20, 10, 1, None) == {"recon": list(range(10)), "interp": [], "extrap": list(range(10, 20))}
    assert video_splits(20, 10, 2, None) == {"recon": list(range(0, 20, 2)), "interp": list(range(1, 18, 2)),
                                             "extrap": [19]}
    assert video_splits(20, 5, 1, 3)["extrap"] == [5, 6, 7]
    with pytest.raises(ValueError, match="clip length"):
        video_splits(20, 10, 1, 11)
    with pytest.raises(ValueError, match="need 21 frames"):
        video_splits(20, 11, 2, None)


class Ramps:
    """Videos whose frame t is the constant (offset + step * t)."""

    def __init__(self, n=10, t=8, step=0.1):
        self.offsets = torch.linspace(-0.9, -0.3, n, dtype=torch.float64)
        frames = self.offsets[:, None] + step * torch.arange(t, dtype=torch.float64)[None, :]
        v = frames[:, :, None, None, None].expand(n, t, 1, 12, 12).contiguous()
        self.info = DataInfo("ramps", (t, 1, 12, 12), "video")
        self._s = {"train": v, "test": v}

    def split(self, name):
        return self._s[name]


class CopyPrevious(nn.Module):
    """Reconstructs perfectly and predicts each frame by the last context frame before it."""

    provides = frozenset({"video_predict"})

    def __init__(self):
        super().__init__()
        self.seen = []

    def reconstruct_and_predict(self, context, context_index, target_index, rng):
        self.seen.append((context.clone(), context_index, target_index))
        src = [max(j for j, c in enumerate(context_index) if c < t) for t in target_index]
        return context.clone(), context[:, src]


def luminance(ds, t_a, t_b):
    """Mean SSIM of constant frames t_a and t_b of Ramps (the luminance term)."""
    mu_a, mu_b = (1 + ds.offsets + 0.1 * t_a) / 2, (1 + ds.offsets + 0.1 * t_b) / 2
    return float(((2 * mu_a * mu_b + C1) / (mu_a ** 2 + mu_b ** 2 + C1)).mean())


def test_extrapolation_errors_of_a_copy_last_baseline():
    fam, ds = CopyPrevious(), Ramps()
    out = VideoMetrics(context_frames=5, num_videos=None, batch_size=4).compute(metric_context(ds, family=fam))
    for context, ci, ti in fam.seen:  # the family saw the context frames only
        assert ci == (0, 1, 2, 3, 4) and ti == (5, 6, 7) and context.shape[1] == 5
    assert out["video_num_videos"] == 10
    for h in (1, 2, 3):  # frame 5+h differs from frame 5 by 0.1 h in [-1, 1], 0.05 h in [0, 1]
        assert out[f"pred_mse_t{5 + h}"] == pytest.approx((0.05 * h) ** 2, rel=1e-9)
        assert out[f"pred_psnr_t{5 + h}"] == pytest.approx(10 * math.log10(1 / (0.05 * h) ** 2), rel=1e-9)
        assert out[f"pred_ssim_t{5 + h}"] == pytest.approx(luminance(ds, 4, 4 + h), rel=1e-9)
    assert out["extrap_mse"] == out["pred_mse"] == pytest.approx(np.mean([(0.05 * h) ** 2 for h in (1, 2, 3)]), rel=1e-9)
    assert out["recon_mse"] == 0 and out["recon_psnr"] == PSNR_CAP and out["recon_ssim"] == pytest.approx(1.0)
    assert "recon_psnr_t5" in out and "pred_psnr_t5" not in out and "interp_mse" not in out
    # the interval over the 10 clips: every clip has the same errors here, so it is the point
    assert out["extrap_mse_ci_lo"] == pytest.approx(out["extrap_mse"]) == pytest.approx(out["extrap_mse_ci_hi"])
    assert "recon_mse_ci_lo" not in out


def test_clip_intervals_and_the_per_clip_table(tmp_path):
    """Each clip's mean over the split's frames and trajectories is the unit: the t interval of those
    (scipy), and the per-clip CSV holds exactly them."""
    from scipy import stats

    from bench_metrics.video import clip_intervals
    gen = torch.Generator().manual_seed(0)
    per = {m: [torch.rand(7, 4, generator=gen, dtype=torch.float64) for _ in range(3)] for m in ("mse", "psnr", "ssim")}
    out = clip_intervals("extrap", per, [1, 2, 3])
    x = torch.stack([v[:, 1:].mean(1) for v in per["ssim"]]).mean(0).numpy()
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert out["extrap_ssim_ci_lo"] == pytest.approx(lo, rel=1e-12) and out["extrap_ssim_ci_hi"] == pytest.approx(hi, rel=1e-12)
    ds = Ramps()
    VideoMetrics(context_frames=5, num_videos=4, trajectories=2).compute(metric_context(ds, family=CopyPrevious(),
                                                                                     artifact_dir=tmp_path))
    lines = (tmp_path / "video_per_clip.csv").read_text().splitlines()
    head = lines[0].split(",")
    assert head[:2] == ["clip", "trajectory"] and "extrap_ssim" in head and "recon_mse" in head and len(lines) == 1 + 4 * 2
    col = head.index("extrap_mse")
    assert float(lines[1].split(",")[col]) == pytest.approx(np.mean([(0.05 * h) ** 2 for h in (1, 2, 3)]), rel=1e-5)


def test_interpolation_and_extrapolation_splits_of_a_copy_previous_baseline(tmp_path):
    fam, ds = CopyPrevious(), Ramps()
    out = VideoMetrics(context_frames=4, context_stride=2, num_videos=None).compute(
        metric_context(ds, family=fam, artifact_dir=tmp_path))
    context, ci, ti = fam.seen[0]
    assert ci == (0, 2, 4, 6) and ti == (1, 3, 5, 7)
    assert torch.equal(context, ds.split("test")[:, [0, 2, 4, 6]])
    # every predicted frame is one step (0.05 in [0, 1]) from its source
    for part in ("interp", "extrap", "pred"):
        assert out[f"{part}_mse"] == pytest.approx(0.05 ** 2, rel=1e-9)
    assert out["interp_ssim"] == pytest.approx(np.mean([luminance(ds, t - 1, t) for t in (1, 3, 5)]), rel=1e-9)
    assert out["extrap_ssim"] == pytest.approx(luminance(ds, 6, 7), rel=1e-9)
    assert {f"pred_mse_t{t}" for t in (2, 4, 6, 8)} <= set(out)
    lines = (tmp_path / "video_per_frame.csv").read_text().splitlines()
    assert lines[0] == "split,frame,horizon,mse,psnr,ssim"
    assert [ln.split(",")[:3] for ln in lines[1:]] == [["recon", "1", ""], ["interp", "2", ""], ["recon", "3", ""],
                                                        ["interp", "4", ""], ["recon", "5", ""], ["interp", "6", ""],
                                                        ["recon", "7", ""], ["extrap", "8", "1"]]


def test_video_metric_checks_the_interface():
    with pytest.raises(MetricSkipped, match="reconstruct_and_predict"):
        VideoMetrics().compute(metric_context(Ramps(), family=nn.Linear(1, 1)))

    class Wrong(CopyPrevious):
        def reconstruct_and_predict(self, context, context_index, target_index, rng):
            return context, context  # wrong number of predicted frames

    with pytest.raises(ValueError, match="expected"):
        VideoMetrics(context_frames=5).compute(metric_context(Ramps(), family=Wrong()))
    with pytest.raises(ValueError, match="clip length"):
        VideoMetrics(context_frames=5, horizon=4).compute(metric_context(Ramps(), family=CopyPrevious()))


def test_video_recon_is_a_deprecated_alias():
    said = []
    ctx = metric_context(Ramps(), family=CopyPrevious(), log=said.append)
    assert VideoRecon(context_frames=5).compute(ctx) == VideoMetrics(context_frames=5).compute(ctx)
    assert len(said) == 1 and "deprecated" in said[0] and "`video`" in said[0]


# ---------------------------------------------------------------- tasks (interpolate, past, generate)

class RampOracle(CopyPrevious):
    """Knows the Ramps law (frame t = frame c + 0.1 (t - c)): predicts any frame from the first context
    frame exactly, before or after it; does every task it is asked for."""

    video_tasks = ("predict", "interpolate", "past")

    def reconstruct_and_predict(self, context, context_index, target_index, rng):
        self.seen.append((context.clone(), context_index, target_index))
        c0 = context_index[0]
        return context.clone(), torch.stack([context[:, 0] + 0.1 * (t - c0) for t in target_index], 1)


@pytest.mark.parametrize("task,params,ci,ti", [
    ("interpolate", {"context_frames": 2, "future_frames": 2, "horizon": 3}, (0, 1, 5, 6), (2, 3, 4)),
    ("past", {"context_frames": 3, "horizon": 2}, (2, 3, 4), (0, 1)),
])
def test_tasks_give_the_family_their_frames_and_keys_of_their_own(tmp_path, task, params, ci, ti):
    fam, ds = RampOracle(), Ramps()
    out = VideoMetrics(task=task, num_videos=None, trajectories=2, **params).compute(
        metric_context(ds, family=fam, artifact_dir=tmp_path))
    context, got_ci, got_ti = fam.seen[0]
    assert got_ci == ci and got_ti == ti and torch.equal(context, ds.split("test")[:, list(ci)])
    assert out[f"{task}_mse"] == pytest.approx(0, abs=1e-12) and out[f"{task}_ssim"] == pytest.approx(1.0)
    assert out[f"{task}_ssim_best"] == pytest.approx(1.0) and out[f"{task}_num_videos"] == 10
    assert {f"{task}_psnr_t{t + 1}" for t in ti} <= set(out) and f"{task}_ssim_ci_hi" in out
    assert (tmp_path / f"video_{task}_per_clip.csv").read_text().splitlines()[0] == f"clip,trajectory,{task}_mse,{task}_psnr,{task}_ssim"
    assert not any(k.startswith(("recon_", "extrap_", "pred_")) for k in out)  # no collision with predict's keys
    lines = (tmp_path / f"video_{task}_per_frame.csv").read_text().splitlines()
    assert lines[0] == "frame,mse,psnr,ssim" and [ln.split(",")[0] for ln in lines[1:]] == [str(t + 1) for t in ti]


def test_tasks_score_the_predictions_against_their_own_frames():
    """Copying the previous context frame: interpolated frame t gets the error of frame p-1 against t."""
    class CopyAll(CopyPrevious):
        video_tasks = ("predict", "interpolate")
    ds = Ramps()
    out = VideoMetrics(task="interpolate", context_frames=2, future_frames=1, horizon=3, num_videos=None).compute(
        metric_context(ds, family=CopyAll()))
    for h, t in ((1, 2), (2, 3), (3, 4)):  # frames 3, 4, 5 copied from frame 2 (index 1)
        assert out[f"interpolate_mse_t{t + 1}"] == pytest.approx((0.05 * h) ** 2, rel=1e-9)
    assert out["interpolate_mse"] == pytest.approx(np.mean([(0.05 * h) ** 2 for h in (1, 2, 3)]), rel=1e-9)


def test_a_task_the_family_does_not_do_is_skipped_and_bad_task_frames_are_errors():
    with pytest.raises(MetricSkipped, match="does not do the video task 'past'"):
        VideoMetrics(task="past", context_frames=2, horizon=2).compute(metric_context(Ramps(), family=CopyPrevious()))
    for params, match in (({"task": "interpolate", "context_frames": 2, "horizon": 2}, "future_frames"),
                          ({"task": "past", "context_frames": 2}, "horizon"),
                          ({"task": "past", "context_frames": 5, "horizon": 4}, "the clip has 8"),
                          ({"task": "interpolate", "context_frames": 2, "horizon": 2, "future_frames": 1,
                            "context_stride": 2}, "consecutive")):
        with pytest.raises(ValueError, match=match):
            VideoMetrics(num_videos=None, **params).compute(metric_context(Ramps(), family=RampOracle()))
