"""Flow matching (family ``flow_matching``, oracle ``oracle_fm``, samplers euler/heun/midpoint/dopri5)
against independent truths:

- the oracle's velocity against a Monte Carlo (self-normalised importance sampling) estimate of
  E[-(alpha' x_0 + sigma' z) | x_t] for GMM data under Sigma-shaped noise, and on the VP path against
  the diffusion oracle's eps (a different closed form) through the velocity-eps identity;
- sample moments of every sampler on the oracle (Gaussian data, isotropic and GFF noise);
- order of convergence against a very fine dopri5 reference solve (log-log slopes);
- NFE = steps x order, adaptive NFE = counted calls;
- the ODE likelihood of the oracle against the exact Gaussian log density;
- minibatch OT against brute force over all permutations; a tiny training run on toy2d.
"""
import itertools
import math

import numpy as np
import pytest
import torch

from bench.rng import BatchRNG
from bench.suite import _compatibility
from bench_diffusion.flow_matching import ot_pairing, path_rates
from bench_diffusion.samplers.flow import AdaptiveFlowODE, Euler, Heun, Midpoint
from bench_diffusion.testing import (build, count_network_calls, dataset, held_out_loss_after_training, oracle_moments,
                                     registries)


# ---------------------------------------------------------------- the oracle's velocity

@pytest.mark.parametrize("path", ["linear", "vp"])
def test_oracle_velocity_matches_monte_carlo(path):
    """u*(x_t) vs self-normalised importance sampling over 400k data draws (weights
    N(x_t; alpha x_0, sigma^2 Sigma)), for a 2-d GMM under equicorrelated Sigma (rho = 0.6);
    within 6 standard errors (from the effective sample size) plus 1e-3."""
    data = dataset("gmm", dim=2, components=3, std=0.5, n_train=10, n_test=10)
    fam = build("family", {"name": "oracle_fm", "path": path, "noise": {"name": "anisotropic", "rho": 0.6}}, data)
    w, m, c = fam.mixture
    gen = np.random.default_rng(0)
    n = 400_000
    comp = gen.choice(len(w), n, p=w)
    x0 = m[comp] + np.einsum("nij,nj->ni", np.linalg.cholesky(c)[comp], gen.standard_normal((n, 2)))
    sig = np.array([[1.0, 0.6], [0.6, 1.0]])
    sig_inv = np.linalg.inv(sig)
    for t in (0.15, 0.5, 0.85):
        a, s = (float(v) for v in fam.process.alpha_sigma(t))
        da, ds = (float(v) for v in path_rates(fam.process, t))
        for xt in (np.array([0.7, -0.4]), np.array([-1.5, 1.2])):
            r = xt[None] - a * x0
            logw = -0.5 * np.einsum("ni,ij,nj->n", r, sig_inv, r) / s ** 2
            wts = np.exp(logw - logw.max())
            wts /= wts.sum()
            u = -(da * x0 + ds * r / s)                     # z = (x_t - alpha x_0) / sigma
            mc = (wts[:, None] * u).sum(0)
            ess = 1.0 / (wts ** 2).sum()
            se = np.sqrt((wts[:, None] * (u - mc) ** 2).sum(0) / ess)
            ours = fam.velocity(torch.tensor(xt[None], dtype=torch.float64), t)[0].numpy()
            assert ess > 500, ess
            np.testing.assert_array_less(np.abs(ours - mc), 6 * se + 1e-3)


