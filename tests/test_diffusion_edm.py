"""EDM (family ``edm``, oracle ``oracle_edm``, samplers edm_heun / edm_euler) against independent truths:

- the preconditioning against Karras et al. 2022 Table 1 written out here, and the unit-variance
  properties it was derived from;
- the oracle denoiser against Monte Carlo posterior means (GMM data, equicorrelated Sigma);
- the noise levels against Karras eq. 5 (rho = 7);
- the samplers against the exact probability-flow map of Gaussian data (each eigen-direction of the
  whitened covariance scales by sqrt((lambda + s^2) / (lambda + s_0^2))), moments (isotropic, GFF), NFE;
- a tiny training run.
"""
import math

import numpy as np
import pytest
import torch

from bench.rng import BatchRNG
from bench.suite import _compatibility
from bench_diffusion.edm import edm_loss_weight, edm_preconditioning
from bench_diffusion.noise import dense_matrix
from bench_diffusion.samplers.edm import EDMEuler, EDMHeun, edm_sigmas
from bench_diffusion.testing import (build, count_network_calls, dataset, held_out_loss_after_training, oracle_moments,
                                     registries)


# ---------------------------------------------------------------- preconditioning

@pytest.mark.parametrize("sd", [0.5, 1.3])
def test_preconditioning_is_karras_table_1(sd):
    for s in (0.002, 0.1, 0.5, 3.0, 80.0):
        c_skip, c_out, c_in, c_noise = (float(v) for v in edm_preconditioning(s, sd))
        assert c_skip == pytest.approx(sd ** 2 / (s ** 2 + sd ** 2), rel=1e-12)
        assert c_out == pytest.approx(s * sd / math.sqrt(s ** 2 + sd ** 2), rel=1e-12)
        assert c_in == pytest.approx(1 / math.sqrt(s ** 2 + sd ** 2), rel=1e-12)
        assert c_noise == pytest.approx(math.log(s) / 4, rel=1e-12)
        lam = float(edm_loss_weight(s, sd))
        assert lam == pytest.approx((s ** 2 + sd ** 2) / (s * sd) ** 2, rel=1e-12)
        # the requirements of Karras et al. appendix B.6: unit-variance input and effective target,
        # and lambda c_out^2 = 1
        assert c_in ** 2 * (sd ** 2 + s ** 2) == pytest.approx(1, rel=1e-12)
        assert ((1 - c_skip) ** 2 * sd ** 2 + c_skip ** 2 * s ** 2) / c_out ** 2 == pytest.approx(1, rel=1e-12)
        assert lam * c_out ** 2 == pytest.approx(1, rel=1e-12)


