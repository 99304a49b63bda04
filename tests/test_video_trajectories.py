"""The paper's protocol of several trajectories per test clip (``trajectories: K``) in the ``video`` and
``fvd`` metrics: best-of-K keys, identical values for a deterministic family, one prediction per
trajectory shared by both metrics, and K = 1 unchanged."""
import pytest
import torch
from torch import nn

from bench.protocols import DataInfo
from bench_metrics.testing import metric_context
from bench_metrics.video import VideoMetrics, predict, trajectory_stream


class Blobs:
    """Videos of a bright square moving one pixel per frame (frames in [-1, 1], 12x12)."""

    def __init__(self, n=12, t=6):
        v = torch.full((n, t, 1, 12, 12), -1.0)
        for i in range(n):
            for s in range(t):
                r = (i + s) % 8
                v[i, s, 0, r:r + 4, 2 + i % 6:6 + i % 6] = 1.0
        self.info = DataInfo("blobs", (t, 1, 12, 12), "video", levels=256)
        self._s = {"train": v.flip(0).contiguous(), "test": v}

    def split(self, name):
        return self._s[name]


class CopyLast(nn.Module):
    """Deterministic: predicts every target frame as the last context frame (ignores ``rng``)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def reconstruct_and_predict(self, context, context_index, target_index, rng):
        self.calls += 1
        return context.clone(), context[:, -1:].expand(-1, len(target_index), -1, -1, -1).clone()


class NoisyCopyLast(CopyLast):
    """Stochastic: CopyLast plus 0.3 N(0, 1) noise from the clip's generator."""

    def reconstruct_and_predict(self, context, context_index, target_index, rng):
        recon, pred = super().reconstruct_and_predict(context, context_index, target_index, rng)
        return recon, (pred + 0.3 * rng.randn(*pred.shape[1:])).clamp(-1, 1)


def run(family, **kw):
    ctx = metric_context(Blobs(), family=family, seed=3)
    return VideoMetrics(context_frames=3, num_videos=None, batch_size=5, **kw).compute(ctx)


def test_one_trajectory_is_the_plain_metric():
    one = run(NoisyCopyLast(), trajectories=1)
    assert trajectory_stream(0) == "video"
    assert not any(k.endswith("_best") for k in one) and "video_trajectories" not in one


def test_best_of_k_is_at_least_the_mean_and_beats_it_for_a_stochastic_family():
    fam = NoisyCopyLast()
    out = run(fam, trajectories=4)
    assert fam.calls == 4 * 3  # 12 clips in batches of 5, once per trajectory
    assert out["video_trajectories"] == 4
    for part in ("extrap", "pred"):
        assert out[f"{part}_ssim_best"] > out[f"{part}_ssim"] + 1e-4
        assert out[f"{part}_psnr_best"] > out[f"{part}_psnr"] + 1e-4
        assert out[f"{part}_mse_best"] < out[f"{part}_mse"] - 1e-6


def test_trajectories_draw_different_noise_and_trajectory_0_is_the_single_run():
    ctx = metric_context(Blobs(), family=NoisyCopyLast(), seed=3)
    p = predict(ctx, "test", list(range(12)), [0, 1, 2], [3, 4, 5], 3, 5)
    fresh = metric_context(Blobs(), family=NoisyCopyLast(), seed=3)
    single = predict(fresh, "test", list(range(12)), [0, 1, 2], [3, 4, 5], 1, 5)
    assert torch.equal(p.pred[0], single.pred[0])
    assert not torch.equal(p.pred[0], p.pred[1]) and not torch.equal(p.pred[1], p.pred[2])


def test_a_deterministic_family_gives_identical_values_over_trajectories():
    one, many = run(CopyLast(), trajectories=1), run(CopyLast(), trajectories=3)
    for key, value in one.items():
        assert many[key] == value, key
    for part in ("recon", "extrap", "pred"):
        for m in ("mse", "psnr", "ssim"):
            assert many[f"{part}_{m}_best"] == pytest.approx(many[f"{part}_{m}"], rel=1e-12, abs=1e-15)


def test_predictions_are_shared_between_metrics_of_a_family():
    fam = NoisyCopyLast()
    ctx = metric_context(Blobs(), family=fam, seed=3)
    VideoMetrics(context_frames=3, num_videos=None, batch_size=5, trajectories=2).compute(ctx)
    assert fam.calls == 6
    VideoMetrics(context_frames=3, num_videos=None, batch_size=5, trajectories=3).compute(ctx)
    assert fam.calls == 9  # only the third trajectory is new
