"""moving_digits, the video metrics and the latent ODE (flows-math.md section 4)."""
import math

import numpy as np
import pytest
import torch

from bench.rng import BatchRNG
from bench_data.moving_digits import MovingDigits, digit_sprites
from bench_flows.latent_ode import LatentODE
from bench_flows.video_metrics import VideoRecon, frame_psnr, frame_ssim




@pytest.fixture(scope="module")
def small():
    return MovingDigits(num_digits=1, n_train=40, n_test=10, data_seed=3)


def test_moving_digits_is_deterministic_and_in_frame(small):
    again = MovingDigits(num_digits=1, n_train=40, n_test=10, data_seed=3)
    other = MovingDigits(num_digits=1, n_train=40, n_test=10, data_seed=4)
    assert torch.equal(small.split("train"), again.split("train"))
    assert torch.equal(small.split("test"), again.split("test"))
    assert not torch.equal(small.split("train"), other.split("train"))
    x = small.split("train")
    assert x.shape == (40, 20, 1, 32, 32) and small.info.shape == (20, 1, 32, 32)
    assert small.info.modality == "video" and small.info.levels == 256
    k = (x + 1) / 2 * 255
    assert torch.allclose(k, k.round(), atol=1e-4) and x.min() >= -1 and x.max() <= 1
    tracks = small.tracks("train")
    assert tracks.min() >= 0 and tracks.max() <= 32 - 12
    steps = np.abs(np.diff(tracks, axis=2))
    assert steps.max() <= 3 and (steps.sum(axis=(2, 3)) > 0).all()  # moving, at most max_speed per frame
    # one digit fully inside the frame: every frame carries the whole sprite's ink
    ink = ((x + 1) / 2).sum(dim=(2, 3, 4))
    assert torch.allclose(ink, ink[:, :1].expand_as(ink), atol=0.5)
    # and the ink sits where the track says
    sprites, _ = digit_sprites(12)
    for t in (0, 7, 19):
        r, c = tracks[0, 0, t]
        window = ((x[0, t, 0] + 1) / 2)[r:r + 12, c:c + 12]
        assert float(window.sum()) == pytest.approx(float(ink[0, t]), abs=1e-3)


def test_two_digits_bounce_inside():
    d = MovingDigits(num_digits=2, n_train=20, n_test=5, data_seed=1, max_speed=5)
    tr = d.tracks("train")
    assert tr.shape == (20, 2, 20, 2) and tr.min() >= 0 and tr.max() <= 20
    v = np.diff(tr, axis=2)
    flips = (np.sign(v[:, :, 1:]) * np.sign(v[:, :, :-1]) < 0).sum()
    assert flips > 0  # some digits did bounce


def test_ssim_and_psnr_closed_forms():
    a = torch.full((2, 1, 16, 16), 0.3)
    b = torch.full((2, 1, 16, 16), 0.5)
    c1 = 0.01 ** 2
    expect = (2 * 0.3 * 0.5 + c1) / (0.3 ** 2 + 0.5 ** 2 + c1)  # constant images: sigma terms cancel
    torch.testing.assert_close(frame_ssim(a, b), torch.full((2,), expect), rtol=1e-6, atol=0)
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(frame_ssim(x, x), torch.ones(3))
    torch.testing.assert_close(frame_psnr(a, b), torch.full((2,), 10 * math.log10(1 / 0.04)))


def test_ssim_matches_a_direct_window_loop():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, 14, 13, generator=g, dtype=torch.float64)
    y = (x + 0.2 * torch.rand(1, 1, 14, 13, generator=g, dtype=torch.float64)).clamp(0, 1)
    r = np.arange(11) - 5
    w = np.exp(-r ** 2 / (2 * 1.5 ** 2))
    w = np.outer(w, w)
    w /= w.sum()
    xs, ys, vals = x[0, 0].numpy(), y[0, 0].numpy(), []
    for i in range(14 - 10):
        for j in range(13 - 10):
            px, py = xs[i:i + 11, j:j + 11], ys[i:i + 11, j:j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append((2 * mx * my + 1e-4) * (2 * cxy + 9e-4) / ((mx ** 2 + my ** 2 + 1e-4) * (vx + vy + 9e-4)))
    assert float(frame_ssim(x, y)) == pytest.approx(float(np.mean(vals)), rel=1e-5)


class Ctx:
    def __init__(self, ds):
        self.data = ds.info
        self.dataset = ds


@pytest.mark.parametrize("variant,task", [("deterministic", "extrapolation"), ("vae", "interpolation")])
def test_latent_ode_trains_and_predicts(small, variant, task):
    torch.manual_seed(0)
    fam = LatentODE(variant=variant, task=task, latent_dim=8, channels=[8, 16], ode_hidden=[32],
                    rnn_hidden=32, step_size=0.1, context=Ctx(small))
    x = small.split("train")
    opt = torch.optim.Adam(fam.parameters(), 3e-3)
    rng = BatchRNG(0, 20)
    losses = []
    for step in range(12):
        loss = fam.loss(x[(step % 2) * 20:(step % 2) * 20 + 20], rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    assert fam.train_stats()["train_nfe_forward"] > 0
    fam.eval()
    videos = small.split("test")[:4]
    recon, pred = fam.reconstruct_and_predict(videos)
    assert recon.shape == pred.shape == (4, 10, 1, 32, 32)
    # the vector-of-output-times interface gives the same frames
    ctx_frames = videos[:, fam.context_index]
    target_times = fam.times(fam.target_index)
    torch.testing.assert_close(fam.predict_at(ctx_frames, target_times), pred, rtol=1e-4, atol=1e-4)

    class M:
        family, dataset = fam, small
    out = VideoRecon(num_videos=4).compute(M)
    first = fam.target_index[0] + 1
    assert {"recon_psnr", "pred_psnr", "pred_ssim", "recon_mse", f"pred_psnr_t{first}"} <= set(out)
    assert 0 < out["pred_mse"] < 1 and out["pred_psnr"] == pytest.approx(
        np.mean([out[f"pred_psnr_t{i + 1}"] for i in fam.target_index]), rel=1e-6)


def test_latent_ode_context_horizon_interface(small):
    torch.manual_seed(1)
    fam = LatentODE(latent_dim=4, channels=[4, 8], ode_hidden=[8], step_size=0.1, context=Ctx(small))
    videos = small.split("test")[:2]
    recon, pred = fam.reconstruct_and_predict(videos)
    recon2, pred2 = fam.reconstruct_and_predict(videos[:, :10], 10, None)
    torch.testing.assert_close(recon2, recon)
    torch.testing.assert_close(pred2, pred)
    assert fam.reconstruct_and_predict(videos[:, :10], 3)[1].shape == (2, 3, 1, 32, 32)