@pytest.mark.parametrize("noise", ["isotropic", "gff"])
def test_vp_path_velocity_gives_the_diffusion_oracles_eps(noise):
    """On the VP path the velocity determines eps; it equals the diffusion oracle's eps* (a different
    closed form) under the same continuous VP process, isotropic and GFF."""
    data = dataset("gaussian_image", size=4, n_train=10, n_test=10)
    fm = build("family", {"name": "oracle_fm", "path": "vp", "noise": noise}, data)
    dm = build("family", {"name": "oracle_vp", "T": None, "noise": noise}, data)
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for t in (0.01, 0.3, 0.9):
        torch.testing.assert_close(fm.eps(x, t), dm.eps(x, t), rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(fm.pf_drift(x, t), dm.pf_drift(x, t), rtol=1e-8, atol=1e-8)


# ---------------------------------------------------------------- moments, NFE

@pytest.fixture(scope="module", params=["iso", "gff"])
def moments(request):
    return oracle_moments("oracle_fm", request.param)


@pytest.mark.parametrize("spec", [{"name": "euler", "steps": 100}, {"name": "heun", "steps": 50},
                                  {"name": "midpoint", "steps": 50}, {"name": "dopri5"}],
                         ids=["euler", "heun", "midpoint", "dopri5"])
def test_moments_on_the_oracle(moments, spec):
    """Mean within 5 standard errors, covariance (relative Frobenius) within 3x its Monte Carlo
    scale (N = 8000 in 4-d isotropic, 3000 in 16-d GFF)."""
    err_m, err_c = moments.errors(spec)
    assert err_m < 5 * moments.mean_se, f"mean error {err_m:.4f} (standard error {moments.mean_se:.4f})"
    assert err_c < 3 * moments.cov_se, f"covariance error {err_c:.4f} (Monte Carlo scale {moments.cov_se:.4f})"


def test_too_few_euler_steps_miss_the_covariance(moments):
    """The moment test can fail: 2 Euler steps are far off."""
    assert moments.errors({"name": "euler", "steps": 2})[1] > 3 * moments.cov_se


@pytest.mark.parametrize("name,steps,per_step", [("euler", 7, 1), ("heun", 7, 2), ("midpoint", 5, 2)])
def test_nfe_is_steps_times_order(moments, name, steps, per_step):
    smp = build("sampler", {"name": name, "steps": steps}, moments.data)
    nfe, x = count_network_calls(moments.fam, lambda: smp.sample(moments.fam, BatchRNG(0, 4)))
    assert nfe == steps * per_step == smp.last_nfe and x.shape == (4, *moments.fam.shape)


def test_adaptive_nfe_is_measured(moments):
    loose, tight = (build("sampler", {"name": "dopri5", "rtol": r, "atol": r}, moments.data) for r in (1e-2, 1e-7))
    n_loose, _ = count_network_calls(moments.fam, lambda: loose.sample(moments.fam, BatchRNG(0, 8)))
    n_tight, _ = count_network_calls(moments.fam, lambda: tight.sample(moments.fam, BatchRNG(0, 8)))
    assert n_loose == loose.last_nfe and n_tight == tight.last_nfe and n_tight > n_loose >= 6


# ---------------------------------------------------------------- order of convergence

@pytest.mark.parametrize("path", ["linear", "vp"])
def test_order_slopes(path):
    """Error at t_min vs a dopri5 solve at rtol = atol = 1e-11, steps 8..64 on a 2-d GMM: the
    log-log slope is -1 for euler (within 0.15) and -2 for heun and midpoint (within 0.25)."""
    data = dataset("gmm", dim=2, components=3, std=0.5, n_train=10, n_test=10)
    fam = build("family", {"name": "oracle_fm", "path": path, "noise": {"name": "anisotropic", "rho": 0.4}}, data)
    x1 = fam.process.prior_sample(BatchRNG(4, 64)).double()
    ref = AdaptiveFlowODE(atol=1e-11, rtol=1e-11).solve(fam, x1.clone())
    steps = np.array([8, 16, 32, 64])
    for cls, order, tol in ((Euler, 1, 0.15), (Heun, 2, 0.25), (Midpoint, 2, 0.25)):
        errs = [float((cls(steps=int(n)).solve(fam, x1.clone()) - ref).pow(2).mean().sqrt()) for n in steps]
        slope = np.polyfit(np.log(steps), np.log(errs), 1)[0]
        assert abs(slope + order) < tol, f"{cls.name}: slope {slope:.3f}, errors {errs}"


# ---------------------------------------------------------------- likelihood

@pytest.mark.parametrize("noise", ["isotropic", "gff"])
def test_ode_likelihood_is_the_exact_gaussian_density(noise):
    """The flow ODE's log density (exact trace, dopri5 at 1e-6) of the oracle on the linear path
    equals the data's exact Gaussian log density to 1e-3 nats."""
    data = dataset("gaussian_image", size=4, n_train=10, n_test=10)
    fam = build("family", {"name": "oracle_fm", "noise": noise}, data)
    w, m, c = fam.mixture
    x = torch.tensor(np.random.default_rng(2).multivariate_normal(m[0], c[0], 6), dtype=torch.float64)
    x = x.reshape(6, 1, 4, 4)
    res = fam.log_likelihood(x, BatchRNG(0, 6), method="ode", estimator="exact", atol=1e-6, rtol=1e-6)
    exact = fam.data_log_prob(x)
    torch.testing.assert_close(-res.nll, exact, rtol=0, atol=1e-3)


# ---------------------------------------------------------------- coupling, training, pruning

def test_ot_pairing_is_the_exact_assignment():
    """Against brute force over all 6! permutations; and on 64-point batches OT pairs are closer."""
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    perm = ot_pairing(x, z)
    best = min(itertools.permutations(range(6)), key=lambda p: float((x - z[list(p)]).pow(2).sum()))
    assert perm.tolist() == list(best)
    x, z = torch.randn(64, 2, generator=g) * 0.5, torch.randn(64, 2, generator=g)
    indep = float((x - z).pow(2).sum(1).mean())
    ot = float((x - z[ot_pairing(x, z)]).pow(2).sum(1).mean())
    assert ot < 0.5 * indep, (ot, indep)  # W2^2 = 0.5 vs 2.5 in expectation for the populations


@pytest.mark.parametrize("coupling", ["independent", "ot"])
def test_training_lowers_the_loss(coupling):
    """A tiny MLP trained 150 Adam steps on toy2d: the held-out flow-matching loss (fixed times and
    noise) falls by 15% or more, and euler samples are finite."""
    torch.manual_seed(0)
    data = dataset("toy2d", which="moons", n_train=2000, n_test=256)
    fam = build("family", {"name": "flow_matching", "coupling": coupling,
                           "network": {"name": "mlp", "hidden": 64, "layers": 2, "time_embed": 16}}, data)
    before, after = held_out_loss_after_training(fam, data)
    assert after < 0.85 * before, (before, after)
    with torch.no_grad():
        x = build("sampler", {"name": "euler", "steps": 10}, data).sample(fam, BatchRNG(0, 32))
    assert x.shape == (32, 2) and torch.isfinite(x).all()


def test_flow_samplers_pair_only_with_velocity_families():
    regs = registries()
    d = {"name": "gaussian"}
    for s in ("euler", "heun", "midpoint", "dopri5"):
        assert _compatibility(regs, d, {"name": "oracle_fm"}, {"name": s}) is None
        assert _compatibility(regs, d, {"name": "flow_matching"}, {"name": s}) is None
        assert "requires velocity" in _compatibility(regs, d, {"name": "ddpm"}, {"name": s})
    assert _compatibility(regs, d, {"name": "flow_matching"}, {"name": "ddim"}) is not None
    assert _compatibility(regs, d, {"name": "flow_matching"}, {"name": "ode"}) is not None  # bench_flows' sampler


def test_bad_input_is_refused():
    data = dataset("gaussian", dim=2, n_train=10, n_test=10)
    with pytest.raises(ValueError, match="linear flow-matching path takes no schedule"):
        build("family", {"name": "oracle_fm", "schedule": "cosine"}, data)
    with pytest.raises(Exception, match="coupling"):
        build("family", {"name": "flow_matching", "coupling": "sinkhorn"}, data)


def test_linear_process_coefficients():
    """alpha = 1 - t, sigma = t; f = d log alpha/dt and g^2 = d sigma^2/dt - 2 f sigma^2 by finite
    differences; the rates (-1, 1); the prior N(0, Sigma) at t = 1."""
    data = dataset("gaussian", dim=2, n_train=10, n_test=10)
    p = build("family", "oracle_fm", data).process
    h = 1e-6
    for t in (0.1, 0.5, 0.9):
        a, s = (float(v) for v in p.alpha_sigma(t))
        assert (a, s) == pytest.approx((1 - t, t), abs=1e-15)
        la = lambda u: math.log(float(p.alpha_sigma(u)[0]))  # noqa: E731
        s2 = lambda u: float(p.alpha_sigma(u)[1]) ** 2  # noqa: E731
        f = (la(t + h) - la(t - h)) / (2 * h)
        assert p.f(t) == pytest.approx(f, rel=1e-6)
        assert p.g2(t) == pytest.approx((s2(t + h) - s2(t - h)) / (2 * h) - 2 * f * s2(t), rel=1e-6)
        assert [float(v) for v in path_rates(p, t)] == [-1.0, 1.0]
    assert p.t_min == 0.0 and p.prior_scale(1.0) == 1.0
