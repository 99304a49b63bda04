"""Side by side with Hugging Face diffusers' DDPMScheduler / DDIMScheduler (a peer implementation):
alphas_cumprod, posterior variance, timestep spacing, and whole ancestral / DDIM sampling loops with
the same network and the same noise."""
import numpy as np
import pytest
import torch
from torch import nn

diffusers = pytest.importorskip("diffusers")

from bench_diffusion.families import DiffusionFamily  # noqa: E402
from bench_diffusion.noise import Isotropic  # noqa: E402
from bench_diffusion.processes import VPProcess  # noqa: E402
from bench_diffusion.samplers.discrete import DDIM, Ancestral  # noqa: E402
from bench_diffusion.schedules import Cosine, Linear, Sigmoid  # noqa: E402



SCHEDS = {"linear": Linear, "squaredcos_cap_v2": Cosine, "sigmoid": Sigmoid}


class ToyNet(nn.Module):
    """A fixed smooth function of (x, t): stands in for a trained network."""

    def forward(self, x, t):
        return 0.4 * torch.tanh(x) + 0.002 * t[:, None] * torch.cos(x)


class FixedRNG:
    """randn from one torch generator, in call order (diffusers draws its noise the same way)."""

    def __init__(self, seed, batch):
        self.g, self.batch_size = torch.Generator().manual_seed(seed), batch

    def randn(self, *shape):
        return torch.randn((self.batch_size, *shape), generator=self.g, dtype=torch.float64)


def float64(ref, betas=None):
    """diffusers keeps its schedule in float32; recompute its buffers in float64 (from its own betas,
    or from ``betas`` once the schedules themselves have been compared) so that the comparison tests
    the sampling formulas, not float32 rounding near alpha_bar = 1 or 0."""
    ref.betas = ref.betas.double() if betas is None else torch.as_tensor(betas, dtype=torch.float64)
    ref.alphas = 1.0 - ref.betas
    ref.alphas_cumprod = torch.cumprod(ref.alphas, 0)
    if hasattr(ref, "final_alpha_cumprod"):
        ref.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    ref.one = torch.tensor(1.0, dtype=torch.float64)
    return ref


def family(sched_name, prediction="eps", T=1000, clip=None):
    proc = VPProcess(SCHEDS[sched_name](), Isotropic((3,)), (3,), T=T)
    return DiffusionFamily(proc, ToyNet().double(), prediction=prediction, value_range=clip)


@pytest.mark.parametrize("name", list(SCHEDS))
def test_alphas_cumprod_and_posterior_variance(name):
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=name)
    fam = family(name)
    ab = fam.process.alpha_sigma(fam.process.grid)[0] ** 2
    np.testing.assert_allclose(ab.numpy(), ref.alphas_cumprod.double().numpy(), rtol=2e-5, atol=1e-9)
    float64(ref)
    for k in (1, 2, 10, 500, 999):  # diffusers' 0-based k is our level k + 1
        pc = fam.process.posterior(fam.process.grid[k], fam.process.grid[k - 1])
        assert abs(pc.var - float(ref._get_variance(k))) <= 1e-6 * pc.var
        assert abs(pc.var_ts - float(ref.betas[k])) <= 1e-6 * pc.var_ts


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timestep_spacing(spacing):
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    for n in (10, 37, 50):
        ref.set_timesteps(n)
        ours = family("linear").process.sampling_times(n, spacing)
        np.testing.assert_array_equal(np.round(np.array(ours) * 1000).astype(int) - 1, ref.timesteps.numpy())


# diffusers' DDIM steps to t - T // N whatever the spacing, so the loops below use spacings whose
# steps are exactly T // N apart (leading always; trailing when N divides T).
def _ddim_loop(ref, fam, x, n, eta, noise, prediction):
    ref.set_timesteps(n)
    for k in ref.timesteps:
        out = fam.net(x, torch.full((len(x),), float(k) + 1, dtype=torch.float64))
        kw = {"variance_noise": noise.randn(3)} if eta > 0 and k != ref.timesteps[-1] else {}
        x = ref.step(out, k, x, eta=eta, **kw).prev_sample
    return x


@pytest.mark.parametrize("name,spacing,n,eta,prediction", [
    ("linear", "leading", 20, 0.0, "eps"), ("squaredcos_cap_v2", "trailing", 10, 0.0, "eps"),
    ("linear", "trailing", 25, 0.5, "eps"), ("linear", "leading", 10, 0.0, "v"), ("linear", "leading", 20, 0.0, "x0")])
def test_ddim_loop_matches(name, spacing, n, eta, prediction):
    pt = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}[prediction]
    fam = family(name, prediction)
    ref = float64(diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule=name, timestep_spacing=spacing,
                                          clip_sample=False, set_alpha_to_one=True, prediction_type=pt),
                  fam.process.table["betas"])
    ours = DDIM(steps=n, spacing=spacing, eta=eta).sample(fam, FixedRNG(3, 64))
    rng = FixedRNG(3, 64)
    x = rng.randn(3)
    theirs = _ddim_loop(ref, fam, x, n, eta, rng, prediction)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,n,clip", [("linear", 1000, False), ("squaredcos_cap_v2", 50, True)])
def test_ancestral_loop_matches_ddpm_scheduler(name, n, clip):
    fam = family(name, clip=(-1.0, 1.0) if clip else None)
    ref = float64(diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=name, clip_sample=clip),
                  fam.process.table["betas"])
    ours = Ancestral(steps=n).sample(fam, FixedRNG(5, 32))
    g = FixedRNG(5, 32)
    x = g.randn(3)
    ref.set_timesteps(n)
    for k in ref.timesteps:
        out = fam.net(x, torch.full((len(x),), float(k) + 1, dtype=torch.float64))
        x = ref.step(out, k, x, generator=g.g).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)
