"""The ``diffusers`` family: a small randomly initialised UNet2DModel saved with save_pretrained, run
by bench's samplers and compared with diffusers' own DDIMScheduler loop and conversions."""
import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from bench.errors import UserError  # noqa: E402
from bench.protocols import DataInfo  # noqa: E402
from bench_diffusion.pretrained import diffusers_family  # noqa: E402
from bench_diffusion.samplers.discrete import DDIM, Ancestral  # noqa: E402
from bench_diffusion.samplers.sde import PFODE  # noqa: E402
from bench_diffusion.testing import context  # noqa: E402

SHAPE = (2, 8, 8)


def tiny_unet(seed=0, num_class_embeds=None):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(sample_size=8, in_channels=2, out_channels=2, layers_per_block=1,
                                 block_out_channels=(8, 16), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=4,
                                 num_class_embeds=num_class_embeds).eval()


def save_pipeline(root, prediction="epsilon", num_class_embeds=None, **sched):
    unet = tiny_unet(num_class_embeds=num_class_embeds)
    unet.save_pretrained(root / "unet")
    kw = dict(num_train_timesteps=1000, beta_schedule="linear", prediction_type=prediction)
    kw.update(sched)
    scheduler = diffusers.DDIMScheduler(**kw)
    scheduler.save_pretrained(root / "scheduler")
    return unet, scheduler


def ctx():
    return context(DataInfo(name="img", modality="image", shape=SHAPE))


class FixedRNG:
    """randn from one torch generator in call order (diffusers' loop draws from the same one)."""

    def __init__(self, seed, batch):
        self.g, self.batch_size = torch.Generator().manual_seed(seed), batch

    def randn(self, *shape):
        return torch.randn((self.batch_size, *shape), generator=self.g)


def ddim_loop(unet, ref, x, n, class_labels=None):
    ref.set_timesteps(n)
    with torch.no_grad():
        for k in ref.timesteps:
            out = unet(x, k, class_labels=class_labels).sample
            x = ref.step(out, k, x, eta=0.0).prev_sample
    return x


@pytest.mark.parametrize("prediction,schedule,T,n", [
    ("epsilon", "linear", 1000, 20), ("v_prediction", "scaled_linear", 1000, 10),
    ("sample", "squaredcos_cap_v2", 500, 10)])
def test_ddim_equals_diffusers_ddim_loop(tmp_path, prediction, schedule, T, n):
    sched = {"num_train_timesteps": T, "beta_schedule": schedule, "clip_sample": False, "set_alpha_to_one": True,
             "timestep_spacing": "leading"}
    if schedule == "scaled_linear":
        sched.update(beta_start=0.00085, beta_end=0.012)
    unet, _ = save_pipeline(tmp_path, prediction, **sched)
    fam = diffusers_family(str(tmp_path), context=ctx())
    assert not fam.trainable and not any(p.requires_grad for p in fam.parameters())
    assert fam.prediction == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[prediction]
    with torch.no_grad():
        ours = DDIM(steps=n, spacing="leading", eta=0.0, clip_x0=False).sample(fam, FixedRNG(1, 4))
    ref = diffusers.DDIMScheduler.from_pretrained(str(tmp_path / "scheduler"))
    theirs = ddim_loop(unet, ref, FixedRNG(1, 4).randn(*SHAPE), n)
    assert ours.shape == (4, *SHAPE)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_schedule_is_the_schedulers_exactly(tmp_path):
    betas = np.linspace(2e-4, 0.03, 200) ** 1.1
    save_pipeline(tmp_path, trained_betas=betas.tolist(), num_train_timesteps=200)
    fam = diffusers_family(str(tmp_path), context=ctx())
    ref = diffusers.DDIMScheduler.from_pretrained(str(tmp_path / "scheduler"))
    proc = fam.process
    assert proc.T == 200
    ab = proc.alpha_sigma(proc.grid)[0] ** 2
    np.testing.assert_allclose(ab.numpy(), ref.alphas_cumprod.double().numpy(), rtol=1e-6)
    # diffusers' timestep k is bench's level k + 1 at t = (k + 1) / T: the network gets k
    k = fam.time_input(proc.grid[[0, 57, 199]], 3)
    assert k.tolist() == [0.0, 57.0, 199.0]
    assert fam.time_input(float(proc.grid[99]), 2).tolist() == [99.0, 99.0]


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_x0_prediction_matches_the_schedulers_conversion(tmp_path, prediction):
    unet, _ = save_pipeline(tmp_path, prediction, clip_sample=False)
    fam = diffusers_family(str(tmp_path), context=ctx())
    ref = diffusers.DDIMScheduler.from_pretrained(str(tmp_path / "scheduler"))
    ref.set_timesteps(10)
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for k in (999, 500, 37):
            out = unet(x, torch.tensor(k)).sample
            theirs = ref.step(out, k, x).pred_original_sample
            t = (k + 1) / 1000
            ours = fam.x0(x, t, fam.eps(x, t))
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_class_conditional_model(tmp_path):
    unet, _ = save_pipeline(tmp_path, num_class_embeds=3, clip_sample=False)
    fam = diffusers_family(str(tmp_path), class_label=2, context=ctx())
    with torch.no_grad():
        ours = DDIM(steps=5, clip_x0=False).sample(fam, FixedRNG(2, 2))
    ref = diffusers.DDIMScheduler.from_pretrained(str(tmp_path / "scheduler"))
    theirs = ddim_loop(unet, ref, FixedRNG(2, 2).randn(*SHAPE), 5, torch.tensor([2, 2]))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    other = diffusers_family(str(tmp_path), class_label=0, context=ctx())
    with torch.no_grad():
        assert not torch.allclose(DDIM(steps=5, clip_x0=False).sample(other, FixedRNG(2, 2)), ours)
    with pytest.raises(UserError, match="class-conditional"):
        diffusers_family(str(tmp_path), context=ctx())
    with pytest.raises(UserError, match="out of range"):
        diffusers_family(str(tmp_path), class_label=3, context=ctx())