def test_denoiser_applies_the_preconditioning():
    """D(x; s) = c_skip x + c_out F(c_in x, c_noise) with a known F."""
    data = dataset("gaussian", dim=3, n_train=10, n_test=10)

    class Probe(torch.nn.Module):
        def __init__(self, in_shape):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t):
            return torch.sin(x) + t[:, None] ** 2

    fam = build("family", {"name": "edm", "sigma_data": 0.7, "network": {"name": "probe"}}, data,
                networks={"probe": Probe})
    x = torch.randn(5, 3, dtype=torch.float64)
    s = 1.7
    c_skip, c_out, c_in, c_noise = (float(v) for v in edm_preconditioning(s, 0.7))
    want = c_skip * x + c_out * (torch.sin(c_in * x) + c_noise ** 2)
    torch.testing.assert_close(fam.denoise(x, s), want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- the oracle

def test_oracle_denoiser_matches_monte_carlo():
    """D*(x; s) vs self-normalised importance sampling over 400k data draws (weights N(x; y, s^2
    Sigma)), 2-d GMM, equicorrelated Sigma (rho = -0.5); within 6 standard errors plus 1e-3."""
    data = dataset("gmm", dim=2, components=3, std=0.5, n_train=10, n_test=10)
    fam = build("family", {"name": "oracle_edm", "noise": {"name": "anisotropic", "rho": -0.5}}, data)
    w, m, c = fam.mixture
    gen = np.random.default_rng(1)
    n = 400_000
    comp = gen.choice(len(w), n, p=w)
    y = m[comp] + np.einsum("nij,nj->ni", np.linalg.cholesky(c)[comp], gen.standard_normal((n, 2)))
    sig_inv = np.linalg.inv(np.array([[1.0, -0.5], [-0.5, 1.0]]))
    for s in (0.2, 1.0, 3.0):
        for x in (np.array([0.7, -0.4]), np.array([-2.5, 1.2])):
            r = x[None] - y
            logw = -0.5 * np.einsum("ni,ij,nj->n", r, sig_inv, r) / s ** 2
            wts = np.exp(logw - logw.max())
            wts /= wts.sum()
            mc = (wts[:, None] * y).sum(0)
            ess = 1.0 / (wts ** 2).sum()
            se = np.sqrt((wts[:, None] * (y - mc) ** 2).sum(0) / ess)
            ours = fam.denoise(torch.tensor(x[None], dtype=torch.float64), s)[0].numpy()
            assert ess > 500, ess
            np.testing.assert_array_less(np.abs(ours - mc), 6 * se + 1e-3)


# ---------------------------------------------------------------- noise levels

def test_sigmas_are_karras_eq_5():
    data = dataset("gaussian", dim=2, n_train=10, n_test=10)
    fam = build("family", {"name": "oracle_edm"}, data)
    n, lo, hi, rho = 18, 0.002, 80.0, 7.0
    want = [(hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for i in range(n)] + [0.0]
    np.testing.assert_allclose(edm_sigmas(fam, n), want, rtol=1e-12)


# ---------------------------------------------------------------- against the exact flow

def _exact_flow(fam, x, s0):
    """The PF-ODE map from sigma = s0 to 0 for Gaussian data N(m, C) under Sigma noise."""
    _, m, c = fam.mixture
    shape = fam.shape
    r = dense_matrix(fam.noise.sqrt, shape).double()
    ri = torch.linalg.inv(r)
    mu = ri @ torch.tensor(m[0])
    lam, u = torch.linalg.eigh(ri @ torch.tensor(c[0]) @ ri.T)
    w = x.reshape(len(x), -1) @ ri.T
    y = (w - mu) @ u * torch.sqrt(lam / (lam + s0 ** 2))
    return ((mu + y @ u.T) @ r.T).reshape(x.shape)


@pytest.fixture(scope="module", params=["isotropic", "gff"])
def image_oracle(request):
    data = dataset("gaussian_image", size=4, n_train=10, n_test=10)
    return data, build("family", {"name": "oracle_edm", "noise": request.param}, data)


def test_heun_beats_euler_at_equal_nfe_and_converges_at_order_2(image_oracle):
    """RMS error against the exact flow (64 samples from sigma_max = 80): edm_heun with N levels
    (NFE 2N - 1) below edm_euler with 2N - 1 levels for N = 20, 40, 80 (below that Euler is ahead on
    this 16-d Gaussian: N = 6 Heun 0.36 vs Euler 0.12, N = 12 0.069 vs 0.060, isotropic; N = 24
    0.014 vs 0.030); heun's log-log slope below -1.7, euler's in
    [-1.3, -0.7]."""
    _, fam = image_oracle
    x0 = fam.noise.sample(BatchRNG(3, 64)).double() * 80.0
    exact = _exact_flow(fam, x0, 80.0)
    ns = np.array([20, 40, 80])
    heun, euler = [], []
    for n in ns:
        h, e = EDMHeun(steps=int(n)), EDMEuler(steps=int(2 * n - 1))
        heun.append(float((h.solve(fam, x0.clone(), edm_sigmas(fam, int(n))) - exact).pow(2).mean().sqrt()))
        euler.append(float((e.solve(fam, x0.clone(), edm_sigmas(fam, int(2 * n - 1))) - exact).pow(2).mean().sqrt()))
    assert all(a < b for a, b in zip(heun, euler)), (heun, euler)
    slope_h = np.polyfit(np.log(ns), np.log(heun), 1)[0]
    slope_e = np.polyfit(np.log(2 * ns - 1), np.log(euler), 1)[0]
    assert slope_h < -1.7 and -1.3 < slope_e < -0.7, (slope_h, slope_e, heun, euler)


@pytest.fixture(scope="module", params=["iso", "gff"])
def moments(request):
    return oracle_moments("oracle_edm", request.param)


@pytest.mark.parametrize("spec", [{"name": "edm_heun", "steps": 40}, {"name": "edm_euler", "steps": 200},
                                  {"name": "edm_heun", "steps": 64, "S_churn": 10.0}],
                         ids=["heun", "euler", "heun_churn"])
def test_moments_on_the_oracle(moments, spec):
    """Mean within 5 standard errors, covariance (relative Frobenius) within 3x its Monte Carlo
    scale (N = 8000 in 4-d isotropic, 3000 in 16-d GFF)."""
    err_m, err_c = moments.errors(spec)
    assert err_m < 5 * moments.mean_se, f"mean error {err_m:.4f} (standard error {moments.mean_se:.4f})"
    assert err_c < 3 * moments.cov_se, f"covariance error {err_c:.4f} (Monte Carlo scale {moments.cov_se:.4f})"


def test_too_few_steps_miss_the_covariance(moments):
    assert moments.errors({"name": "edm_euler", "steps": 4})[1] > 3 * moments.cov_se


@pytest.mark.parametrize("name,steps,nfe", [("edm_heun", 7, 13), ("edm_euler", 7, 7), ("edm_heun", 1, 1)])
def test_nfe(moments, name, steps, nfe):
    for churn in (0.0, 5.0):
        smp = build("sampler", {"name": name, "steps": steps, "S_churn": churn}, moments.data)
        count, x = count_network_calls(moments.fam, lambda: smp.sample(moments.fam, BatchRNG(0, 4)))
        assert count == nfe == smp.nfe() and x.shape == (4, *moments.fam.shape)


def test_churn_adds_noise_only_inside_the_window(moments):
    """S_churn > 0 changes the samples; with S_tmax below every sigma it changes nothing."""
    run = lambda **kw: build("sampler", {"name": "edm_heun", "steps": 8, **kw}, moments.data).sample(  # noqa: E731
        moments.fam, BatchRNG(2, 8))
    base = run()
    assert not torch.allclose(run(S_churn=20.0), base)
    torch.testing.assert_close(run(S_churn=20.0, S_tmax=1e-4), base)


# ---------------------------------------------------------------- training, pruning

def test_training_lowers_the_loss():
    """A tiny MLP trained 150 Adam steps on toy2d: the held-out EDM loss (fixed sigmas and noise)
    falls by 30% or more, and edm_heun samples are finite."""
    torch.manual_seed(0)
    data = dataset("toy2d", which="moons", n_train=2000, n_test=256)
    fam = build("family", {"name": "edm", "network": {"name": "mlp", "hidden": 64, "layers": 2, "time_embed": 16}},
                data)
    before, after = held_out_loss_after_training(fam, data)
    assert after < 0.7 * before, (before, after)
    with torch.no_grad():
        x = build("sampler", {"name": "edm_heun", "steps": 10}, data).sample(fam, BatchRNG(0, 32))
    assert x.shape == (32, 2) and torch.isfinite(x).all()


def test_edm_samplers_pair_only_with_edm_families():
    regs = registries()
    d = {"name": "gaussian"}
    for s in ("edm_heun", "edm_euler"):
        assert _compatibility(regs, d, {"name": "oracle_edm"}, {"name": s}) is None
        assert _compatibility(regs, d, {"name": "edm"}, {"name": s}) is None
        for other in ("ddpm", "ve_sde", "flow_matching"):
            assert "requires edm" in _compatibility(regs, d, {"name": other}, {"name": s})
    assert _compatibility(regs, d, {"name": "edm"}, {"name": "pf_ode"}) is None  # the VE interface
