"""moving_digits and the latent ODE (flows-math.md section 4), measured by the ``video`` metric."""
import numpy as np
import pytest
import torch

from bench.rng import BatchRNG
from bench_data.moving_digits import MovingDigits, digit_sprites
from bench_flows.latent_ode import LatentODE
from bench_metrics.testing import metric_context
from bench_metrics.video import VideoMetrics


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
    ci, ti = fam.context_index, fam.target_index
    recon, pred = fam.reconstruct_and_predict(videos[:, ci], ci, ti)
    assert recon.shape == pred.shape == (4, 10, 1, 32, 32)
    # the vector-of-output-times interface gives the same frames
    torch.testing.assert_close(fam.predict_at(videos[:, ci], fam.times(ti)), pred, rtol=1e-4, atol=1e-4)
    stride = 2 if task == "interpolation" else 1
    out = VideoMetrics(context_frames=10, context_stride=stride, num_videos=4).compute(metric_context(small, family=fam))
    first = ti[0] + 1
    assert {"recon_psnr", "pred_psnr", "pred_ssim", "recon_mse", f"pred_psnr_t{first}", "extrap_ssim"} <= set(out)
    assert ("interp_ssim" in out) == (task == "interpolation")
    assert 0 < out["pred_mse"] < 1 and out["pred_psnr"] == pytest.approx(
        np.mean([out[f"pred_psnr_t{i + 1}"] for i in ti]), rel=1e-6)


def test_latent_ode_reconstruct_and_predict_is_one_solve_through_the_asked_frames(small):
    torch.manual_seed(1)
    fam = LatentODE(latent_dim=4, channels=[4, 8], ode_hidden=[8], step_size=0.1, encoder="frame", context=Ctx(small))
    videos = small.split("test")[:2]
    every = fam.predict_at(videos[:, :10], fam.times(list(range(20))))
    recon, pred = fam.reconstruct_and_predict(videos[:, :10], range(10), range(10, 20))
    torch.testing.assert_close(recon, every[:, :10])
    torch.testing.assert_close(pred, every[:, 10:])
    assert fam.reconstruct_and_predict(videos[:, :10], range(10), range(10, 13))[1].shape == (2, 3, 1, 32, 32)
    # interpolation: even frames in, odd frames out (the deterministic encoder reads the first frame only)
    recon, pred = fam.reconstruct_and_predict(videos[:, 0:20:2], range(0, 20, 2), range(1, 20, 2))
    torch.testing.assert_close(recon, every[:, 0::2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pred, every[:, 1::2], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="forward from its first context frame"):
        fam.reconstruct_and_predict(videos[:, 5:10], range(5, 10), [2])