def test_model_dir_plus_scheduler_config(tmp_path):
    save_pipeline(tmp_path, clip_sample=False)
    fam = diffusers_family(str(tmp_path / "unet"), scheduler=str(tmp_path / "scheduler" / "scheduler_config.json"),
                           context=ctx())
    with torch.no_grad():
        x = Ancestral(steps=4).sample(fam, FixedRNG(0, 2))
        # continuous-time samplers ask for times between the levels: fractional diffusers timesteps
        y = PFODE(method="euler", steps=3).sample(fam, FixedRNG(0, 2))
    assert x.shape == y.shape == (2, *SHAPE) and torch.isfinite(x).all() and torch.isfinite(y).all()
    assert fam.time_input(0.5005, 1).tolist() == [499.5]


def test_loading_errors_name_the_path_and_what_is_missing(tmp_path):
    with pytest.raises(UserError, match="is not a directory"):
        diffusers_family(str(tmp_path / "nope"), context=ctx())
    with pytest.raises(UserError, match="neither unet/config.json nor config.json"):
        diffusers_family(str(tmp_path), context=ctx())
    save_pipeline(tmp_path)
    with pytest.raises(UserError, match="missing scheduler config"):
        diffusers_family(str(tmp_path / "unet"), context=ctx())
    with pytest.raises(UserError, match="shape"):
        diffusers_family(str(tmp_path), context=context(DataInfo(name="img", modality="image", shape=(3, 8, 8))))
    cfg = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({**cfg, "prediction_type": "flow"}))
    with pytest.raises(UserError, match="prediction_type 'flow'"):
        diffusers_family(str(tmp_path), context=ctx())
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(UserError, match="no weights file"):
        diffusers_family(str(tmp_path), context=ctx())


def test_beta_table_continuous_form_interpolates_the_table():
    """log alpha_bar(k/T) equals the table's cumulative log(1 - beta) at every level, and its
    derivative is the segment slope (checked by a finite difference inside a segment)."""
    from bench_diffusion.pretrained import BetaTable
    betas = np.linspace(1e-4, 0.02, 50)
    table = BetaTable(betas, "test")
    T = len(betas)
    t = torch.arange(T + 1, dtype=torch.float64) / T
    expected = np.concatenate([[0.0], np.cumsum(np.log1p(-betas))])
    np.testing.assert_allclose(table.log_alpha_bar(t).numpy(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.exp(expected[1:]), np.cumprod(1 - betas), rtol=1e-12)
    tm = torch.tensor([10.3 / T], dtype=torch.float64)
    h = 1e-7
    fd = (table.log_alpha_bar(tm + h) - table.log_alpha_bar(tm - h)) / (2 * h)
    np.testing.assert_allclose(table.dlog_alpha_bar(tm).numpy(), fd.numpy(), rtol=1e-6)
